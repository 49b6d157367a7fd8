package handler

import (
	"slices"
	"strings"
	"testing"
)

func TestMonitorUnitArgsPassHandlerEnv(t *testing.T) {
	e := &Env{ExtDir: "/var/lib/waagent/x-1.0", Exe: "/var/lib/waagent/x-1.0/ProxyAgentExt"}
	environ := []string{"PATH=/usr/bin", "GPA_MONITOR_INTERVAL=1s", "HOME=/root",
		"GPA_CONFIG_OVERLAY=/tmp/overlay.json", "XGPA_NOT=1", "GPA_EMPTY="}
	args := monitorUnitArgs(e, environ)
	var setenv []string
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--setenv="); ok {
			setenv = append(setenv, v)
		}
	}
	want := []string{"GPA_CONFIG_OVERLAY=/tmp/overlay.json", "GPA_EMPTY=", "GPA_MONITOR_INTERVAL=1s"}
	if !slices.Equal(setenv, want) {
		t.Errorf("--setenv %q, want %q", setenv, want)
	}
	if args[len(args)-1] != e.Exe {
		t.Errorf("last argument %q, want the handler binary", args[len(args)-1])
	}
	if !slices.Contains(args, "--unit="+MonitorUnitName) || !slices.Contains(args, "--property=Restart=always") ||
		!slices.Contains(args, "--property=Type=exec") || !slices.Contains(args, "--property=RestartPreventExitStatus=6") {
		t.Errorf("args %q lack the unit name, Restart=always, Type=exec or RestartPreventExitStatus=6", args)
	}
}
