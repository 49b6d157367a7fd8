package handler

import (
	"sort"
	"strconv"
	"strings"
)

// EnvPrefix starts the name of every variable that tunes or relocates the
// handler (GPA_ROOT, GPA_CONFIG_OVERLAY, GPA_MONITOR_INTERVAL, ...; see
// packaging/README.md).
const EnvPrefix = "GPA_"

// HandlerEnv returns the GPA_* entries of environ, sorted: the part of the
// environment the handler was started with that must reach the monitor and
// the setup it runs, whatever starts them.
func HandlerEnv(environ []string) []string {
	var out []string
	for _, kv := range environ {
		if k, _, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, EnvPrefix) {
			out = append(out, kv)
		}
	}
	sort.Strings(out)
	return out
}

// monitorUnitArgs are the systemd-run arguments that start the monitor as
// the transient unit MonitorUnitName. A transient unit starts from the
// service manager's environment, not the caller's, so every HandlerEnv
// entry of environ is passed with --setenv. Type=exec makes systemd-run
// succeed only once the binary was executed: one PID 1 cannot run (waagent
// in a mount namespace of its own, a systemd older than 240) fails the
// call, and enable starts the monitor itself instead. A monitor that exits
// ExitUnsupportedOS (the machine lost a prerequisite) is not restarted:
// its error status stays, and it would only write it again every 5 s.
func monitorUnitArgs(e *Env, environ []string) []string {
	args := []string{"--unit=" + MonitorUnitName, "--collect", "--property=Type=exec",
		"--property=Restart=always", "--property=RestartSec=5",
		"--property=RestartPreventExitStatus=" + strconv.Itoa(ExitUnsupportedOS),
		"--property=WorkingDirectory=" + e.ExtDir}
	for _, kv := range HandlerEnv(environ) {
		args = append(args, "--setenv="+kv)
	}
	return append(args, e.Exe)
}
