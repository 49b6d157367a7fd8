package status

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/internal/testsupport"
)

type fakeSummaries struct{ conn, failed []SummaryEntry }

func (f fakeSummaries) Summaries() (conn, failed []SummaryEntry) { return f.conn, f.failed }

func goldenReporter() *Reporter {
	reg := NewRegistry()
	reg.Set(Monitor, Running, "Aggregate status written to status file: /var/log/azure-proxy-agent/status.json")
	reg.SetStatus(KeyLatch, ModuleStatus{Status: Running, Message: "Successfully attest the key and ready to use. - 2345",
		States: map[string]string{
			"secureChannelState": "WireServer Enforce -  IMDS Enforce - HostGA Enforce",
			"keyGuid":            "9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf",
			"wireServerRuleId":   "ws-rules-id",
			"imdsRuleId":         "imds-rules-id",
			"hostGARuleId":       "ws-rules-id",
			"keyIncarnationId":   "1",
		}})
	reg.Set(EbpfProgram, Running, "Started Redirector with eBPF maps - 812")
	reg.Set(ProxyListener, Running, "Started proxy listener, ready to accept request - 640")
	return &Reporter{
		Registry: reg,
		Version:  "1.0.47",
		Summaries: fakeSummaries{conn: []SummaryEntry{{UserName: "root", IP: "168.63.129.16", Port: 80,
			ProcessCmdLine: "python3 -u bin/WALinuxAgent", ResponseStatus: "200 OK", Count: 7,
			UserGroups: []string{"root"}, ProcessFullPath: "/usr/bin/python3"}}},
		ConnectionsCount: func() uint64 { return 42 },
		Now:              func() time.Time { return time.Date(2025, 4, 23, 12, 0, 0, 123456789, time.UTC) },
	}
}

func TestAggregateGolden(t *testing.T) {
	data, err := json.Marshal(goldenReporter().Aggregate())
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if err := json.Indent(&got, data, "", "  "); err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("testdata/status.golden.json")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(got.String()) != strings.TrimSpace(string(want)) {
		t.Errorf("status JSON differs from golden:\n%s", got.String())
	}
}

func TestOverall(t *testing.T) {
	states := []ModuleState{Unknown, Running, Stopped}
	for _, k := range states {
		for _, e := range states {
			for _, l := range states {
				want := Error
				if k == Running && e == Running && l == Running {
					want = Success
				}
				if got := Overall(k, e, l); got != want {
					t.Errorf("Overall(%s,%s,%s) = %s", k, e, l, got)
				}
			}
		}
	}
}

func TestTruncate(t *testing.T) {
	cases := []struct {
		in      string
		wantLen int
		dots    bool
	}{
		{"", 0, false},
		{strings.Repeat("a", 1024), 1024, false},
		{strings.Repeat("a", 1025), 1027, true},
		// A 2-byte rune straddling byte 1024 is dropped whole.
		{strings.Repeat("a", 1023) + "é" + "z", 1026, true},
	}
	for _, c := range cases {
		got := Truncate(c.in)
		if len(got) != c.wantLen || strings.HasSuffix(got, "...") != c.dots {
			t.Errorf("Truncate(len %d) = len %d %q...", len(c.in), len(got), got[max(0, len(got)-5):])
		}
	}
	reg := NewRegistry()
	reg.Set(KeyLatch, Running, strings.Repeat("x", 5000))
	if m := reg.Get(KeyLatch).Message; len(m) != 1027 {
		t.Errorf("registry message not truncated: %d bytes", len(m))
	}
}

func TestRegistryDefaultsAndChange(t *testing.T) {
	reg := NewRegistry()
	for m := Monitor; m < numModules; m++ {
		if s := reg.Get(m); s.Status != Unknown || s.Message != InitialMessage || s.States != nil {
			t.Errorf("%s initial = %+v", m, s)
		}
	}
	reg.Set(ProxyListener, Running, "up")
	select {
	case <-reg.Changed():
	default:
		t.Fatal("no change signal after Set")
	}
	reg.Set(ProxyListener, Running, "up")
	select {
	case <-reg.Changed():
		t.Fatal("change signalled for identical Set")
	default:
	}
	reg.SetState(ProxyListener, Stopped)
	if s := reg.Get(ProxyListener); s.Status != Stopped || s.Message != "up" {
		t.Errorf("SetState kept %+v", s)
	}
}

