package handler

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Proc is a process seen in /proc.
type Proc struct {
	PID  int
	Exe  string // target of /proc/<pid>/exe, without a " (deleted)" suffix
	Args []string
}

// ListProcs returns every process whose executable and command line can be
// read (other users' processes are skipped when not running as root).
func ListProcs() []Proc {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []Proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := readProc(pid); ok {
			out = append(out, p)
		}
	}
	return out
}

func readProc(pid int) (Proc, bool) {
	exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	if err != nil {
		return Proc{}, false
	}
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || len(raw) == 0 {
		return Proc{}, false
	}
	args := strings.Split(strings.TrimSuffix(string(raw), "\x00"), "\x00")
	return Proc{PID: pid, Exe: strings.TrimSuffix(exe, " (deleted)"), Args: args}, true
}

// ResolveExe returns the canonical path of an executable, as /proc/<pid>/exe
// shows it.
func ResolveExe(p string) string {
	if r, err := filepath.EvalSymlinks(p); err == nil {
		p = r
	}
	if a, err := filepath.Abs(p); err == nil {
		p = a
	}
	return p
}

// FindMonitors returns the running monitors of the extension binary exe
// (processes whose /proc/<pid>/exe is exe and whose command line has no
// subcommand), and the monitors of other versions installed beside it
// (a ProxyAgentExt with no subcommand in another directory under the same
// waagent directory), which an enable of this version replaces.
func FindMonitors(exe string) (own, others []Proc) {
	exe = ResolveExe(exe)
	lib := filepath.Dir(filepath.Dir(exe))
	self := os.Getpid()
	for _, p := range ListProcs() {
		if p.PID == self || len(p.Args) != 1 {
			continue
		}
		switch {
		case p.Exe == exe:
			own = append(own, p)
		case isExtBinary(filepath.Base(p.Exe)) && filepath.Dir(filepath.Dir(p.Exe)) == lib:
			others = append(others, p)
		}
	}
	return own, others
}

// Alive reports whether pid exists and still runs exe (when exe is not
// empty), so a recycled PID is never mistaken for the process it replaced.
func Alive(pid int, exe string) bool {
	if pid <= 0 {
		return false
	}
	p, ok := readProc(pid)
	if !ok {
		return false
	}
	if isZombie(pid) {
		return false
	}
	return exe == "" || p.Exe == ResolveExe(exe)
}

func isZombie(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z'
}

// Terminate sends SIGTERM to pid if it still runs exe, waits up to grace,
// then sends SIGKILL. It returns nil when the process is gone.
func Terminate(pid int, exe string, grace time.Duration) error {
	if !Alive(pid, exe) {
		return nil
	}
	syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !Alive(pid, exe) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	if Alive(pid, exe) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	for i := 0; i < 100; i++ {
		if !Alive(pid, exe) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("process %d (%s) did not exit", pid, exe)
}

// SpawnDetached starts path with args in a new session (setsid), with
// stdin from /dev/null and stdout/stderr appended to logPath (or
// /dev/null), working directory dir, and returns its PID without waiting:
// a timeout that kills the caller's process group never reaches it.
func SpawnDetached(path string, args []string, dir, logPath string, env []string) (int, error) {
	cmd := exec.Command(path, args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	var out *os.File
	var err error
	if logPath != "" {
		os.MkdirAll(filepath.Dir(logPath), 0o755)
		out, err = os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	}
	if out == nil || err != nil {
		out, err = os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		if err != nil {
			return 0, err
		}
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	pid := cmd.Process.Pid
	// Reap the child if it exits while we are still running; otherwise it
	// is re-parented when we exit.
	go cmd.Wait()
	return pid, nil
}
