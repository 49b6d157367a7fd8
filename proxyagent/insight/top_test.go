package insight

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/proxyagent/audit"
	"github.com/opengpa/gpa/proxyagent/claims"
)

var topNow = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

// topRecord is one audit line: who called which service with which
// decision, at topNow plus ago.
func topRecord(t *testing.T, user string, uid uint64, svc, decision string, status int, at time.Time) []byte {
	t.Helper()
	rec := audit.Record{V: audit.SchemaVersion, Time: at, Decision: decision, Status: status, Method: "GET", Target: "/x",
		Caller:      &claims.Claims{UserName: user, UserID: uid, ProcessName: "curl", ProcessFullPath: "/usr/bin/curl"},
		Destination: audit.Destination{Service: svc}}
	b, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func appendFile(t *testing.T, path string, data ...[]byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, d := range data {
		if _, err := f.Write(d); err != nil {
			t.Fatal(err)
		}
	}
}

// lastFrame returns the text after the last clear-screen sequence.
func lastFrame(out *bytes.Buffer) string {
	s := out.String()
	return s[strings.LastIndex(s, clearScreen)+len(clearScreen):]
}

// row returns the frame's line for a service and caller user, or "".
func row(frame, svc, user string) []string {
	for _, l := range strings.Split(frame, "\n") {
		f := strings.Fields(l)
		if len(f) > 0 && f[0] == svc && strings.Contains(l, "user="+user+"(") {
			return f
		}
	}
	return nil
}

func TestTopFollowsTheLog(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, audit.AuditLogName)
	var out bytes.Buffer
	top := NewTop(TopOptions{Path: path, Out: &out})
	defer top.Close()

	// Before the agent wrote anything.
	if err := top.Refresh(topNow); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(lastFrame(&out), "(no requests yet)") {
		t.Errorf("empty view:\n%s", lastFrame(&out))
	}

	appendFile(t, path,
		topRecord(t, "nobody", 65534, "WireServer", "deny", 403, topNow.Add(-2*time.Minute)), // outside the window
		topRecord(t, "nobody", 65534, "WireServer", "deny", 403, topNow.Add(-30*time.Second)),
		topRecord(t, "nobody", 65534, "WireServer", "deny", 403, topNow.Add(-20*time.Second)),
		topRecord(t, "nobody", 65534, "IMDS", "audit-deny", 200, topNow.Add(-10*time.Second)),
		topRecord(t, "root", 0, "IMDS", "allow", 200, topNow.Add(-5*time.Second)),
		[]byte("{not json\n"),
	)
	if err := top.Refresh(topNow); err != nil {
		t.Fatal(err)
	}
	frame := lastFrame(&out)
	if !strings.Contains(frame, "last 1m0s: 4 requests, 1 allowed, 1 audit-denied (Enforce would deny), 2 denied, 0 other") {
		t.Errorf("summary line wrong:\n%s", frame)
	}
	if !strings.Contains(frame, "1 unreadable line(s) skipped") {
		t.Errorf("bad line not reported:\n%s", frame)
	}
	// SERVICE ALLOW AUDIT-DENY DENY OTHER TOTAL LAST "ago" DECISION STATUS CALLER…
	want := map[[2]string]string{
		{"WireServer", "nobody"}: "0 0 2 0 3 20s ago deny 403",
		{"IMDS", "nobody"}:       "0 1 0 0 1 10s ago audit-deny 200",
		{"IMDS", "root"}:         "1 0 0 0 1 5s ago allow 200",
	}
	for k, w := range want {
		f := row(frame, k[0], k[1])
		if f == nil || strings.Join(f[1:10], " ") != w {
			t.Errorf("%s %s row %q, want %q\n%s", k[0], k[1], f, w, frame)
		}
	}
	// The busiest caller comes first.
	if i, j := strings.Index(frame, "WireServer"), strings.Index(frame, "IMDS "); i < 0 || j < 0 || i > j {
		t.Errorf("rows not ordered by requests:\n%s", frame)
	}

	// A line the agent has only half written waits for its end.
	line := topRecord(t, "root", 0, "IMDS", "allow", 200, topNow.Add(time.Second))
	appendFile(t, path, line[:10])
	top.Refresh(topNow.Add(time.Second))
	if f := row(lastFrame(&out), "IMDS", "root"); f == nil || f[1] != "1" {
		t.Errorf("partial line counted: %q", f)
	}
	appendFile(t, path, line[10:])
	top.Refresh(topNow.Add(time.Second))
	if f := row(lastFrame(&out), "IMDS", "root"); f == nil || f[1] != "2" {
		t.Errorf("completed line not counted: %q", f)
	}

	// Rotation: the last lines reach the old file, which is renamed; the
	// agent goes on in a new file.
	appendFile(t, path, topRecord(t, "root", 0, "IMDS", "allow", 200, topNow.Add(2*time.Second)))
	if err := os.Rename(path, filepath.Join(dir, "ProxyAgent.Audit.20260501120002.jsonl")); err != nil {
		t.Fatal(err)
	}
	appendFile(t, path, topRecord(t, "root", 0, "IMDS", "allow", 200, topNow.Add(3*time.Second)))
	top.Refresh(topNow.Add(3 * time.Second))
	if f := row(lastFrame(&out), "IMDS", "root"); f == nil || f[1] != "4" {
		t.Errorf("records around a rotation: row %q, want 4 allowed", f)
	}

	// Two minutes later the window is empty; the totals stay.
	top.Refresh(topNow.Add(3 * time.Minute))
	frame = lastFrame(&out)
	if f := row(frame, "WireServer", "nobody"); f == nil || strings.Join(f[1:6], " ") != "0 0 0 0 3" {
		t.Errorf("after the window: %q\n%s", f, frame)
	}
	if !strings.Contains(frame, "last 1m0s: 0 requests") {
		t.Errorf("summary after the window:\n%s", frame)
	}
}

