package handler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/opengpa/gpa/internal/atomicfile"

	"github.com/opengpa/gpa/extension"
)

// Exit codes (upstream's values).
const (
	ExitOK             = 0
	ExitHandlerEnv     = 1 // HandlerEnvironment.json unreadable, or invalid ConfigSequenceNumber
	ExitUnsupportedOS  = 6
	ExitMonitorSpawn   = 7
	ExitSeqFile        = 10
	monitorSpawnTries  = 6
	updateTagTries     = 6
	enablingMessage    = "Enabling the ProxyAgent Extension..."
	monitorExitTimeout = 10 * time.Second
)

// ExitError is a command failure with the exit code waagent should see.
type ExitError struct {
	Code int
	Err  error
}

// Error returns the underlying error text.
func (e *ExitError) Error() string { return e.Err.Error() }

// Unwrap returns the underlying error.
func (e *ExitError) Unwrap() error { return e.Err }

// Command is one row of the command table.
type Command struct {
	// Name is the subcommand waagent's script passes.
	Name string
	// Run does the work and returns a message for the log.
	Run func(ctx context.Context, e *Env) (string, error)
	// ReportsStatus: a failure is also written as an error status file.
	ReportsStatus bool
	// FailExit is the exit code of a failure that is not an *ExitError.
	FailExit int
}

// Commands is the table of waagent commands: adding a command is adding a
// row. Every command except enable exits 0 on its own failures, as
// upstream's handler does; waagent would otherwise abort upgrades.
var Commands = []Command{
	{Name: "install", Run: runInstall, FailExit: 0},
	{Name: "enable", Run: runEnable, ReportsStatus: true, FailExit: 1},
	{Name: "update", Run: runUpdate, FailExit: 0},
	{Name: "disable", Run: runDisable, FailExit: 0},
	{Name: "uninstall", Run: runUninstall, FailExit: 0},
	{Name: "reset", Run: runReset, FailExit: 0},
}

// Env is what every command and the monitor run with.
type Env struct {
	ExtDir  string // handler root: the directory of the ProxyAgentExt binary
	Exe     string // canonical path of this binary
	Version string
	Handler extension.HandlerEnvironment
	Seq     int
	Layout  Layout
	Opts    Options
	Log     *slog.Logger
	// Service, when set, replaces the automatically selected service
	// manager (tests).
	Service Service
}

// SeqFile is <ext>/current_seq_no.txt.
func (e *Env) SeqFile() string { return filepath.Join(e.ExtDir, SeqFileName) }

// UpdateTag is update.tag in the parent of the extension directory (the
// waagent lib directory), shared by the old and new versions.
func (e *Env) UpdateTag() string { return filepath.Join(filepath.Dir(e.ExtDir), UpdateTagName) }

// NewSetup returns the Setup for this extension directory.
func (e *Env) NewSetup() *Setup {
	svc := e.Service
	if svc == nil {
		svc = SelectService(e.Layout, e.Opts, e.Log)
	}
	return &Setup{ExtDir: e.ExtDir, Layout: e.Layout, Service: svc, Opts: e.Opts, Log: setupLogger(e.ExtDir, e.Log), SelfExe: e.Exe}
}

func (e *Env) status(status string, code int, msg string) extension.Status {
	return extension.Status{Name: StatusName, Operation: OperationEnable, Status: status, Code: code,
		FormattedMessage: extension.Message(msg), Substatus: []extension.SubStatus{}}
}

func runInstall(ctx context.Context, e *Env) (string, error) {
	return "install: nothing to do; the monitor installs the agent service", nil
}

func runEnable(ctx context.Context, e *Env) (string, error) {
	if _, err := extension.ReadSettings(e.Handler.ConfigFolder, e.Seq); err != nil {
		e.Log.Warn("settings ignored", "seq", e.Seq, "err", err)
	}
	changed, err := extension.SequenceFile(e.SeqFile()).Update(e.Seq)
	if err != nil {
		return "", &ExitError{ExitSeqFile, err}
	}
	if changed {
		if _, err := extension.WriteStatus(e.Handler.StatusFolder, e.Seq, e.status(extension.StatusTransitioning, 0, enablingMessage), time.Now()); err != nil {
			e.Log.Error("write status", "err", err)
		}
	}
	if err := ensureMonitor(ctx, e); err != nil {
		return "", &ExitError{ExitMonitorSpawn, err}
	}
	ensureHeartbeat(e)
	if err := os.Remove(e.UpdateTag()); err == nil {
		e.Log.Info("update tag removed", "path", e.UpdateTag())
	}
	return fmt.Sprintf("enabled (seq %d, new=%v)", e.Seq, changed), nil
}

