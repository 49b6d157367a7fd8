package handler

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/opengpa/gpa/extension"
	"github.com/opengpa/gpa/proxyagent/prereq"
	"github.com/opengpa/gpa/proxyagent/status"
)

// EnvSystemRoot names the variable whose value, when set, is the directory
// under which the prerequisite checks read /proc, /sys, /boot and
// os-release (tests craft one). $GPA_ROOT/etc/os-release, when it exists,
// is the os-release file regardless.
const EnvSystemRoot = "GPA_SYSTEM_ROOT"

// PrerequisitePaths returns where the handler's prerequisite checks read.
func PrerequisitePaths(l Layout, getenv func(string) string) prereq.Paths {
	p := prereq.Paths{Root: getenv(EnvSystemRoot)}
	if l.Root != "" {
		if f := l.Path("/etc/os-release"); fileExists(f) {
			p.OSRelease = f
		}
	}
	return p
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// UnsupportedMessage is the status message for a machine that lacks
// prerequisites: upstream's "OS version not supported: Linux:<name>-<ver>"
// (what tools written against upstream look for), then the kernel and each
// missing prerequisite with its fix.
func UnsupportedMessage(r prereq.Report) string {
	return fmt.Sprintf("OS version not supported: Linux:%s (kernel %s): this VM cannot run the proxy agent: %s", r.OS, r.Kernel, r.Message())
}

// PrerequisiteStatus is the extension status for a machine that lacks
// prerequisites: error, exit code ExitUnsupportedOS, operation
// OperationOSCheck, the message naming each missing prerequisite and its
// fix, and upstream's three substatuses where ProxyAgentStatus carries a
// proxyAgentStatus whose ebpfProgramStatus is STOPPED with the same text.
func PrerequisiteStatus(r prereq.Report, agentVersion string) extension.Status {
	msg := UnsupportedMessage(r)
	unknown := status.ModuleStatus{Status: status.Unknown, Message: status.InitialMessage}
	as := status.AgentStatus{
		Version: agentVersion, Status: status.Error,
		MonitorStatus: unknown, KeyLatchStatus: unknown,
		EbpfProgramStatus:     status.ModuleStatus{Status: status.Stopped, Message: status.Truncate(r.Message())},
		ProxyListenerStatus:   unknown,
		TelemetryLoggerStatus: unknown,
	}
	agent, _ := json.Marshal(as)
	short := extension.TruncateUTF8(msg, maxErrorShapeMessage)
	return extension.Status{Name: StatusName, Operation: OperationOSCheck, Status: extension.StatusError,
		Code: ExitUnsupportedOS, FormattedMessage: extension.Message(extension.TruncateUTF8(msg, MaxStatusMessage)),
		Substatus: []extension.SubStatus{
			{Name: SubConnectionSummary, Status: extension.StatusError, Code: CodeNotOK, FormattedMessage: extension.Message(short)},
			{Name: SubAgentStatus, Status: extension.StatusError, Code: CodeNotOK, FormattedMessage: extension.Message(string(agent))},
			{Name: SubFailedAuthSummary, Status: extension.StatusError, Code: CodeNotOK, FormattedMessage: extension.Message(short)},
		}}
}

// checkPrerequisites runs the capability checks before any command or the
// monitor. On a machine that lacks one, a command that sets up, upgrades
// or runs the agent (refuse: see refusesWithoutPrerequisites) writes the
// error status, logs, tells stderr and returns false; any other command
// (it stops or removes what an earlier install left, on a machine that may
// have lost a prerequisite since, e.g. rebooted into cgroup v1) logs a
// warning and goes on. An untested distribution that has every
// prerequisite is logged as a warning and goes on.
func checkPrerequisites(e *Env, getenv func(string) string, stderr io.Writer, refuse bool) bool {
	r := prereq.Check(PrerequisitePaths(e.Layout, getenv))
	if !r.OK() && !refuse {
		e.Log.Warn("prerequisites missing; this command only stops or removes the agent, so it goes on",
			"os", r.OS.String(), "kernel", r.Kernel, "problems", r.Message())
		return true
	}
	if !r.OK() {
		st := PrerequisiteStatus(r, e.Version)
		if _, err := extension.WriteStatus(e.Handler.StatusFolder, e.Seq, st, time.Now()); err != nil {
			e.Log.Error("write status", "err", err)
		}
		e.Log.Error("prerequisites missing", "os", r.OS.String(), "kernel", r.Kernel, "problems", r.Message())
		fmt.Fprintln(stderr, "ProxyAgentExt:", UnsupportedMessage(r))
		return false
	}
	if !r.Tested() {
		e.Log.Warn("distribution not tested; it has every prerequisite, so the extension goes on",
			"os", r.OS.String(), "kernel", r.Kernel, "tested", prereq.TestedDistributions(), "osReleaseError", r.OSError)
	} else {
		e.Log.Info("prerequisites met", "os", r.OS.String(), "distribution", r.Distribution, "kernel", r.Kernel)
	}
	return true
}

// refusesWithoutPrerequisites reports whether mode (with cmd, or the setup
// verb in args) refuses to run on a machine that lacks a prerequisite:
// install, enable, update, the monitor and setup install, which set up or
// run the agent (a refused update aborts waagent's upgrade, so the
// installed version stays in charge). disable, uninstall, reset and the
// other setup verbs stop or remove what is there and exit as they always
// do: waagent could otherwise not remove the extension (a failed disable
// aborts the removal).
func refusesWithoutPrerequisites(mode string, cmd Command, args []string) bool {
	switch mode {
	case "monitor":
		return true
	case "setup":
		return len(args) > 1 && args[1] == "install"
	}
	return cmd.Name == "install" || cmd.Name == "enable" || cmd.Name == "update"
}
