package waagentsim

import (
	"archive/zip"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/extension"
	"github.com/opengpa/gpa/internal/testsupport"
)

func requireWaagent(t *testing.T) {
	t.Helper()
	if err := Available(); err != nil {
		t.Skip(err)
	}
}

const manifest = `[{"name": "Toy", "version": 1.0, "handlerManifest": {
  "installCommand": "./install.sh", "uninstallCommand": "./uninstall.sh", "updateCommand": "./update.sh",
  "enableCommand": "./enable.sh", "disableCommand": "./disable.sh", "reportHeartbeat": true,
  "updateMode": "UpdateWithInstall", "continueOnUpdateFailure": false, "supportsMultipleExtensions": false}}]`

// toyZip writes a handler package whose commands print waagent's
// variables (install), fail (disable), hang with a child (update), and
// write the status file (enable).
func toyZip(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "Toy__1.2.3.zip")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	zw := zip.NewWriter(f)
	files := []struct {
		name, body string
		mode       os.FileMode
	}{
		{"HandlerManifest.json", manifest, 0o644},
		// Mode 0644 on purpose: initialize() makes every file u+x.
		{"install.sh", "#!/bin/sh\necho \"path=$AZURE_GUEST_AGENT_EXTENSION_PATH ver=$AZURE_GUEST_AGENT_EXTENSION_VERSION seq=$ConfigSequenceNumber extra=$EXTRA pwd=$(pwd)\"\n", 0o644},
		{"disable.sh", "#!/bin/sh\necho failing >&2\nexit 7\n", 0o755},
		{"update.sh", "#!/bin/sh\nsleep 30 &\necho $! > \"$PIDFILE\"\nwait\n", 0o755},
		{"enable.sh", "#!/bin/sh\nprintf '%s' \"$STATUS\" > status/$ConfigSequenceNumber.status\n", 0o755},
		{"uninstall.sh", "#!/bin/sh\nexit 0\n", 0o755},
		{"bin/tool", "data", 0o600},
	}
	for _, fl := range files {
		h := &zip.FileHeader{Name: fl.name, Method: zip.Deflate}
		h.SetMode(fl.mode)
		w, err := zw.CreateHeader(h)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(fl.body))
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