// enabledHeartbeat is the heartbeat enable writes when there is none yet
// (a fresh install or an upgrade, whose directory is new): waagent reads
// the heartbeat soon after enable exits and reports a missing one as an
// error (code -1) until the next enable. The monitor replaces it with its
// own view at start and whenever that view changes.
const enabledHeartbeat = "ProxyAgent extension enabled; its monitor is checking the agent's status."

// disabledHeartbeat is the heartbeat disable leaves: the monitor it
// stopped no longer speaks for the agent.
const disabledHeartbeat = "ProxyAgent extension disabled: its monitor is stopped; the agent service keeps running."

// ensureHeartbeat writes enabledHeartbeat when the heartbeat file is
// missing or is disable's; any other is the running monitor's and stays.
func ensureHeartbeat(e *Env) {
	if e.Handler.HeartbeatFile == "" {
		return
	}
	if _, err := os.Stat(e.Handler.HeartbeatFile); err == nil {
		hb, rerr := extension.ReadHeartbeat(e.Handler.HeartbeatFile)
		if rerr != nil || hb.FormattedMessage.Message != disabledHeartbeat {
			return // the monitor's (an unreadable one is the monitor's to rewrite)
		}
	}
	if err := WriteHeartbeat(e, enabledHeartbeat); err != nil {
		e.Log.Error("write heartbeat", "err", err)
	}
}

// useSystemdMonitor: where systemd runs (and paths are not relocated) the
// monitor runs as a transient unit with Restart=always.
func useSystemdMonitor(e *Env) bool {
	return e.Layout.Root == "" && e.Opts.ServiceManager != "supervisor" && systemdRunning()
}

// ensureMonitor makes exactly one monitor of this binary run: it replaces
// monitors of other versions, keeps one of its own, or starts one,
// retrying monitorSpawnTries times Opts.RetryInterval apart.
func ensureMonitor(ctx context.Context, e *Env) error {
	own, others := FindMonitors(e.Exe)
	for _, p := range others {
		e.Log.Info("stopping monitor of another version", "pid", p.PID, "exe", p.Exe)
		Terminate(p.PID, p.Exe, monitorExitTimeout)
	}
	if len(own) > 0 {
		for _, p := range own[1:] {
			Terminate(p.PID, p.Exe, monitorExitTimeout)
		}
		e.Log.Info("monitor already running", "pid", own[0].PID)
		return nil
	}
	var err error
	for i := 0; i < monitorSpawnTries; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(e.Opts.RetryInterval):
			}
		}
		if err = startMonitor(e); err == nil {
			return nil
		}
		e.Log.Error("start monitor", "attempt", i+1, "err", err)
	}
	return fmt.Errorf("monitor could not be started after %d attempts: %w", monitorSpawnTries, err)
}

func startMonitor(e *Env) error {
	if useSystemdMonitor(e) {
		exec.Command("systemctl", "stop", MonitorUnitName).Run()
		exec.Command("systemctl", "reset-failed", MonitorUnitName).Run()
		out, err := exec.Command("systemd-run", monitorUnitArgs(e, os.Environ())...).CombinedOutput()
		if err == nil {
			e.Log.Info("monitor started as transient unit", "unit", MonitorUnitName)
			return nil
		}
		// The failed transient unit stays loaded with Restart=always:
		// take it down before the monitor starts here instead.
		exec.Command("systemctl", "stop", MonitorUnitName).Run()
		exec.Command("systemctl", "reset-failed", MonitorUnitName).Run()
		e.Log.Warn("systemd-run failed; starting monitor in its own session", "err", err, "out", strings.TrimSpace(string(out)))
	}
	// stdout/stderr go to the monitor log, so a crash leaves its trace.
	pid, err := SpawnDetached(e.Exe, nil, e.ExtDir, filepath.Join(e.Handler.LogFolder, MonitorLogName), os.Environ())
	if err != nil {
		return err
	}
	// A monitor that dies at once (bad environment) counts as a failure.
	time.Sleep(200 * time.Millisecond)
	if !Alive(pid, e.Exe) {
		return fmt.Errorf("monitor pid %d exited right after start", pid)
	}
	e.Log.Info("monitor started", "pid", pid)
	return nil
}

