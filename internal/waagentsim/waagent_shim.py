#!/usr/bin/python3
"""Shim that lets Go code judge handler output with waagent's own code.

Embedded in package internal/waagentsim, which feeds it to the Debian
waagent package's interpreter on standard input (/usr/bin/python3 - MODE ...).
Modes (each prints one JSON document on stdout):
  status FILE...            parse each status file the way collect_ext_status
                            does (read, json.loads, parse_ext_status, size check)
  heartbeat FILE            collect_heartbeat's reading plus is_responsive
  events DIR                validate every <digits>.json event file with
                            _ProcessExtensionEvents._parse_event_and_ensure_it_is_valid
  manifest FILE             HandlerManifest accessors
  handler-env NAME BASE LOGDIR
                            HandlerEnvironment.json exactly as create_handler_env
                            writes it (events folder included)
"""
import json
import os
import re
import sys

from azurelinuxagent.common.exception import ExtensionErrorCodes
from azurelinuxagent.common.protocol.restapi import ExtensionStatus
from azurelinuxagent.ga import exthandlers
from azurelinuxagent.ga.exthandlers import (ExtHandlerInstance, ExtensionStatusError,
                                            HandlerEnvironment, HandlerManifest,
                                            parse_ext_status)


def status(paths):
    out = []
    for path in paths:
        res = {"path": path}
        ext_status = ExtensionStatus(name="x", seq_no=0)
        try:
            data_str, data = ExtHandlerInstance._read_and_parse_json_status_file(path)
        except ExtensionStatusError as e:
            res.update(readError=str(e), errorCode=e.code)
            out.append(res)
            continue
        try:
            parse_ext_status(ext_status, data)
            if len(data_str) > exthandlers._MAX_STATUS_FILE_SIZE_IN_BYTES:
                res["tooBig"] = True
        except ExtensionStatusError as e:
            if e.code == ExtensionStatusError.StatusFileMalformed:
                ext_status.status = "error"
                ext_status.code = ExtensionErrorCodes.PluginSettingsStatusInvalid
                ext_status.message = "Could not get a valid status: " + str(e)
            res["parseError"] = str(e)
        res.update(status=ext_status.status, code=ext_status.code, message=ext_status.message,
                   operation=ext_status.operation, size=len(data_str),
                   substatus=[{"name": s.name, "status": s.status, "code": s.code, "message": s.message}
                              for s in ext_status.substatusList])
        out.append(res)
    return out


def heartbeat(path):
    hb = json.loads(open(path).read())[0]["heartbeat"]
    return {"responsive": ExtHandlerInstance.is_responsive(path), "heartbeat": hb}


def events(folder):
    from azurelinuxagent.ga.collect_telemetry_events import _ProcessExtensionEvents as P
    inst = P.__new__(P)
    res = {"files": 0, "valid": 0, "invalid": [], "badNames": []}
    for name in sorted(os.listdir(folder)):
        if re.match(P._EXTENSION_EVENT_FILE_NAME_REGEX, name) is None:
            res["badNames"].append(name)
            continue
        res["files"] += 1
        path = os.path.join(folder, name)
        if os.path.getsize(path) > P._EXTENSION_EVENT_FILE_MAX_SIZE:
            res["invalid"].append(name + ": file too big")
            continue
        evs = json.loads(open(path, "rb").read().decode("utf-8"))
        if not isinstance(evs, list):
            evs = [evs]
        for ev in evs:
            try:
                inst._parse_event_and_ensure_it_is_valid(ev)
                res["valid"] += 1
            except Exception as e:  # InvalidExtensionEventError and type errors alike
                res["invalid"].append("%s: %s" % (name, e))
    return res


def manifest(path):
    m = HandlerManifest(json.loads(open(path).read())[0])
    return {
        "install": m.get_install_command(), "uninstall": m.get_uninstall_command(),
        "update": m.get_update_command(), "enable": m.get_enable_command(),
        "disable": m.get_disable_command(), "reportHeartbeat": m.is_report_heartbeat(),
        "updateWithInstall": m.is_update_with_install(),
        "continueOnUpdateFailure": m.is_continue_on_update_failure(),
        "supportsMultipleExtensions": m.supports_multiple_extensions(),
        "services": m.get_resource_limits("Microsoft.CPlat.ProxyAgent.ProxyAgentLinux", "1.0").get_service_list(),
    }


def handler_env(name, base, logdir):
    handler_env = {
        HandlerEnvironment.logFolder: logdir,
        HandlerEnvironment.configFolder: os.path.join(base, "config"),
        HandlerEnvironment.statusFolder: os.path.join(base, "status"),
        HandlerEnvironment.heartbeatFile: os.path.join(base, "heartbeat.log"),
        HandlerEnvironment.eventsFolder: os.path.join(logdir, "events"),
        HandlerEnvironment.eventsFolder_preview: os.path.join(logdir, "events"),
    }
    env = [{
        HandlerEnvironment.name: name,
        HandlerEnvironment.version: HandlerEnvironment.schemaVersion,
        HandlerEnvironment.handlerEnvironment: handler_env,
    }]
    return json.dumps(env)


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "handler-env":
        sys.stdout.write(handler_env(*args))
        return
    fn = {"status": lambda: status(args), "heartbeat": lambda: heartbeat(args[0]),
          "events": lambda: events(args[0]), "manifest": lambda: manifest(args[0])}[mode]
    json.dump(fn(), sys.stdout)


if __name__ == "__main__":
    main()
