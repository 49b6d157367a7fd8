package handler

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/extension"
)

// errService fails every operation, like systemctl on a broken system.
type errService struct{ fakeService }

func (e *errService) Stop() error    { e.stops++; return errors.New("systemctl stop: failed") }
func (e *errService) Disable() error { return errors.New("systemctl disable: failed") }
func (e *errService) Reload() error  { return errors.New("systemctl daemon-reload: failed") }

func commandEnv(t *testing.T, svc Service) *Env {
	root := t.TempDir()
	lib := filepath.Join(root, "var/lib/waagent")
	ext := filepath.Join(lib, HandlerName+"-1.0.0")
	os.MkdirAll(ext, 0o755)
	opts := DefaultOptions()
	opts.RetryInterval = time.Millisecond
	opts.UpdateTagStaleAfter = time.Hour
	l := Layout{Root: root}
	if svc == nil {
		svc = &fakeService{l: l, active: true, enabled: true}
	}
	return &Env{ExtDir: ext, Exe: filepath.Join(ext, "missing", ExtBinaryName), Version: "1.0.0", Seq: 2, Layout: l, Opts: opts, Log: discardLog(), Service: svc,
		Handler: extension.HandlerEnvironment{StatusFolder: filepath.Join(ext, "status"), ConfigFolder: filepath.Join(ext, "config"), HeartbeatFile: filepath.Join(ext, "heartbeat.log"), LogFolder: root}}
}

func TestCommandTable(t *testing.T) {
	names := map[string]bool{}
	for _, c := range Commands {
		names[c.Name] = true
		if c.Run == nil {
			t.Errorf("%s has no function", c.Name)
		}
	}
	for _, n := range []string{"install", "enable", "update", "disable", "uninstall", "reset"} {
		if !names[n] {
			t.Errorf("command %s missing", n)
		}
	}
	if _, ok := LookupCommand("bogus"); ok {
		t.Error("unknown command found")
	}
}

func TestExecute(t *testing.T) {
	tests := []struct {
		name    string
		command string
		svc     func(l Layout) Service
		prep    func(e *Env)
		want    int
		check   func(t *testing.T, e *Env)
	}{
		{"enable: monitor cannot start", "enable", nil, nil, ExitMonitorSpawn, func(t *testing.T, e *Env) {
			it, err := extension.ReadStatus(extension.StatusPath(e.Handler.StatusFolder, 2))
			if err != nil || it.Status.Status != "error" || it.Status.Code != ExitMonitorSpawn || !strings.Contains(it.Status.FormattedMessage.Message, "6 attempts") {
				t.Errorf("status %+v %v", it, err)
			}
			if n, ok := extension.SequenceFile(e.SeqFile()).Read(); !ok || n != 2 {
				t.Errorf("seq file %d %v", n, ok)
			}
		}},
		{"uninstall: service errors still exit 0", "uninstall", func(l Layout) Service { return &errService{fakeService{l: l, active: true}} }, func(e *Env) {
			os.MkdirAll(e.Layout.UnitDir(), 0o755)
			os.WriteFile(e.Layout.UnitFile(), []byte("[Service]\n"), 0o644)
		}, 0, func(t *testing.T, e *Env) {
			if _, err := os.Stat(e.Layout.UnitFile()); err == nil {
				t.Error("unit file not removed")
			}
		}},
		{"uninstall during update leaves service", "uninstall", nil, func(e *Env) {
			os.WriteFile(e.UpdateTag(), []byte("now"), 0o644)
		}, 0, func(t *testing.T, e *Env) {
			if f := e.Service.(*fakeService); f.stops != 0 || !f.active {
				t.Error("service stopped during update")
			}
		}},
		{"uninstall with stale tag removes service", "uninstall", nil, func(e *Env) {
			os.WriteFile(e.UpdateTag(), []byte("old"), 0o644)
			old := time.Now().Add(-3 * time.Hour)
			os.Chtimes(e.UpdateTag(), old, old)
		}, 0, func(t *testing.T, e *Env) {
			if f := e.Service.(*fakeService); f.stops == 0 {
				t.Error("stale tag still protected the service")
			}
			if _, err := os.Stat(e.UpdateTag()); err == nil {
				t.Error("stale tag kept")
			}
		}},
		{"update writes tag in the waagent dir", "update", nil, nil, 0, func(t *testing.T, e *Env) {
			if filepath.Dir(e.UpdateTag()) != e.Layout.WaagentDir() {
				t.Errorf("tag at %s", e.UpdateTag())
			}
			if _, err := os.Stat(e.UpdateTag()); err != nil {
				t.Error(err)
			}
		}},
		{"update that cannot write still exits 0", "update", nil, func(e *Env) {
			e.ExtDir = filepath.Join(e.ExtDir, "no", "such")
		}, 0, nil},
		{"reset removes tag and seq", "reset", nil, func(e *Env) {
			os.WriteFile(e.UpdateTag(), nil, 0o644)
			extension.SequenceFile(e.SeqFile()).Update(5)
		}, 0, func(t *testing.T, e *Env) {
			for _, p := range []string{e.UpdateTag(), e.SeqFile()} {
				if _, err := os.Stat(p); err == nil {
					t.Errorf("%s kept", p)
				}
			}
		}},
		{"install does nothing", "install", nil, nil, 0, func(t *testing.T, e *Env) {
			if f := e.Service.(*fakeService); f.starts+f.stops != 0 {
				t.Error("install touched the service")
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var svc Service
			e := commandEnv(t, nil)
			if tc.svc != nil {
				svc = tc.svc(e.Layout)
				e.Service = svc
			}
			if tc.prep != nil {
				tc.prep(e)
			}
			c, _ := LookupCommand(tc.command)
			if got := Execute(context.Background(), c, e); got != tc.want {
				t.Fatalf("exit %d, want %d", got, tc.want)
			}
			if tc.check != nil {
				tc.check(t, e)
			}
		})
	}
}

// The setup steps log to <ext>/ProxyAgent/setup.log (upstream's setup
// tool's log) as well as to the handler's log.
func TestSetupLog(t *testing.T) {
	e := commandEnv(t, nil)
	var handlerLog bytes.Buffer
	e.Log = slog.New(slog.NewTextHandler(&handlerLog, nil))
	s := e.NewSetup()
	if err := s.Backup(); err != nil {
		t.Fatal(err)
	}
	if err := s.Purge(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(e.ExtDir, "ProxyAgent", SetupLogName))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `msg="nothing installed to back up"`) || !strings.Contains(string(b), "pid=") {
		t.Errorf("setup.log:\n%s", b)
	}
	if !strings.Contains(handlerLog.String(), `msg="nothing installed to back up"`) {
		t.Errorf("handler log:\n%s", handlerLog.String())
	}
}