// stopMonitors stops every monitor of this binary (and its transient unit)
// and returns how many ran: the transient unit, if it was active, counts
// as one.
func stopMonitors(e *Env) int {
	n := 0
	if useSystemdMonitor(e) {
		if exec.Command("systemctl", "is-active", "--quiet", MonitorUnitName).Run() == nil {
			n++
		}
		exec.Command("systemctl", "stop", MonitorUnitName).Run()
	}
	own, _ := FindMonitors(e.Exe)
	for _, p := range own {
		if err := Terminate(p.PID, p.Exe, monitorExitTimeout); err != nil {
			e.Log.Error("stop monitor", "pid", p.PID, "err", err)
		}
	}
	return n + len(own)
}

func runDisable(ctx context.Context, e *Env) (string, error) {
	n := stopMonitors(e)
	if e.Handler.HeartbeatFile != "" {
		// The stopped monitor's last heartbeat would go on saying it runs.
		if err := WriteHeartbeat(e, disabledHeartbeat); err != nil {
			e.Log.Error("write heartbeat", "err", err)
		}
	}
	return fmt.Sprintf("disable: stopped %d monitor(s); the agent service keeps running", n), nil
}

func runUpdate(ctx context.Context, e *Env) (string, error) {
	var err error
	for i := 0; i < updateTagTries; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return "", ctx.Err()
			case <-time.After(e.Opts.RetryInterval):
			}
		}
		if err = atomicfile.WriteFile(e.UpdateTag(), []byte(time.Now().UTC().Format(time.RFC3339)), 0o644); err == nil {
			return fmt.Sprintf("update: tag %s written (from %s to %s)", e.UpdateTag(),
				os.Getenv(extension.EnvUpdatingFromVersion), os.Getenv(extension.EnvVersion)), nil
		}
		e.Log.Error("write update tag", "attempt", i+1, "err", err)
	}
	return "", fmt.Errorf("update: could not write %s: %w", e.UpdateTag(), err)
}

// updateInProgress reports whether update.tag exists and is younger than
// Opts.UpdateTagStaleAfter; an older tag is left from an interrupted
// upgrade and no longer protects the service.
func updateInProgress(e *Env) bool {
	fi, err := os.Stat(e.UpdateTag())
	if err != nil {
		return false
	}
	if time.Since(fi.ModTime()) > e.Opts.UpdateTagStaleAfter {
		e.Log.Warn("ignoring stale update tag", "path", e.UpdateTag(), "mtime", fi.ModTime())
		os.Remove(e.UpdateTag())
		return false
	}
	return true
}

func runUninstall(ctx context.Context, e *Env) (string, error) {
	if updateInProgress(e) {
		return "uninstall: update in progress (update.tag present); the agent service is left in place", nil
	}
	stopMonitors(e)
	if err := e.NewSetup().Uninstall(); err != nil {
		return "", fmt.Errorf("uninstall: %w", err)
	}
	return "uninstall: agent service stopped, disabled and removed", nil
}

func runReset(ctx context.Context, e *Env) (string, error) {
	var errs []error
	if err := os.Remove(e.UpdateTag()); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	errs = append(errs, extension.SequenceFile(e.SeqFile()).Remove())
	if err := errors.Join(errs...); err != nil {
		return "", err
	}
	return "reset: update tag and sequence file removed", nil
}

// LookupCommand returns the table row for name.
func LookupCommand(name string) (Command, bool) {
	for _, c := range Commands {
		if c.Name == name {
			return c, true
		}
	}
	return Command{}, false
}

// Execute runs one table command with e and returns the process exit code.
// The driver does the status writing and exit-code mapping for every
// command.
func Execute(ctx context.Context, c Command, e *Env) int {
	e.Log.Info("command start", "command", c.Name, "seq", e.Seq, "version", e.Version)
	msg, err := c.Run(ctx, e)
	if err == nil {
		e.Log.Info("command done", "command", c.Name, "message", msg)
		return ExitOK
	}
	code := c.FailExit
	var ee *ExitError
	if errors.As(err, &ee) {
		code = ee.Code
	}
	e.Log.Error("command failed", "command", c.Name, "exit", code, "err", err)
	if c.ReportsStatus && code != ExitOK {
		if _, werr := extension.WriteStatus(e.Handler.StatusFolder, e.Seq, e.status(extension.StatusError, code, err.Error()), time.Now()); werr != nil {
			e.Log.Error("write status", "err", werr)
		}
	}
	return code
}
