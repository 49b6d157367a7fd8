package handler

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/opengpa/gpa/internal/atomicfile"
)

// Service controls the installed agent service. Two implementations exist:
// Systemd (systemctl) and Supervisor (a supervisor process in its own
// session that restarts the agent like Restart=always, for machines where
// systemd is not running). Both read the same installed unit file.
type Service interface {
	// Kind names the implementation ("systemd" or "supervisor").
	Kind() string
	// Reload makes the manager re-read unit files (daemon-reload).
	Reload() error
	Enable() error
	Disable() error
	Start() error
	Stop() error
	// Active reports whether the agent process is running.
	Active() bool
	// Enabled reports whether the service starts at boot.
	Enabled() bool
	// ExecPath returns the executable the installed service runs.
	ExecPath() (string, error)
}

// SelectService returns the Service for this machine: systemd when
// /run/systemd/system exists and no GPA_ROOT relocation is active (a
// relocated unit directory is invisible to systemd), otherwise the
// supervisor. GPA_SERVICE_MANAGER=systemd|supervisor overrides the choice.
func SelectService(l Layout, o Options, log *slog.Logger) Service {
	kind := o.ServiceManager
	if kind == "" {
		kind = "supervisor"
		if l.Root == "" && systemdRunning() {
			kind = "systemd"
		}
	}
	if kind == "systemd" {
		return &Systemd{Layout: l, Log: log}
	}
	return &Supervisor{Layout: l, Log: log}
}

func systemdRunning() bool {
	fi, err := os.Stat("/run/systemd/system")
	return err == nil && fi.IsDir()
}

// Systemd drives azure-proxy-agent.service through systemctl.
type Systemd struct {
	Layout Layout
	Log    *slog.Logger
}

// Kind is "systemd".
func (s *Systemd) Kind() string { return "systemd" }

