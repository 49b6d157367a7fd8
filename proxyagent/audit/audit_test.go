package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opengpa/gpa/internal/testsupport"
	"github.com/opengpa/gpa/proxyagent/authz"
	"github.com/opengpa/gpa/proxyagent/claims"
	"github.com/opengpa/gpa/proxyagent/logfile"
	"github.com/opengpa/gpa/proxyagent/msp"
)

var (
	t0     = time.Date(2025, 4, 23, 12, 0, 0, 123456789, time.UTC)
	client = netip.MustParseAddrPort("127.0.0.1:51234")
	ws     = netip.MustParseAddrPort("168.63.129.16:80")
	imdsEP = netip.MustParseAddrPort("169.254.169.254:80")
)

func rootClaims() *claims.Claims {
	return &claims.Claims{UserID: 0, UserName: "root", UserGroups: []string{"root"}, ProcessID: 42,
		ProcessName: "python3", ProcessFullPath: "/usr/bin/python3", ProcessCmdLine: "python3 -u agent.py",
		RunAsElevated: true, ClientIP: "127.0.0.1", ClientPort: 51234,
		Ancestry: []claims.Process{{PID: 1, Exe: "/usr/lib/systemd/systemd", CmdLine: "/sbin/init"}}}
}

func allowEvent() Event {
	return Event{Time: t0, HTTPID: 7, TCPID: 3, Caller: rootClaims(), Client: client, Dest: ws, Service: msp.WireServer,
		Method: "GET", Target: "/machine?comp=goalstate", Authorized: true,
		Decision: authz.Decision{Result: authz.Allow, Service: msp.WireServer, Mode: msp.ModeEnforce,
			RuleID: "r1", Epoch: 5, Privilege: "goalstate", Identity: "root-py", Reason: "privilege matched"},
		Status: 200, Latency: 12345 * time.Microsecond}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestConnectionLogGolden(t *testing.T) {
	dir := t.TempDir()
	r, err := New(Options{Dir: dir, Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	r.Record(allowEvent())
	ev := allowEvent()
	ev.HTTPID = 8
	r.Record(ev) // same key, same bucket: no summary line
	r.ConnLog(logfile.Info, 0, 3, "connection closed")
	r.ConnLog(logfile.Debug, 0, 3, "line\ninjected")
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	summary := `{"id":7,"method":"GET","url":"/machine?comp=goalstate","clientIp":"127.0.0.1","clientPort":51234,` +
		`"ip":"168.63.129.16","port":80,"userId":0,"userName":"root","userGroups":["root"],` +
		`"processFullPath":"/usr/bin/python3","processCmdLine":"python3 -u agent.py","runAsElevated":true,` +
		`"responseStatus":"200 OK","elapsedTime":12,"errorDetails":""}`
	want := "2025-04-23T12:00:00.123 [INFO]    " + summary + "\n" +
		"2025-04-23T12:00:00.123 [INFO]    7[3] - GET /machine?comp=goalstate to WireServer 168.63.129.16:80 - 200 OK - decision allow (privilege matched) - 12 ms\n" +
		"2025-04-23T12:00:00.123 [INFO]    7[3] - ------------------------ ConnectionLogger is dropped ------------------------\n" +
		"2025-04-23T12:00:00.123 [INFO]    8[3] - GET /machine?comp=goalstate to WireServer 168.63.129.16:80 - 200 OK - decision allow (privilege matched) - 12 ms\n" +
		"2025-04-23T12:00:00.123 [INFO]    8[3] - ------------------------ ConnectionLogger is dropped ------------------------\n" +
		"2025-04-23T12:00:00.123 [INFO]    0[3] - connection closed\n" +
		"2025-04-23T12:00:00.123 [DEBUG]   0[3] - line\\ninjected\n"
	if got := readFile(t, filepath.Join(dir, ConnectionLogName)); got != want {
		t.Errorf("connection log\n got:\n%s\nwant:\n%s", got, want)
	}
}

// A summary line in the connection log is the JSON upstream's serde_json
// writes: '&', '<' and '>' as they are, not \u0026 and the like.
func TestSummaryLineAsSerde(t *testing.T) {
	dir := t.TempDir()
	r, err := New(Options{Dir: dir, Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	ev := allowEvent()
	ev.Target = "/machine?comp=goalstate&x=<1>"
	r.Record(ev)
	r.Close()
	if got := readFile(t, filepath.Join(dir, ConnectionLogName)); !strings.Contains(got, `"url":"/machine?comp=goalstate&x=<1>"`) {
		t.Errorf("summary line:\n%s", got)
	}
}

// A denied request's error names the caller's claims as serde_json
// writes them: '&' and '<' kept, no ancestry.
func TestBlockErrorAsSerde(t *testing.T) {
	c := &claims.Claims{UserID: 1000, UserName: "alice", ProcessCmdLine: "sh -c a&&b<c",
		Ancestry: []claims.Process{{PID: 1, Exe: "/sbin/init"}}}
	got := BlockError(c)
	if !strings.HasPrefix(got, BlockPrefix) || !strings.Contains(got, `"processCmdLine":"sh -c a&&b<c"`) ||
		strings.Contains(got, "ancestry") || !strings.Contains(got, `"userGroups":[]`) {
		t.Errorf("BlockError = %s", got)
	}
}

// A request's lines reach the files within BatchDelay+FlushInterval of
// the request, without Close, and not before FlushInterval (synctest: the
// bubble's clock).
func TestLinesReachFilesPromptly(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		r, err := New(Options{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		r.Record(allowEvent())
		time.Sleep(DefaultBatchDelay)
		synctest.Wait()
		if got := readFile(t, filepath.Join(dir, ConnectionLogName)); got != "" {
			t.Fatalf("flushed before FlushInterval: %q", got)
		}
		time.Sleep(DefaultFlushInterval)
		synctest.Wait()
		for _, name := range []string{ConnectionLogName, AuditLogName} {
			if got := readFile(t, filepath.Join(dir, name)); !strings.Contains(got, "/machine?comp=goalstate") {
				t.Errorf("%s after %v: %q", name, DefaultBatchDelay+DefaultFlushInterval, got)
			}
		}
	})
}

func TestConnLogLevelFilter(t *testing.T) {
	dir := t.TempDir()
	r, err := New(Options{Dir: dir, ConnLogLevel: logfile.Info, Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	r.ConnLog(logfile.Debug, 0, 1, "hidden")
	r.ConnLog(logfile.Error, 0, 1, "shown")
	r.Close()
	if got := readFile(t, filepath.Join(dir, ConnectionLogName)); got != "2025-04-23T12:00:00.123 [ERROR]   0[1] - shown\n" {
		t.Errorf("got %q", got)
	}
}

func TestAuditRecordGolden(t *testing.T) {
	ev := allowEvent()
	rec := recordOf(&ev)
	rec.Seq = 1
	b, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"v":1,"time":"2025-04-23T12:00:00.123456789Z","seq":1,"httpId":7,"tcpId":3,` +
		`"caller":{"userId":0,"userName":"root","userGroups":["root"],"processId":42,"processName":"python3",` +
		`"processFullPath":"/usr/bin/python3","processCmdLine":"python3 -u agent.py","runAsElevated":true,` +
		`"clientIp":"127.0.0.1","clientPort":51234,"ancestry":[{"pid":1,"exe":"/usr/lib/systemd/systemd","cmdLine":"/sbin/init"}]},` +
		`"client":"127.0.0.1:51234","destination":{"service":"WireServer","addr":"168.63.129.16:80"},` +
		`"method":"GET","target":"/machine?comp=goalstate","decision":"allow","mode":"enforce","ruleId":"r1","epoch":5,` +
		`"privilege":"goalstate","identity":"root-py","reason":"privilege matched","status":200,"error":"","latencyMs":12.345,"prev":""}`
	if string(b) != want {
		t.Errorf("record\n got %s\nwant %s", b, want)
	}

	// Not authorized, no identity: decision none, caller null.
	ev = Event{Time: t0, HTTPID: 1, Client: client, Method: "GET", Target: "/x", Status: 421, Error: "no original destination"}
	rec = recordOf(&ev)
	b, _ = json.Marshal(rec)
	for _, frag := range []string{`"caller":null`, `"decision":"none"`, `"destination":{"service":"","addr":""}`, `"mode":""`} {
		if !strings.Contains(string(b), frag) {
			t.Errorf("record %s lacks %s", b, frag)
		}
	}
}

func TestRoute(t *testing.T) {
	withDecision := func(res authz.Result, status int, errText string) Event {
		ev := allowEvent()
		ev.Decision.Result, ev.Status, ev.Error = res, status, errText
		return ev
	}
	blockJSON := `Block unauthorized request: {"userId":0,"userName":"root","userGroups":["root"],"processId":42,` +
		`"processName":"python3","processFullPath":"/usr/bin/python3","processCmdLine":"python3 -u agent.py",` +
		`"runAsElevated":true,"clientIp":"127.0.0.1","clientPort":51234}`
	noClaims := Event{HTTPID: 1, Client: client, Dest: imdsEP, Service: msp.IMDS, Method: "GET", Target: "/metadata", Status: 421, Error: "no claims"}
	direct := Event{HTTPID: 2, Client: client, Method: "GET", Target: "/x", Status: 421, Error: "no original destination"}
	notAllowedMethod := allowEvent()
	notAllowedMethod.Authorized, notAllowedMethod.Decision, notAllowedMethod.Status = false, authz.Decision{}, 405
	tooLarge := allowEvent()
	tooLarge.HTTPID, tooLarge.Authorized, tooLarge.Decision, tooLarge.Status, tooLarge.BeforeFlow = 0, false, authz.Decision{}, 413, true
	status := allowEvent() // the extension's GET /gpa-aggregated-status
	status.Target, status.Authorized, status.Decision, status.Local = "/gpa-aggregated-status", false, authz.Decision{}, true
	refused := status // a non-root caller's
	refused.Status = 403

	type out struct{ status, err, ip, user string }
	tests := []struct {
		name           string
		ev             Event
		normal, failed *out
	}{
		{"allow", withDecision(authz.Allow, 200, ""), &out{"200 OK", "", "168.63.129.16", "root"}, nil},
		{"allow upstream error", withDecision(authz.Allow, 503, "send failed"), &out{"503 Service Unavailable", "send failed", "168.63.129.16", "root"}, nil},
		{"audit deny", withDecision(authz.AllowAudited, 200, ""),
			&out{"200 OK", "", "168.63.129.16", "root"}, &out{"403 Forbidden", "Authorize failed", "168.63.129.16", "root"}},
		{"deny", withDecision(authz.Deny, 403, ""),
			&out{"403 Forbidden", blockJSON, "168.63.129.16", "root"}, &out{"403 Forbidden", "Authorize failed", "168.63.129.16", "root"}},
		{"deny, client gone before the answer", withDecision(authz.Deny, 0, ""),
			&out{"403 Forbidden", blockJSON, "168.63.129.16", "root"}, &out{"403 Forbidden", "Authorize failed", "168.63.129.16", "root"}},
		{"deny with proxy's text", withDecision(authz.Deny, 403, "Block unauthorized request: {}"),
			&out{"403 Forbidden", "Block unauthorized request: {}", "168.63.129.16", "root"}, &out{"403 Forbidden", "Authorize failed", "168.63.129.16", "root"}},
		{"no claims", noClaims, nil, &out{"421 Misdirected Request", "no claims", "169.254.169.254", "empty"}},
		{"direct connection", direct, &out{"421 Misdirected Request", "no original destination", "None", "empty"}, nil},
		{"405 before authorization", notAllowedMethod, &out{"405 Method Not Allowed", "", "168.63.129.16", "root"}, nil},
		{"413 before the request flow", tooLarge, nil, nil},
		{"local endpoint", status, nil, nil},
		{"local endpoint refused", refused, nil, nil},
	}
	check := func(t *testing.T, which string, got *Summary, want *out) {
		t.Helper()
		switch {
		case want == nil && got != nil:
			t.Errorf("%s entry %+v, want none", which, *got)
		case want != nil && got == nil:
			t.Errorf("%s entry missing", which)
		case want != nil:
			if got.ResponseStatus != want.status || got.ErrorDetails != want.err || got.IP != want.ip || got.UserName != want.user {
				t.Errorf("%s entry %q %q %q %q, want %+v", which, got.ResponseStatus, got.ErrorDetails, got.IP, got.UserName, *want)
			}
		}
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n, f := route(&tc.ev)
			check(t, "normal", n, tc.normal)
			check(t, "failed", f, tc.failed)
			// The tables a Record counts in are the ones route fills.
			k := count(&tc.ev)
			if k.normal != (n != nil) || k.failed != (f != nil) ||
				(n != nil && ResponseStatus(k.normalStatus) != n.ResponseStatus) ||
				(f != nil && ResponseStatus(k.failedStatus) != f.ResponseStatus) {
				t.Errorf("count %+v disagrees with route", k)
			}
		})
	}
}

func TestRouteTruncatesErrorDetails(t *testing.T) {
	ev := allowEvent()
	ev.Status, ev.Error = 502, strings.Repeat("é", 3000) // 6000 bytes
	n, _ := route(&ev)
	if len(n.ErrorDetails) > MaxErrorDetails || !strings.HasPrefix(ev.Error, n.ErrorDetails) || len(n.ErrorDetails) < MaxErrorDetails-1 {
		t.Errorf("errorDetails %d bytes", len(n.ErrorDetails))
	}
}

func TestSummaryBuckets(t *testing.T) {
	clk := testsupport.NewClock(t0)
	var mu sync.Mutex
	var opened []Summary
	r, err := New(Options{Now: clk.Now, OnNewSummary: func(s Summary, failed bool) {
		mu.Lock()
		opened = append(opened, s)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	count := func() uint64 {
		conn, _ := r.Summaries()
		if len(conn) == 0 {
			return 0
		}
		if len(conn) != 1 {
			t.Fatalf("%d keys, want 1", len(conn))
		}
		return conn[0].Count
	}
	steps := []struct {
		at     time.Duration
		add    bool
		count  uint64
		opened int
	}{
		{0, true, 1, 1},
		{time.Minute, true, 2, 1},
		{14*time.Minute + 59*time.Second, true, 3, 1},
		{15 * time.Minute, true, 4, 2}, // 15 min after the first bucket started
		{30 * time.Minute, true, 5, 3},
		{4 * time.Hour, false, 2, 3}, // first bucket (3 adds) is 4 h old
		{4*time.Hour + 15*time.Minute, false, 1, 3},
		{4*time.Hour + 30*time.Minute, false, 0, 3}, // key gone
		{5 * time.Hour, true, 1, 4},                 // a new key again
	}
	for _, s := range steps {
		clk.Set(t0.Add(s.at))
		if s.add {
			r.Record(allowEvent())
		}
		if got := count(); got != s.count {
			t.Errorf("at +%v count %d, want %d", s.at, got, s.count)
		}
	}
	r.Close()
	if len(opened) != 4 {
		t.Errorf("%d new-bucket summaries, want 4", len(opened))
	}
	entry := func() SummaryEntry {
		conn, _ := r.Summaries()
		return conn[0]
	}()
	want := SummaryEntry{UserName: "root", IP: "168.63.129.16", Port: 80, ProcessCmdLine: "python3 -u agent.py",
		ResponseStatus: "200 OK", Count: 1, UserGroups: []string{"root"}, ProcessFullPath: "/usr/bin/python3"}
	if !reflect.DeepEqual(entry, want) {
		t.Errorf("entry %+v, want %+v", entry, want)
	}
}

func TestSummaryStatusShape(t *testing.T) {
	r, _ := New(Options{Now: func() time.Time { return t0 }})
	defer r.Close()
	ev := allowEvent()
	ev.Decision.Result, ev.Status = authz.Deny, 403
	r.Record(ev)
	r.Record(Event{Client: client, Method: "GET", Target: "/", Status: 421})
	conn, failed := r.Summaries()
	b, _ := json.Marshal(map[string]any{"proxyConnectionSummary": conn, "failedAuthenticateSummary": failed})
	want := `{"failedAuthenticateSummary":[{"userName":"root","ip":"168.63.129.16","port":80,"processCmdLine":"python3 -u agent.py",` +
		`"responseStatus":"403 Forbidden","count":1,"userGroups":["root"],"processFullPath":"/usr/bin/python3"}],` +
		`"proxyConnectionSummary":[{"userName":"empty","ip":"None","port":0,"processCmdLine":"empty",` +
		`"responseStatus":"421 Misdirected Request","count":1,"userGroups":[],"processFullPath":"empty"},` +
		`{"userName":"root","ip":"168.63.129.16","port":80,"processCmdLine":"python3 -u agent.py",` +
		`"responseStatus":"403 Forbidden","count":1,"userGroups":["root"],"processFullPath":"/usr/bin/python3"}]}`
	if string(b) != want {
		t.Errorf("summaries\n got %s\nwant %s", b, want)
	}
}

func TestSummaryTableBounded(t *testing.T) {
	r, _ := New(Options{MaxSummaryKeys: 3, Now: func() time.Time { return t0 }})
	defer r.Close()
	for i := 0; i < 10; i++ {
		ev := allowEvent()
		ev.Caller = rootClaims()
		ev.Caller.ProcessCmdLine = fmt.Sprint("cmd ", i)
		r.Record(ev)
	}
	conn, _ := r.Summaries()
	if len(conn) != 3 {
		t.Errorf("%d keys, want 3", len(conn))
	}
}

// readAll reads every record of the audit log at dir (rotated files
// first) through ReadLog.
func readAll(t *testing.T, dir string) ([]Record, error) {
	t.Helper()
	path := filepath.Join(dir, AuditLogName)
	files, err := logfile.RotatedFiles(path)
	if err != nil {
		t.Fatal(err)
	}
	var readers []io.Reader
	for _, f := range append(files, path) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		readers = append(readers, bytes.NewReader(b))
	}
	var recs []Record
	err = ReadLog(io.MultiReader(readers...), func(_ int, rec Record) error {
		recs = append(recs, rec)
		return nil
	})
	return recs, err
}

// The writer encodes a caller's claims once per *claims.Claims and an
// address once while it repeats; a record must still carry its own
// caller and addresses when they change, alternate or are missing.
func TestAuditLogReusedCallerAndAddresses(t *testing.T) {
	dir := t.TempDir()
	r, err := New(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	shared, other := rootClaims(), rootClaims()
	other.ProcessCmdLine, other.UserID = "other --flag", 1000
	otherClient := netip.MustParseAddrPort("10.1.0.9:50001")
	imds := netip.MustParseAddrPort("169.254.169.254:80")
	var sent []Event
	for _, c := range []struct {
		caller       *claims.Claims
		client, dest netip.AddrPort
	}{
		{shared, client, ws}, {shared, client, ws}, {other, otherClient, imds}, {shared, client, ws},
		{nil, otherClient, netip.AddrPort{}}, {shared, netip.AddrPort{}, ws}, {other, client, imds},
	} {
		ev := allowEvent()
		ev.Caller, ev.Client, ev.Dest = c.caller, c.client, c.dest
		sent = append(sent, ev)
		r.Record(ev)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	recs, err := readAll(t, dir)
	if err != nil || len(recs) != len(sent) {
		t.Fatalf("%d records, %v; want %d", len(recs), err, len(sent))
	}
	for i, rec := range recs {
		want := recordOf(&sent[i])
		want.Seq, want.Prev = uint64(i+1), rec.Prev
		if !reflect.DeepEqual(rec, want) {
			t.Fatalf("record %d\n got %+v\nwant %+v", i, rec, want)
		}
	}
}

func TestAuditLogRoundTripAndRotation(t *testing.T) {
	dir := t.TempDir()
	r, err := New(Options{Dir: dir, MaxFileSize: 4096, MaxFiles: 50})
	if err != nil {
		t.Fatal(err)
	}
	var sent []Event
	for i := 0; i < 40; i++ {
		ev := allowEvent()
		ev.HTTPID = uint64(i + 1)
		ev.Caller.ProcessCmdLine = "evil\n2025-01-01T00:00:00.000 [INFO]    forged \"quote\" \x00"
		sent = append(sent, ev)
		r.Record(ev)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	files, _ := logfile.RotatedFiles(filepath.Join(dir, AuditLogName))
	if len(files) < 2 {
		t.Fatalf("%d rotated audit files, want several", len(files))
	}
	recs, err := readAll(t, dir)
	if err != nil {
		t.Fatalf("ReadLog: %v", err)
	}
	if len(recs) != len(sent) {
		t.Fatalf("%d records, want %d", len(recs), len(sent))
	}
	for i, rec := range recs {
		want := recordOf(&sent[i])
		want.Seq, want.Prev = uint64(i+1), rec.Prev
		if !reflect.DeepEqual(rec, want) {
			t.Fatalf("record %d\n got %+v\nwant %+v", i, rec, want)
		}
	}
	// The connection log holds one line per event plus one summary line,
	// and each event's batch ends with upstream's dropped line, however
	// hostile the command line.
	connPath := filepath.Join(dir, ConnectionLogName)
	connFiles, _ := logfile.RotatedFiles(connPath)
	lines := 0
	for _, f := range append(connFiles, connPath) {
		for _, l := range strings.SplitAfter(readFile(t, f), "\n") {
			if l == "" {
				continue
			}
			if !strings.HasSuffix(l, "\n") || l[23:25] != " [" {
				t.Errorf("bad connection log line %q", l)
			}
			lines++
		}
	}
	if lines != 81 {
		t.Errorf("connection log has %d lines, want 81", lines)
	}
}

func TestAuditChainSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	for run := 0; run < 2; run++ {
		r, err := New(Options{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		r.Record(allowEvent())
		r.Record(allowEvent())
		r.Close()
	}
	recs, err := readAll(t, dir)
	if err != nil {
		t.Fatalf("ReadLog: %v", err)
	}
	var seqs []uint64
	for _, r := range recs {
		seqs = append(seqs, r.Seq)
	}
	if fmt.Sprint(seqs) != "[1 2 1 2]" {
		t.Errorf("seqs %v", seqs)
	}
}

func TestReadLogReportsBadLines(t *testing.T) {
	var buf bytes.Buffer
	prev := ""
	write := func(rec Record) {
		rec.V, rec.Prev = SchemaVersion, prev
		b, _ := json.Marshal(rec)
		prev = chainHash(b)
		buf.Write(b)
		buf.WriteByte('\n')
	}
	write(Record{Seq: 1})
	write(Record{Seq: 2})
	buf.WriteString("garbage{\n") // line 3
	prev = chainHash([]byte("garbage{"))
	write(Record{Seq: 4}) // line 4: prev is the hash of the garbage line, chain intact
	// Line 5: a record edited after writing (chain broken for line 6).
	write(Record{Seq: 5})
	edited := bytes.Replace(buf.Bytes(), []byte(`"seq":5`), []byte(`"seq":9`), 1)
	buf.Reset()
	buf.Write(edited)
	write(Record{Seq: 6})                        // line 6
	buf.WriteString(`{"v":2,"seq":7}` + "\n")    // line 7
	buf.WriteString(`{"v":1,"seq":8,"time":"20`) // line 8, truncated

	var seqs []uint64
	var lines []int
	err := ReadLog(&buf, func(n int, rec Record) error {
		seqs, lines = append(seqs, rec.Seq), append(lines, n)
		return nil
	})
	var ce *CorruptError
	if !errors.As(err, &ce) || !IsCorrupt(err) {
		t.Fatalf("err = %v, want *CorruptError", err)
	}
	if fmt.Sprint(seqs) != "[1 2 4 9 6]" || fmt.Sprint(lines) != "[1 2 4 5 6]" {
		t.Errorf("records seq %v on lines %v", seqs, lines)
	}
	var got []string
	for _, le := range ce.Lines {
		got = append(got, fmt.Sprintf("%d:%s", le.Line, strings.SplitN(le.Reason, " ", 2)[0]))
	}
	if want := "[3:invalid 6:hash 7:unsupported 8:truncated]"; fmt.Sprint(got) != want || ce.Count != 4 {
		t.Errorf("problems %v (count %d), want %s", got, ce.Count, want)
	}

	// fn's error stops reading and is returned as is.
	stop := errors.New("stop")
	if err := ReadLog(strings.NewReader(`{"v":1}`+"\n"), func(int, Record) error { return stop }); err != stop {
		t.Errorf("err = %v, want fn's error", err)
	}
	// An empty log is fine.
	if err := ReadLog(strings.NewReader(""), func(int, Record) error { return nil }); err != nil {
		t.Errorf("empty log: %v", err)
	}
	// A very long line is reported, and reading goes on.
	long := `{"v":1,"error":"` + strings.Repeat("a", MaxLineBytes) + `"}` + "\n" + `{"v":1,"seq":2}` + "\n"
	n := 0
	err = ReadLog(strings.NewReader(long), func(int, Record) error { n++; return nil })
	if !IsCorrupt(err) || n != 1 {
		t.Errorf("long line: err %v, %d records", err, n)
	}
}

func TestQueueFullDropsAndCounts(t *testing.T) {
	dir := t.TempDir()
	release := make(chan struct{})
	var once sync.Once
	r, err := New(Options{Dir: dir, QueueSize: 2, Logger: slog.New(slog.DiscardHandler), OnNewSummary: func(Summary, bool) {
		once.Do(func() { <-release }) // stall the writer on the first event
	}})
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	for i := 0; i < n; i++ {
		r.Record(allowEvent()) // never blocks
	}
	dropped := r.Dropped()
	if dropped == 0 {
		t.Fatal("no events dropped with a stalled writer and a queue of 2")
	}
	close(release)
	testsupport.WaitFor(t, "the writer to drain the queue", func() bool { return r.queued() == 0 })
	r.Record(allowEvent())
	r.Close()
	recs, err := readAll(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	var inFile uint64
	for _, rec := range recs {
		inFile += rec.Dropped
	}
	if uint64(len(recs))+r.Dropped() != n+1 || inFile != r.Dropped() {
		t.Errorf("%d records + %d dropped (%d reported in file), want %d events", len(recs), r.Dropped(), inFile, n+1)
	}
	conn, _ := r.Summaries()
	if conn[0].Count != n+1 {
		t.Errorf("summary count %d, want %d (drops do not affect summaries)", conn[0].Count, n+1)
	}
}

// A record dropped from a full queue still delivers the summaries whose
// buckets it opened (their one telemetry event per key and bucket).
func TestQueueFullKeepsNewSummaries(t *testing.T) {
	release := make(chan struct{})
	var calls atomic.Int32
	var mu sync.Mutex
	seen := map[string]bool{}
	r, err := New(Options{QueueSize: 2, Logger: slog.New(slog.DiscardHandler), Now: func() time.Time { return t0 },
		OnNewSummary: func(s Summary, _ bool) {
			if calls.Add(1) == 1 {
				<-release // stall the writer on the first
			}
			mu.Lock()
			seen[s.ResponseStatus] = true
			mu.Unlock()
		}})
	if err != nil {
		t.Fatal(err)
	}
	codes := []int{200, 201, 202, 204, 400, 404, 500, 502, 503, 504}
	for i, code := range codes {
		ev := allowEvent()
		ev.Status = code // a key of its own
		r.Record(ev)
		if i == 0 {
			testsupport.WaitFor(t, "the writer to stall in the hook", func() bool { return calls.Load() == 1 })
		}
	}
	if r.Dropped() == 0 {
		t.Fatal("nothing dropped with a stalled writer and a queue of 2")
	}
	close(release)
	r.Close()
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != len(codes) {
		t.Errorf("%d of %d new summaries delivered: %v", len(seen), len(codes), seen)
	}
}

func TestRecorderConcurrent(t *testing.T) {
	dir := t.TempDir()
	r, err := New(Options{Dir: dir, FlushInterval: time.Millisecond, MaxFileSize: 64 << 10, MaxFiles: 100, QueueSize: 1 << 14})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	const workers, each = 4, 200
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				ev := allowEvent()
				ev.HTTPID = uint64(w*each + i)
				if i%3 == 0 {
					ev.Decision.Result = authz.Deny
				}
				r.Record(ev)
				r.ConnLog(logfile.Trace, ev.HTTPID, 1, "trace")
				if i%50 == 0 {
					r.Summaries()
				}
			}
		}()
	}
	wg.Wait()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r.Record(allowEvent()) // after Close: no panic
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	recs, err := readAll(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	if uint64(len(recs))+r.Dropped() != workers*each {
		t.Errorf("%d records + %d dropped, want %d", len(recs), r.Dropped(), workers*each)
	}
}

func BenchmarkRecord(b *testing.B) {
	r, err := New(Options{Dir: b.TempDir(), QueueSize: 1 << 16})
	if err != nil {
		b.Fatal(err)
	}
	ev := allowEvent()
	b.ReportAllocs()
	for b.Loop() {
		r.Record(ev)
	}
	b.StopTimer()
	r.Close()
	b.ReportMetric(float64(r.Dropped()), "dropped")
}

// BenchmarkWrite measures the writer goroutine's work per event (format
// both lines, hash, buffer).
func BenchmarkWrite(b *testing.B) {
	r, err := New(Options{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	j := job{ev: allowEvent(), hasEvent: true}
	b.ReportAllocs()
	for b.Loop() {
		r.handle(&j)
	}
}

// The writer goroutine takes queued events in batches: once BatchSize
// are queued, or BatchDelay after the first, not only at Close. In a
// synctest bubble, synctest.Wait returns when the writer is idle, and the
// bubble's clock runs the delays.
func TestRecorderBatching(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		newRec := func(delay time.Duration) *Recorder {
			r, err := New(Options{FlushInterval: time.Hour, BatchDelay: delay, BatchSize: 4,
				Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { r.Close() })
			return r
		}

		r := newRec(time.Hour)
		for i := 0; i < 3; i++ {
			r.Record(allowEvent())
		}
		time.Sleep(time.Hour - time.Second)
		synctest.Wait()
		if n := r.queued(); n != 3 {
			t.Fatalf("%d queued before the batch was full, want 3 (writer woke early)", n)
		}
		r.Record(allowEvent())
		synctest.Wait()
		if n := r.queued(); n != 0 {
			t.Fatalf("full batch not taken by the writer: %d queued", n)
		}

		r = newRec(10 * time.Millisecond)
		r.Record(allowEvent())
		time.Sleep(10*time.Millisecond - time.Nanosecond)
		synctest.Wait()
		if n := r.queued(); n != 1 {
			t.Fatalf("%d queued before BatchDelay, want 1", n)
		}
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		if n := r.queued(); n != 0 {
			t.Fatal("a single event was not taken after BatchDelay")
		}
	})
}

// recordOf is the record the Recorder makes of ev, before Seq, Prev and
// Dropped.
func recordOf(ev *Event) Record { return newRecord(ev, addrText(ev.Client), addrText(ev.Dest)) }

// chunkWriter records each Write.
type chunkWriter struct {
	mu     sync.Mutex
	writes []string
}

func (w *chunkWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes = append(w.writes, string(p))
	return len(p), nil
}

func (w *chunkWriter) String() string { return strings.Join(w.writes, "") }

// Connection-log lines are mirrored as upstream's connection logger
// mirrors them (§4.8), whatever fileLogLevel lets into the file: to
// stdout (errors to stderr) at the system level, with the file's header;
// to telemetry at the events level, without it. A request's line is
// mirrored at upstream's level for it: Info when Audit mode lets a denied
// request through, Warn when the agent failed it, Trace when it was
// served or refused (upstream has only summaries for those). Summary
// lines go to the system log only, the closing "is dropped" lines
// nowhere, and a caller's lines beyond its record budget nowhere.
func TestMirror(t *testing.T) {
	type line struct {
		level logfile.Level
		msg   string
	}
	run := func(outLevel, eventLevel logfile.Level) (out, errOut string, events []line, file string) {
		dir := t.TempDir()
		var o, e chunkWriter
		r, err := New(Options{Dir: dir, ConnLogLevel: logfile.Error, Now: func() time.Time { return t0 },
			CallerBurst: 1, CallerRate: 1,
			Mirror: Mirror{Out: &o, Err: &e, OutLevel: outLevel,
				Event: func(l logfile.Level, at time.Time, msg []byte) {
					if !at.Equal(t0) {
						t.Errorf("event time %v", at)
					}
					events = append(events, line{l, string(msg)})
				}, EventLevel: eventLevel}})
		if err != nil {
			t.Fatal(err)
		}
		r.Record(allowEvent()) // 7: served
		audited := allowEvent()
		audited.HTTPID, audited.Decision.Result, audited.Decision.Mode = 8, authz.AllowAudited, msp.ModeAudit
		r.Record(audited)
		deny := allowEvent()
		deny.HTTPID, deny.Status, deny.Decision.Result = 9, 403, authz.Deny
		r.Record(deny)
		failed := allowEvent()
		failed.HTTPID, failed.Status, failed.Error = 10, 502, "upstream: connection refused"
		r.Record(failed)
		alice := audited
		alice.HTTPID, alice.Caller = 11, &claims.Claims{UserID: 1000, UserName: "alice"}
		r.Record(alice)
		alice.HTTPID = 12
		r.Record(alice) // beyond alice's budget of 1
		r.ConnLog(logfile.Error, 0, 3, "failed\nbadly")
		r.ConnLog(logfile.Debug, 0, 3, "debug line")
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		return o.String(), e.String(), events, readFile(t, filepath.Join(dir, ConnectionLogName))
	}
	const hdr = "2025-04-23T12:00:00.123 "
	const req = " - GET /machine?comp=goalstate to WireServer 168.63.129.16:80 - "
	has := func(text, want string) bool {
		return strings.HasPrefix(text, want) || strings.Contains(text, "\n"+want)
	}

	out, errOut, events, file := run(logfile.Info, logfile.Warn)
	for _, want := range []string{
		hdr + "[INFO]    {\"id\":7,", // root's summary
		hdr + "[INFO]    8[3]" + req + "200 OK - decision audit-deny",
		hdr + "[WARN]    10[3]" + req + "502 Bad Gateway",
		hdr + "[INFO]    11[3]" + req + "200 OK - decision audit-deny",
	} {
		if !has(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	for _, absent := range []string{"7[3]", "9[3]", "12[3]", LoggerDropped, "badly", "debug line"} {
		if strings.Contains(out, absent) {
			t.Errorf("stdout has %q:\n%s", absent, out)
		}
	}
	if errOut != hdr+"[ERROR]   0[3] - failed\\nbadly\n" {
		t.Errorf("stderr %q", errOut)
	}
	if len(events) != 2 || events[0].level != logfile.Warn || !strings.HasPrefix(events[0].msg, "10[3]"+req+"502 Bad Gateway") ||
		events[1] != (line{logfile.Error, "0[3] - failed\nbadly"}) {
		t.Errorf("events %v, want the 502's WARN line and the ERROR line", events)
	}
	// fileLogLevel Error kept every request line out of the file.
	if file != hdr+"[ERROR]   0[3] - failed\\nbadly\n" {
		t.Errorf("connection log %q", file)
	}

	// At Trace the requests served and refused are mirrored too, and the
	// debug line.
	out, _, events, _ = run(logfile.Trace, logfile.Trace)
	for _, want := range []string{hdr + "[TRACE]   7[3]" + req + "200 OK", hdr + "[TRACE]   9[3]" + req + "403 Forbidden",
		hdr + "[DEBUG]   0[3] - debug line"} {
		if !has(out, want) {
			t.Errorf("stdout at Trace lacks %q:\n%s", want, out)
		}
	}
	if len(events) != 7 || events[0] != (line{logfile.Trace, "7[3]" + req + "200 OK - decision allow (privilege matched) - 12 ms"}) {
		t.Errorf("events at Trace: %v", events)
	}
}

// Mirrored lines are written in pieces of at most MirrorChunk bytes that
// end at a line's end, so that another writer's lines on the same pipe
// never land inside one; none is lost. Without log files they are
// mirrored all the same.
func TestMirrorChunks(t *testing.T) {
	var out chunkWriter
	r, err := New(Options{Now: func() time.Time { return t0 }, CallerBurst: -1,
		Mirror: Mirror{Out: &out, OutLevel: logfile.Trace}})
	if err != nil {
		t.Fatal(err)
	}
	const n = 500
	for i := range n {
		ev := allowEvent()
		ev.HTTPID = uint64(i)
		r.Record(ev)
	}
	r.Close()
	if len(out.writes) < 2 {
		t.Fatalf("%d writes", len(out.writes))
	}
	lines := 0
	for _, w := range out.writes {
		if len(w) > MirrorChunk || !strings.HasSuffix(w, "\n") {
			t.Fatalf("a write of %d bytes ending %q", len(w), w[max(0, len(w)-10):])
		}
		lines += strings.Count(w, "\n")
	}
	if lines != n+1 { // and root's one summary
		t.Errorf("%d lines, want %d", lines, n+1)
	}
}