func TestEmptySummariesAreArrays(t *testing.T) {
	data, err := json.Marshal((&Reporter{}).Aggregate())
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	if !strings.Contains(s, `"proxyConnectionSummary":[]`) || !strings.Contains(s, `"failedAuthenticateSummary":[]`) {
		t.Errorf("empty summaries not []: %s", s)
	}
	if strings.Contains(s, `"states"`) {
		t.Errorf("states present without a key keeper: %s", s)
	}
	if !strings.Contains(s, `"status":"ERROR"`) {
		t.Errorf("overall not ERROR with unknown modules: %s", s)
	}
}

// The first status.json, written before the monitor module has a status
// of its own, says the monitor is RUNNING, as every later one does.
func TestFirstWriteMonitorRunning(t *testing.T) {
	w := &Writer{Reporter: &Reporter{Registry: NewRegistry()}, Path: filepath.Join(t.TempDir(), "status.json")}
	if err := w.write(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(w.Path)
	if err != nil {
		t.Fatal(err)
	}
	var a Aggregate
	if err := json.Unmarshal(data, &a); err != nil {
		t.Fatal(err)
	}
	if got := a.ProxyAgentStatus.MonitorStatus.Status; got != Running {
		t.Errorf("first write: monitorStatus %s, want %s", got, Running)
	}
}

func TestWriter(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "status")
	r := goldenReporter()
	r.Now = time.Now
	w := &Writer{Reporter: r, Path: filepath.Join(dir, "status.json"), Interval: time.Hour, MinGap: time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	read := func() Aggregate {
		t.Helper()
		data, err := os.ReadFile(w.Path)
		if err != nil {
			t.Fatal(err)
		}
		var a Aggregate
		if err := json.Unmarshal(data, &a); err != nil {
			t.Fatalf("status.json is not valid JSON: %v", err)
		}
		return a
	}
	testsupport.WaitFor(t, "status.json", func() bool { _, err := os.Stat(w.Path); return err == nil })
	fi, err := os.Stat(w.Path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o640 {
		t.Errorf("status.json mode %v, want 0640", fi.Mode().Perm())
	}
	a := read()
	if a.Timestamp == "" || a.ProxyAgentStatus.Version != "1.0.47" {
		t.Errorf("timestamp %q version %q", a.Timestamp, a.ProxyAgentStatus.Version)
	}
	if _, err := time.Parse(TimestampLayout, a.Timestamp); err != nil {
		t.Errorf("timestamp %q: %v", a.Timestamp, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "status.tmp")); !os.IsNotExist(err) {
		t.Errorf("status.tmp left behind: %v", err)
	}
	// A change is written without waiting for the hour-long interval.
	r.Registry.Set(ProxyListener, Stopped, "listener stopped")
	testsupport.WaitFor(t, "status.json with the listener stopped", func() bool {
		return read().ProxyAgentStatus.ProxyListenerStatus.Status == Stopped
	})
	if got := read().ProxyAgentStatus; got.Status != Error {
		t.Errorf("overall %s after listener stopped", got.Status)
	}
	if m := r.Registry.Get(Monitor).Message; m != "Aggregate status written to status file: "+w.Path {
		t.Errorf("monitor message %q", m)
	}
}

func TestWriterError(t *testing.T) {
	blocker := filepath.Join(t.TempDir(), "file")
	os.WriteFile(blocker, nil, 0o600)
	reg := NewRegistry()
	w := &Writer{Reporter: &Reporter{Registry: reg}, Path: filepath.Join(blocker, "status.json")}
	if err := w.WriteOnce(); err == nil {
		t.Fatal("write under a regular file succeeded")
	}
	if m := reg.Get(Monitor); m.Status != Running || !strings.HasPrefix(m.Message, "Error writing aggregate status to status file: ") {
		t.Errorf("monitor = %+v", m)
	}
}