func (s *Systemd) systemctl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "systemctl", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("systemctl %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// Reload runs systemctl daemon-reload.
func (s *Systemd) Reload() error {
	_, err := s.systemctl("daemon-reload")
	return err
}

// Enable unmasks and enables the unit.
func (s *Systemd) Enable() error {
	s.systemctl("unmask", UnitName)
	_, err := s.systemctl("enable", UnitName)
	return err
}

// Disable disables the unit.
func (s *Systemd) Disable() error { _, err := s.systemctl("disable", UnitName); return err }

// Start starts the unit.
func (s *Systemd) Start() error { _, err := s.systemctl("start", UnitName); return err }

// Stop stops the unit.
func (s *Systemd) Stop() error { _, err := s.systemctl("stop", UnitName); return err }

// Active reports systemctl is-active.
func (s *Systemd) Active() bool {
	_, err := s.systemctl("is-active", "--quiet", UnitName)
	return err == nil
}

// Enabled reports systemctl is-enabled.
func (s *Systemd) Enabled() bool {
	_, err := s.systemctl("is-enabled", "--quiet", UnitName)
	return err == nil
}

// ExecPath asks systemd for ExecStart's path, retrying 3 times at 1 s
// because right after daemon-reload systemd can report an empty
// ExecStart, and falls back to the installed unit file. Without an
// installed unit file it fails at once.
func (s *Systemd) ExecPath() (string, error) {
	if _, err := os.Stat(s.Layout.UnitFile()); err != nil {
		return "", fmt.Errorf("service not installed: %w", err)
	}
	for i := 0; i < 3; i++ {
		out, err := s.systemctl("show", "--property=ExecStart", UnitName)
		if err == nil {
			if p := parseShowExecPath(out); p != "" {
				return p, nil
			}
		}
		time.Sleep(time.Second)
	}
	return unitFileExecPath(s.Layout)
}

// parseShowExecPath extracts "path=<p> ;" from systemctl show output.
func parseShowExecPath(out string) string {
	i := strings.Index(out, "path=")
	if i < 0 {
		return ""
	}
	rest := out[i+len("path="):]
	if j := strings.IndexAny(rest, " ;}"); j >= 0 {
		rest = rest[:j]
	}
	return strings.TrimSpace(rest)
}

func unitFileExecPath(l Layout) (string, error) {
	data, err := os.ReadFile(l.UnitFile())
	if err != nil {
		return "", fmt.Errorf("service not installed: %w", err)
	}
	u, err := ParseUnitExec(data)
	if err != nil {
		return "", err
	}
	return u.Argv[0], nil
}

// Supervisor runs the agent under a supervisor process (a copy of this
// binary at Layout.SupervisorBinary running the "supervise" subcommand) in
// its own session. State lives in <StateDir>/supervisor: "enabled" marks
// the service enabled, "supervisor.pid" and "agent.pid" hold the PIDs.
type Supervisor struct {
	Layout Layout
	Log    *slog.Logger
}

// Kind is "supervisor".
func (s *Supervisor) Kind() string { return "supervisor" }

func (s *Supervisor) dir() string         { return filepath.Join(s.Layout.StateDir(), "supervisor") }
func (s *Supervisor) enabledFile() string { return filepath.Join(s.dir(), "enabled") }

// SupervisorPIDFile is where the supervisor records its own PID.
func (s *Supervisor) SupervisorPIDFile() string { return filepath.Join(s.dir(), "supervisor.pid") }

// AgentPIDFile is where the supervisor records the agent's PID.
func (s *Supervisor) AgentPIDFile() string { return filepath.Join(s.dir(), "agent.pid") }

// Reload is a no-op: the supervisor re-reads the unit before every start.
func (s *Supervisor) Reload() error { return nil }

// Enable marks the service enabled; the monitor starts an enabled service that is not running (the boot-time start systemd would do).
func (s *Supervisor) Enable() error {
	if err := os.MkdirAll(s.dir(), 0o755); err != nil {
		return err
	}
	return atomicfile.WriteFile(s.enabledFile(), []byte("enabled\n"), 0o644)
}

// Disable removes the enabled mark.
func (s *Supervisor) Disable() error {
	if err := os.Remove(s.enabledFile()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Enabled reports the enabled mark.
func (s *Supervisor) Enabled() bool {
	_, err := os.Stat(s.enabledFile())
	return err == nil
}

func readPID(path string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	return n
}

func (s *Supervisor) supervisorPID() int {
	pid := readPID(s.SupervisorPIDFile())
	if Alive(pid, s.Layout.SupervisorBinary()) {
		return pid
	}
	return 0
}

// Active reports whether both the supervisor and the agent it started run.
func (s *Supervisor) Active() bool {
	if s.supervisorPID() == 0 {
		return false
	}
	exec, err := s.ExecPath()
	if err != nil {
		return false
	}
	return Alive(readPID(s.AgentPIDFile()), exec)
}

// ExecPath is the first word of the installed unit's ExecStart.
func (s *Supervisor) ExecPath() (string, error) { return unitFileExecPath(s.Layout) }

// Start launches the supervisor unless one already runs, and waits up to
// 5 s for it to record its PID, which it does only after its first attempt
// to start the agent: when Start returns nil, Active already tells whether
// that agent runs (as "systemctl start" does for a Type=simple unit).
func (s *Supervisor) Start() error {
	if s.supervisorPID() != 0 {
		return nil
	}
	if _, err := os.Stat(s.Layout.UnitFile()); err != nil {
		return fmt.Errorf("supervisor: unit not installed: %w", err)
	}
	if err := os.MkdirAll(s.dir(), 0o755); err != nil {
		return err
	}
	os.Remove(s.SupervisorPIDFile())
	bin := s.Layout.SupervisorBinary()
	logPath := filepath.Join(s.Layout.LogDir(), "supervisor.log")
	rotateLog(logPath)
	_, err := SpawnDetached(bin, []string{"supervise", "--unit", s.Layout.UnitFile(), "--pid-file", s.SupervisorPIDFile(), "--agent-pid-file", s.AgentPIDFile()},
		"/", logPath, os.Environ())
	if err != nil {
		return fmt.Errorf("supervisor: start %s: %w", bin, err)
	}
	for i := 0; i < 250; i++ {
		if s.supervisorPID() != 0 {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return errors.New("supervisor: did not start within 5s")
}

// Stop terminates the supervisor (which stops the agent) and, should the
// agent outlive it, the agent.
func (s *Supervisor) Stop() error {
	var errs []error
	if pid := s.supervisorPID(); pid != 0 {
		errs = append(errs, Terminate(pid, s.Layout.SupervisorBinary(), 15*time.Second))
	}
	if exec, err := s.ExecPath(); err == nil {
		errs = append(errs, Terminate(readPID(s.AgentPIDFile()), exec, 10*time.Second))
	}
	os.Remove(s.SupervisorPIDFile())
	os.Remove(s.AgentPIDFile())
	return errors.Join(errs...)
}