func TestTopRowsLimit(t *testing.T) {
	path := filepath.Join(t.TempDir(), audit.AuditLogName)
	for i, u := range []string{"a", "b", "c"} {
		appendFile(t, path, topRecord(t, u, uint64(1000+i), "IMDS", "allow", 200, topNow))
	}
	var out bytes.Buffer
	top := NewTop(TopOptions{Path: path, Out: &out, Rows: 2, NoClear: true})
	defer top.Close()
	top.Refresh(topNow)
	if strings.Contains(out.String(), clearScreen) || !strings.Contains(out.String(), "… 1 more caller(s)") {
		t.Errorf("frame:\n%s", out.String())
	}
}

// TestTopRunRefreshesOnEveryTick drives Run with an injected ticker: one
// frame per tick, and it returns when the context ends.
func TestTopRunRefreshesOnEveryTick(t *testing.T) {
	path := filepath.Join(t.TempDir(), audit.AuditLogName)
	var out bytes.Buffer
	top := NewTop(TopOptions{Path: path, Out: &out})
	defer top.Close()
	tick := make(chan time.Time)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- top.Run(ctx, tick) }()
	// A send on the unbuffered tick returns once Run took it, that is once
	// the frame of the tick before is written.
	tick <- topNow
	tick <- topNow.Add(time.Second) // the first frame is written
	appendFile(t, path, topRecord(t, "root", 0, "IMDS", "allow", 200, topNow))
	tick <- topNow.Add(2 * time.Second) // the second frame is written
	tick <- topNow.Add(3 * time.Second) // the third frame is written
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	frames := strings.Split(out.String(), clearScreen)[1:]
	if len(frames) != 4 {
		t.Fatalf("%d frames, want 4:\n%s", len(frames), out.String())
	}
	if !strings.Contains(frames[0], "12:00:00") || !strings.Contains(frames[0], "(no requests yet)") {
		t.Errorf("first frame:\n%s", frames[0])
	}
	if !strings.Contains(frames[2], "12:00:02") || row(frames[2], "IMDS", "root") == nil {
		t.Errorf("frame after the record:\n%s", frames[2])
	}
}

func TestRunAuditTopUsage(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := RunAudit([]string{"top", "--rows", "x"}, &stdout, &stderr); code != ExitBadInput {
		t.Errorf("bad flag: exit %d, want %d", code, ExitBadInput)
	}
	for _, w := range []string{"100000h", "2h", "500ms"} {
		stderr.Reset()
		if code := RunAudit([]string{"top", "--window", w}, &stdout, &stderr); code != ExitBadInput || !strings.Contains(stderr.String(), "--window") {
			t.Errorf("--window %s: exit %d, want %d and a message; stderr %q", w, code, ExitBadInput, stderr.String())
		}
	}
	stderr.Reset()
	RunAudit([]string{"--help"}, &stdout, &stderr)
	if !strings.Contains(stderr.String(), "top") {
		t.Errorf("help does not list top:\n%s", stderr.String())
	}
}

// TestTopLongWindow: an hour's window counts what it covers, in a bounded
// number of slots per caller.
func TestTopLongWindow(t *testing.T) {
	path := filepath.Join(t.TempDir(), audit.AuditLogName)
	var out bytes.Buffer
	top := NewTop(TopOptions{Path: path, Window: time.Hour, Out: &out})
	defer top.Close()
	appendFile(t, path,
		topRecord(t, "root", 0, "IMDS", "allow", 200, topNow.Add(-2*time.Hour)), // outside
		topRecord(t, "root", 0, "IMDS", "allow", 200, topNow.Add(-50*time.Minute)),
		topRecord(t, "root", 0, "IMDS", "allow", 200, topNow.Add(-30*time.Minute)),
		topRecord(t, "root", 0, "IMDS", "deny", 403, topNow.Add(-time.Second)),
	)
	if err := top.Refresh(topNow); err != nil {
		t.Fatal(err)
	}
	if frame := lastFrame(&out); !strings.Contains(frame, "last 1h0m0s: 3 requests, 2 allowed, 0 audit-denied (Enforce would deny), 1 denied") {
		t.Errorf("summary:\n%s", frame)
	}
	for _, r := range top.rows {
		if len(r.slots) > maxTopSlots {
			t.Errorf("a row keeps %d slots, want at most %d", len(r.slots), maxTopSlots)
		}
	}
}