func newAgent(t *testing.T) (*Agent, string) {
	t.Helper()
	requireWaagent(t)
	root := t.TempDir()
	a := &Agent{LibDir: filepath.Join(root, "lib"), LogDir: filepath.Join(root, "log", "Toy")}
	base, err := a.Unpack(toyZip(t), "Toy", "1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	return a, base
}

func TestUnpackLikeWaagent(t *testing.T) {
	a, base := newAgent(t)
	if base != filepath.Join(a.LibDir, "Toy-1.2.3") {
		t.Errorf("handler dir %s", base)
	}
	for _, tc := range []struct {
		path string
		want os.FileMode
	}{
		{"install.sh", 0o744}, {"disable.sh", 0o755}, {"bin/tool", 0o700}, {"config", 0o700}, {"status", 0o700},
	} {
		fi, err := os.Stat(filepath.Join(base, tc.path))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != tc.want {
			t.Errorf("%s mode %v, want %v", tc.path, got, tc.want)
		}
	}
	entry, err := extension.LoadHandlerEnvironment(base)
	he := entry.HandlerEnvironment
	if err != nil {
		t.Fatalf("the handler cannot read the HandlerEnvironment.json written: %v", err)
	}
	if he.StatusFolder != filepath.Join(base, "status") || he.EventsFolder != filepath.Join(a.LogDir, "events") || he.LogFolder != a.LogDir {
		t.Errorf("handler environment %+v", he)
	}
	if _, err := os.Stat(filepath.Join(a.LogDir, "events")); err != nil {
		t.Error(err)
	}
}

func TestRunLikeLaunchCommand(t *testing.T) {
	a, base := newAgent(t)
	a.Env = append(os.Environ(), "EXTRA=base")
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	// update.sh records its background child at once and then waits for
	// it; the timeout must leave the shell time to do that even on a busy
	// machine, since the test then checks that the child was killed.
	a.Timeouts = map[string]time.Duration{"update": 2 * time.Second}
	ctx := context.Background()
	tests := []struct {
		verb     string
		extra    map[string]string
		wantCode int
		timedOut bool
		wantOut  string
	}{
		{"install", map[string]string{"EXTRA": "override"}, 0, false,
			"path=" + base + " ver=1.2.3 seq=4 extra=override pwd=" + base},
		{"disable", nil, 7, false, "failing"},
		{"update", map[string]string{"PIDFILE": pidFile}, -1, true, ""},
	}
	for _, tc := range tests {
		t.Run(tc.verb, func(t *testing.T) {
			res, err := a.Run(ctx, base, tc.verb, 4, tc.extra)
			if err != nil {
				t.Fatal(err)
			}
			if res.ExitCode != tc.wantCode || res.TimedOut != tc.timedOut || res.Output != tc.wantOut {
				t.Errorf("result %+v, want code %d timedOut %v output %q", res, tc.wantCode, tc.timedOut, tc.wantOut)
			}
		})
	}
	// The timeout killed the whole process group, the background child too.
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid := strings.TrimSpace(string(b))
	testsupport.WaitFor(t, "child "+pid+" of the timed-out command to end", func() bool {
		st, err := os.ReadFile("/proc/" + pid + "/stat")
		return err != nil || strings.Contains(string(st), ") Z ")
	})
	if _, err := a.Run(ctx, base, "reset", 0, nil); err == nil {
		t.Error("a verb the manifest lacks ran")
	}
}

func TestParseStatusWithWaagent(t *testing.T) {
	a, base := newAgent(t)
	good, _ := json.Marshal([]map[string]any{{"version": 1.0, "timestampUTC": "2026-01-01T00:00:00Z", "status": map[string]any{
		"name": "Toy", "operation": "Enable", "status": "success", "code": 0,
		"formattedMessage": map[string]string{"lang": "en-US", "message": "fine"},
		"substatus": []map[string]any{{"name": "a", "status": "success", "code": 0,
			"formattedMessage": map[string]string{"lang": "en-US", "message": `{"x":1}`}}},
	}}})
	tests := []struct {
		name       string
		content    string
		wantStatus string
		rejected   bool
	}{
		{"valid", string(good), "success", false},
		// waagent maps an unknown status value to error, without 1012.
		{"unknown status value", strings.Replace(string(good), `"status":"success","substatus"`, `"status":"fine","substatus"`, 1), "error", false},
		{"not json", "{", "", true},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			seq := 10 + i
			res, err := a.Run(context.Background(), base, "enable", seq, map[string]string{"STATUS": tc.content})
			if err != nil || res.ExitCode != 0 {
				t.Fatalf("enable %+v %v", res, err)
			}
			st, err := ParseStatus(StatusPath(base, seq))
			if err != nil {
				t.Fatal(err)
			}
			if (st.Rejected() != nil) != tc.rejected || st.Status != tc.wantStatus {
				t.Errorf("status %+v rejected=%v, want status %q rejected %v", st, st.Rejected(), tc.wantStatus, tc.rejected)
			}
			if tc.name == "valid" && (len(st.Substatus) != 1 || st.Substatus[0].Message != `{"x":1}` || st.Operation != "Enable") {
				t.Errorf("substatus %+v", st)
			}
		})
	}
}

func TestReadManifestWithWaagent(t *testing.T) {
	_, base := newAgent(t)
	m, err := ReadManifest(base)
	if err != nil {
		t.Fatal(err)
	}
	if m.Command("enable") != "./enable.sh" || !m.ReportHeartbeat || !m.UpdateWithInstall || m.Command("reset") != "" {
		t.Errorf("manifest %+v", m)
	}
}
