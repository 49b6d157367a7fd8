package handler

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/opengpa/gpa/internal/atomicfile"
)

// Supervise is the supervisor process's main loop: it runs the ExecStart
// of the unit at unitPath and, whenever the agent exits, starts it again
// after RestartSec, like systemd's Restart=always. It re-reads the unit
// before every start, so an upgraded unit takes effect on the next start.
// It records the agent's PID in agentPIDFile and its own PID in pidFile.
//
// pidFile is written only after the first start attempt has finished
// (the agent runs and agentPIDFile names it, or the attempt failed), so a
// caller that sees pidFile appear knows agentPIDFile reflects that
// attempt: like "systemctl start" of a Type=simple unit, which returns
// once the main process has been started. When ctx is cancelled (SIGTERM)
// it stops the agent (SIGTERM, then SIGKILL after 5 s), removes both files
// and returns.
func Supervise(ctx context.Context, unitPath, pidFile, agentPIDFile string, log *slog.Logger) error {
	defer os.Remove(pidFile)
	defer os.Remove(agentPIDFile)
	go trimOutput(ctx, os.Stdout, outputCheckEvery, maxLogSize)
	announced := false
	announce := func() error {
		if announced {
			return nil
		}
		announced = true
		return atomicfile.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())), 0o644)
	}
	for {
		delay := 5 * time.Second
		data, err := os.ReadFile(unitPath)
		var u UnitExec
		if err == nil {
			u, err = ParseUnitExec(data)
		}
		if err != nil {
			log.Error("supervisor cannot read unit", "unit", unitPath, "err", err)
		} else {
			delay = u.RestartSec
			cmd := exec.Command(u.Argv[0], u.Argv[1:]...)
			cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
			cmd.Dir = "/"
			if err := cmd.Start(); err != nil {
				log.Error("supervisor cannot start agent", "exec", u.Argv[0], "err", err)
			} else {
				atomicfile.WriteFile(agentPIDFile, []byte(strconv.Itoa(cmd.Process.Pid)), 0o644)
				log.Info("agent started", "pid", cmd.Process.Pid, "exec", u.Argv[0])
				done := make(chan error, 1)
				go func() { done <- cmd.Wait() }()
				if err := announce(); err != nil {
					stopAgent(cmd, done)
					return err
				}
				select {
				case err := <-done:
					log.Warn("agent exited; restarting", "err", err, "restartSec", u.RestartSec)
				case <-ctx.Done():
					stopAgent(cmd, done)
					log.Info("agent stopped by supervisor")
					return nil
				}
				os.Remove(agentPIDFile)
			}
		}
		if err := announce(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
	}
}

// outputCheckEvery is how often the supervisor checks the size of the log
// that it and the agent write to.
const outputCheckEvery = 30 * time.Second

// trimOutput keeps the log file f names (the supervisor's stdout, which
// the agent inherits: with fileLogLevelForSystemEvents Info it gets a line
// per request) within limit until ctx ends: every interval, a file past
// limit is copied to <path>.1 and emptied (trimLog). systemd's journal
// bounds itself; this file is what the VM has without it.
func trimOutput(ctx context.Context, f *os.File, every time.Duration, limit int64) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			trimLog(f, limit)
		}
	}
}

// trimLog moves the content of the regular file f writes to into
// <path>.1 and truncates it, when it is over limit. The copy reads through
// f's own file (/proc/self/fd), streaming, to its end at that moment, and
// the truncation follows at once: a line the agent writes in between is
// lost. The writers append (O_APPEND, as SpawnDetached opens the file), so
// they go on at the new end. A file renamed or deleted since it was opened
// is left alone.
func trimLog(f *os.File, limit int64) {
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() || fi.Size() <= limit {
		return
	}
	self := "/proc/self/fd/" + strconv.Itoa(int(f.Fd()))
	path, err := os.Readlink(self)
	if err != nil || !filepath.IsAbs(path) {
		return
	}
	if pi, err := os.Stat(path); err != nil || !os.SameFile(pi, fi) {
		return
	}
	src, err := os.Open(self)
	if err != nil {
		return
	}
	defer src.Close()
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".1.*")
	if err != nil {
		return
	}
	_, err = io.Copy(tmp, src)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), fi.Mode().Perm())
	}
	if err == nil {
		err = os.Rename(tmp.Name(), rotatedLog(path))
	}
	if err != nil {
		os.Remove(tmp.Name())
		return
	}
	f.Truncate(0)
}

// stopAgent sends SIGTERM to the agent, then SIGKILL after 5 s, and waits
// for it to be reaped (done is its cmd.Wait result).
func stopAgent(cmd *exec.Cmd, done <-chan error) {
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}
