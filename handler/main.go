package handler

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/opengpa/gpa/extension"
	"github.com/opengpa/gpa/internal/version"
)

// maxLogSize is where a handler log is rotated (kept once as .1).
const maxLogSize = 20 << 20

// rotateLog moves the log at p to its one kept copy (rotatedLog) once it
// is over maxLogSize.
func rotateLog(p string) {
	if fi, err := os.Stat(p); err == nil && fi.Size() > maxLogSize {
		os.Rename(p, rotatedLog(p))
	}
}

// rotatedLog is the name of the one copy kept of the log at p.
func rotatedLog(p string) string { return p + ".1" }

// SetupLogName is the log of the setup steps (install, backup, restore,
// purge, uninstall), in <ext>/ProxyAgent where upstream's setup tool
// writes it; the steps log to the handler's or monitor's log as well.
const SetupLogName = "setup.log"

// setupLogger returns log that also appends each record to
// <extDir>/ProxyAgent/setup.log.
func setupLogger(extDir string, log *slog.Logger) *slog.Logger {
	f := &appendFile{path: filepath.Join(extDir, BundleDir, SetupLogName)}
	file := slog.NewTextHandler(f, nil).WithAttrs([]slog.Attr{slog.Int("pid", os.Getpid())})
	return slog.New(slog.NewMultiHandler(log.Handler(), file))
}

// appendFile appends each Write to path, opened for that write (setup logs
// a few lines per step, and a Setup has no end to close a file at); the
// file is rotated once, as openLog's, past maxLogSize. A write that fails
// is dropped: the other log has the line.
type appendFile struct{ path string }

func (a *appendFile) Write(p []byte) (int, error) {
	if err := os.MkdirAll(filepath.Dir(a.path), 0o755); err != nil {
		return len(p), nil
	}
	rotateLog(a.path)
	f, err := os.OpenFile(a.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return len(p), nil
	}
	defer f.Close()
	f.Write(p)
	return len(p), nil
}

func openLog(dir, name string, stderr io.Writer) (*slog.Logger, func()) {
	if err := os.MkdirAll(dir, 0o755); err == nil {
		p := filepath.Join(dir, name)
		rotateLog(p)
		if f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640); err == nil {
			l := slog.New(slog.NewTextHandler(f, nil)).With("pid", os.Getpid())
			return l, func() { f.Close() }
		}
	}
	return slog.New(slog.NewTextHandler(stderr, nil)), func() {}
}

// Main is the whole ProxyAgentExt program; it returns the exit code.
//
//	ProxyAgentExt                    the monitor
//	ProxyAgentExt <command>          one waagent command from Commands
//	ProxyAgentExt setup <verb>       install|backup|restore|purge|uninstall
//	ProxyAgentExt supervise ...      the supervisor (installed copy only)
//	ProxyAgentExt --version
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "--version", "-v", "version":
			fmt.Fprintln(stdout, version.Version)
			return 0
		case "supervise":
			return superviseMain(args[1:], stderr)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(stderr, "ProxyAgentExt: cannot locate own executable:", err)
		return ExitHandlerEnv
	}
	exe = ResolveExe(exe)
	extDir := filepath.Dir(exe)

	var cmd Command
	mode := "monitor"
	if len(args) > 0 {
		if args[0] == "setup" {
			mode = "setup"
		} else {
			c, ok := LookupCommand(args[0])
			if !ok {
				fmt.Fprintf(stderr, "ProxyAgentExt: unknown command %q (want install, enable, update, disable, uninstall, reset)\n", args[0])
				return 2
			}
			cmd, mode = c, "command"
		}
	}

	he, err := extension.LoadHandlerEnvironment(extDir)
	if err != nil {
		fmt.Fprintln(stderr, "ProxyAgentExt:", err)
		return ExitHandlerEnv
	}
	h := he.HandlerEnvironment
	logName := HandlerLogName
	if mode == "monitor" {
		logName = MonitorLogName
	}
	log, closeLog := openLog(h.LogFolder, logName, stderr)
	defer closeLog()

	layout := LayoutFromEnv(os.Getenv)
	seq, err := extension.SequenceNumber(os.Getenv, h.ConfigFolder)
	if err != nil {
		log.Error("invalid sequence number", "err", err)
		fmt.Fprintln(stderr, "ProxyAgentExt:", err)
		return ExitHandlerEnv
	}
	env := &Env{ExtDir: extDir, Exe: exe, Version: version.Version, Handler: h, Seq: seq,
		Layout: layout, Opts: OptionsFromEnv(os.Getenv), Log: log.With("mode", mode)}

	if !checkPrerequisites(env, os.Getenv, stderr, refusesWithoutPrerequisites(mode, cmd, args)) {
		return ExitUnsupportedOS
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	switch mode {
	case "monitor":
		signal.Ignore(syscall.SIGHUP)
		NewMonitor(env).Run(ctx)
		return 0
	case "setup":
		return setupMain(ctx, env, args[1:], stderr)
	}
	return Execute(ctx, cmd, env)
}

func setupMain(ctx context.Context, e *Env, args []string, stderr io.Writer) int {
	// "uninstall" takes upstream's optional "service" (the default) or
	// "package" (the installed files go too).
	uninstallPackage := len(args) == 2 && args[0] == "uninstall" && args[1] == "package"
	if len(args) != 1 && !(len(args) == 2 && args[0] == "uninstall" && (args[1] == "service" || uninstallPackage)) {
		fmt.Fprintln(stderr, "usage: ProxyAgentExt setup install|backup|restore|purge|uninstall [service|package]")
		return 2
	}
	s := e.NewSetup()
	var err error
	switch args[0] {
	case "install":
		err = s.Install(ctx)
	case "backup":
		err = s.Backup()
	case "restore":
		err = s.Restore(ctx)
	case "purge":
		err = s.Purge()
	case "uninstall":
		err = s.Uninstall()
		if uninstallPackage {
			err = errors.Join(err, s.RemovePackage())
		}
	default:
		fmt.Fprintf(stderr, "ProxyAgentExt setup: unknown verb %q\n", args[0])
		return 2
	}
	if err != nil {
		e.Log.Error("setup failed", "verb", args[0], "err", err)
		fmt.Fprintln(stderr, err)
		return 1
	}
	e.Log.Info("setup done", "verb", args[0])
	return 0
}

func superviseMain(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("supervise", flag.ContinueOnError)
	fs.SetOutput(stderr)
	unit := fs.String("unit", "", "unit file whose ExecStart to run")
	pidFile := fs.String("pid-file", "", "file to record the supervisor PID")
	agentPID := fs.String("agent-pid-file", "", "file to record the agent PID")
	if err := fs.Parse(args); err != nil || *unit == "" || *pidFile == "" || *agentPID == "" {
		fmt.Fprintln(stderr, "usage: supervise --unit FILE --pid-file FILE --agent-pid-file FILE")
		return 2
	}
	signal.Ignore(syscall.SIGHUP)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log := slog.New(slog.NewTextHandler(stderr, nil)).With("supervisor", os.Getpid())
	if err := Supervise(ctx, *unit, *pidFile, *agentPID, log); err != nil {
		log.Error("supervisor failed", "err", err)
		return 1
	}
	return 0
}
