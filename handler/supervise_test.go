package handler

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opengpa/gpa/internal/testsupport"
)

// TestSupervise: the supervisor restarts the agent after RestartSec, like
// Restart=always, and stops it and cleans up when told to stop.
func TestSupervise(t *testing.T) {
	dir := t.TempDir()
	unit := filepath.Join(dir, UnitName)
	os.WriteFile(unit, []byte("[Service]\nExecStart=/bin/sleep 60\nRestart=always\nRestartSec=0.2\n"), 0o644)
	pidFile, agentFile := filepath.Join(dir, "s.pid"), filepath.Join(dir, "a.pid")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Supervise(ctx, unit, pidFile, agentFile, discardLog()) }()

	// Supervisor.Start returns once the pid file appears and Setup then
	// requires the agent to be running at once: the agent must already be
	// recorded when the supervisor announces itself.
	testsupport.WaitFor(t, "supervisor pid file", func() bool { return readPID(pidFile) != 0 })
	if !Alive(readPID(agentFile), "") {
		t.Fatalf("supervisor announced itself before the agent ran (agent pid %d)", readPID(agentFile))
	}
	if readPID(pidFile) != os.Getpid() {
		t.Errorf("supervisor pid file holds %d", readPID(pidFile))
	}
	first := readPID(agentFile)
	syscall.Kill(first, syscall.SIGKILL)
	testsupport.WaitFor(t, "restart", func() bool { p := readPID(agentFile); return p != first && Alive(p, "") })
	second := readPID(agentFile)

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("supervisor did not stop")
	}
	if Alive(second, "") {
		t.Errorf("agent %d survived the supervisor stop", second)
	}
	for _, f := range []string{pidFile, agentFile} {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("%s left behind", f)
		}
	}
}

func TestParseUnitExecAndShow(t *testing.T) {
	tests := []struct {
		unit    string
		argv0   string
		restart time.Duration
	}{
		{"ExecStart=/a --x\nRestartSec=5\n", "/a", 5 * time.Second},
		{"ExecStart=-/b\nRestartSec=250ms\n", "/b", 250 * time.Millisecond},
		{"ExecStart=/c\n", "/c", 100 * time.Millisecond},
	}
	for _, tc := range tests {
		u, err := ParseUnitExec([]byte(tc.unit))
		if err != nil || u.Argv[0] != tc.argv0 || u.RestartSec != tc.restart {
			t.Errorf("%q: %+v %v", tc.unit, u, err)
		}
	}
	show := []struct{ in, want string }{
		{"ExecStart={ path=/usr/sbin/azure-proxy-agent ; argv[]=/usr/sbin/azure-proxy-agent --config /etc/azure/proxy-agent.json ; ignore_errors=no }\n", "/usr/sbin/azure-proxy-agent"},
		{"ExecStart=\n", ""},
		{"ExecStart={}\n", ""},
	}
	for _, tc := range show {
		if got := parseShowExecPath(tc.in); got != tc.want {
			t.Errorf("parseShowExecPath(%q) = %q", tc.in, got)
		}
	}
}

// TestSuperviseAnnouncesFailedStart: when the agent cannot be started the
// supervisor still records its PID (it keeps retrying), and no agent PID
// is recorded, so the service reads as not active.
func TestSuperviseAnnouncesFailedStart(t *testing.T) {
	dir := t.TempDir()
	unit := filepath.Join(dir, UnitName)
	os.WriteFile(unit, []byte("[Service]\nExecStart="+filepath.Join(dir, "missing")+"\nRestartSec=0.2\n"), 0o644)
	pidFile, agentFile := filepath.Join(dir, "s.pid"), filepath.Join(dir, "a.pid")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Supervise(ctx, unit, pidFile, agentFile, discardLog()) }()
	testsupport.WaitFor(t, "supervisor pid file", func() bool { return readPID(pidFile) != 0 })
	if _, err := os.Stat(agentFile); err == nil {
		t.Error("agent pid recorded for an agent that could not start")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("supervisor did not stop")
	}
	if _, err := os.Stat(pidFile); err == nil {
		t.Error("pid file left behind")
	}
}

// The log the supervisor and the agent write to (their stdout; with
// fileLogLevelForSystemEvents Info a line per request) stays bounded
// without systemd's journal: past the limit its content moves to .1 and
// the writers go on at the start of the emptied file.
func TestTrimLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "supervisor.log")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.WriteString("0123456789\n")
	trimLog(f, 11)
	if b, _ := os.ReadFile(path); string(b) != "0123456789\n" {
		t.Fatalf("trimmed at the limit: %q", b)
	}
	f.WriteString("more\n")
	trimLog(f, 11)
	if b, _ := os.ReadFile(rotatedLog(path)); string(b) != "0123456789\nmore\n" {
		t.Errorf(".1 holds %q", b)
	}
	f.WriteString("after\n")
	if b, _ := os.ReadFile(path); string(b) != "after\n" {
		t.Errorf("log after the trim holds %q", b)
	}
}

// trimOutput trims the log once per outputCheckEvery while its context
// lasts (synctest: the bubble's clock).
func TestTrimOutputEveryInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "supervisor.log")
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { trimOutput(ctx, f, outputCheckEvery, 4); close(done) }()
		f.WriteString("over the limit\n")
		time.Sleep(outputCheckEvery - time.Millisecond)
		synctest.Wait()
		if fi, _ := f.Stat(); fi.Size() == 0 {
			t.Fatal("trimmed before the interval")
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if fi, _ := f.Stat(); fi.Size() != 0 {
			t.Errorf("log still %d bytes after the interval", fi.Size())
		}
		if b, _ := os.ReadFile(rotatedLog(path)); string(b) != "over the limit\n" {
			t.Errorf(".1 holds %q", b)
		}
		cancel()
		<-done
	})
}
