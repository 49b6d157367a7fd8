package syslog

import (
	"bufio"
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/internal/testsupport"
	"github.com/opengpa/gpa/proxyagent/audit"
	"github.com/opengpa/gpa/proxyagent/authz"
	"github.com/opengpa/gpa/proxyagent/claims"
	"github.com/opengpa/gpa/proxyagent/msp"
	"github.com/opengpa/gpa/proxyagent/redact"
)

// quiet discards the writer's own log lines.
var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// daemon is a local syslog socket the test reads, as journald's /dev/log.
type daemon struct {
	t    *testing.T
	path string
	conn *net.UnixConn
}

func listen(t *testing.T, path string) *daemon {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &daemon{t: t, path: path, conn: c}
}

// next returns the next datagram, failing after a deadline.
func (d *daemon) next() string {
	d.t.Helper()
	buf := make([]byte, 64<<10)
	_ = d.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := d.conn.Read(buf)
	if err != nil {
		d.t.Fatalf("no syslog message: %v", err)
	}
	return string(buf[:n])
}

var message = regexp.MustCompile(`^<(\d+)>([A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d) azure-proxy-agent\[(\d+)\]: (.*)$`)

// parse splits an RFC 3164 message into priority, timestamp, pid and body.
func parse(t *testing.T, m string) (pri int, stamp string, pid int, body string) {
	t.Helper()
	g := message.FindStringSubmatch(m)
	if g == nil {
		t.Fatalf("not a local syslog message: %q", m)
	}
	pri, _ = strconv.Atoi(g[1])
	pid, _ = strconv.Atoi(g[3])
	return pri, g[2], pid, g[4]
}

// TestAuditRecordsReachSyslog runs the audit recorder with the syslog
// writer as its sink: one message per decision, severity by decision,
// facility authpriv, and the body byte for byte the file's line, so the
// secret the claims resolver redacted is not in syslog either.
func TestAuditRecordsReachSyslog(t *testing.T) {
	dir := t.TempDir()
	d := listen(t, filepath.Join(dir, "log"))
	at := time.Date(2026, 3, 7, 9, 4, 5, 0, time.Local)
	w := New(Options{Path: d.path, Now: func() time.Time { return at }, Logger: quiet})
	defer w.Close()
	rec, err := audit.New(audit.Options{Dir: dir, Sink: w})
	if err != nil {
		t.Fatal(err)
	}
	secret := "hunter2hunter2"
	caller := &claims.Claims{UserName: "nobody", UserID: 65534, ProcessName: "curl", ProcessFullPath: "/usr/bin/curl",
		ProcessCmdLine: redact.String("curl -u admin --password=" + secret + " http://169.254.169.254/metadata/instance")}
	if strings.Contains(caller.ProcessCmdLine, secret) {
		t.Fatalf("redactor kept the secret: %q", caller.ProcessCmdLine)
	}
	dest := netip.MustParseAddrPort("169.254.169.254:80")
	for _, r := range []authz.Result{authz.Allow, authz.AllowAudited, authz.Deny} {
		rec.Record(audit.Event{Time: at, Caller: caller, Dest: dest, Service: msp.IMDS, Method: "GET", Target: "/metadata/instance",
			Authorized: true, Decision: authz.Decision{Result: r, Service: msp.IMDS, Mode: msp.ModeAudit},
			Status: 200})
	}
	rec.Record(audit.Event{Time: at, Method: "GET", Target: "/", Status: 421}) // no identity, no decision
	var got []string
	for range 4 {
		got = append(got, d.next())
	}
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	lines := fileLines(t, filepath.Join(dir, audit.AuditLogName))
	if len(lines) != 4 {
		t.Fatalf("audit file has %d lines, want 4", len(lines))
	}
	wantPri := []int{86, 85, 84, 86} // authpriv (10) × 8 + info, notice, warning, info
	for i, m := range got {
		pri, stamp, pid, body := parse(t, m)
		if pri != wantPri[i] {
			t.Errorf("message %d: priority %d, want %d", i, pri, wantPri[i])
		}
		if stamp != "Mar  7 09:04:05" {
			t.Errorf("message %d: timestamp %q", i, stamp)
		}
		if pid != os.Getpid() {
			t.Errorf("message %d: pid %d, want %d", i, pid, os.Getpid())
		}
		if body != lines[i] {
			t.Errorf("message %d body differs from the audit file's line:\n syslog %s\n file   %s", i, body, lines[i])
		}
		if strings.Contains(m, secret) {
			t.Errorf("message %d carries the secret: %s", i, m)
		}
	}
	if !strings.Contains(got[0], redact.Marker) {
		t.Errorf("redacted command line missing from %s", got[0])
	}
	// The count follows the send the daemon already saw.
	testsupport.WaitFor(t, "4 records counted as written", func() bool { return w.Written() == 4 })
	if w.Dropped() != 0 {
		t.Errorf("dropped %d, want 0", w.Dropped())
	}
	if rec.Written() != 4 {
		t.Errorf("recorder wrote %d file records, want 4", rec.Written())
	}
}

func fileLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

// TestDaemonAbsentThenBack: without the socket records are counted as
// dropped and nothing blocks; once the daemon (re)appears they flow again.
func TestDaemonAbsentThenBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	w := New(Options{Path: path, RedialInterval: time.Millisecond, Logger: quiet})
	defer w.Close()
	r := &audit.Record{Decision: "deny"}
	w.WriteRecord([]byte(`{"n":1}`), r)
	testsupport.WaitFor(t, "the record without a socket to be dropped", func() bool { return w.Dropped() == 1 })

	d := listen(t, path)
	// Each record is tried once; keep writing, one record at a time, until
	// the redial happened.
	deadline := time.Now().Add(10 * time.Second)
	for w.Written() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no record delivered after the socket appeared (dropped %d)", w.Dropped())
		}
		before := w.Written() + w.Dropped()
		w.WriteRecord([]byte(`{"n":2}`), r)
		testsupport.WaitFor(t, "the record to be handled", func() bool { return w.Written()+w.Dropped() > before })
	}
	_, _, _, body := parse(t, d.next())
	if body != `{"n":2}` {
		t.Errorf("body %q", body)
	}

	// The daemon restarts: the old socket is gone, a new one is bound.
	d.conn.Close()
	os.Remove(path)
	d2 := listen(t, path)
	written := w.Written() // every earlier record has been handled
	for {
		if time.Now().After(deadline) {
			t.Fatal("no record delivered after the daemon restarted")
		}
		before := w.Written() + w.Dropped()
		w.WriteRecord([]byte(`{"n":3}`), r)
		testsupport.WaitFor(t, "the record to be handled", func() bool { return w.Written()+w.Dropped() > before })
		if w.Written() > written {
			break
		}
	}
	if _, _, _, body := parse(t, d2.next()); body != `{"n":3}` {
		t.Errorf("after restart: body %q", body)
	}
}

func TestWriteAfterCloseDrops(t *testing.T) {
	w := New(Options{Path: filepath.Join(t.TempDir(), "none"), Logger: quiet})
	w.Close()
	w.Close()
	w.WriteRecord([]byte(`{}`), &audit.Record{})
	if w.Dropped() != 1 {
		t.Errorf("dropped %d, want 1", w.Dropped())
	}
}

// BenchmarkSyslogWriteRecord is what the audit writer goroutine pays per record
// for syslog: formatting the message and queueing it (the send happens on
// the syslog goroutine). Nothing of it runs on the request path.
func BenchmarkSyslogWriteRecord(b *testing.B) {
	path := filepath.Join(b.TempDir(), "log")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	go func() {
		buf := make([]byte, 64<<10)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	}()
	w := New(Options{Path: path, Logger: quiet})
	defer w.Close()
	line := bytes.Repeat([]byte("x"), 700) // a typical audit line's length
	rec := &audit.Record{Decision: "allow"}
	b.ReportAllocs()
	for b.Loop() {
		w.WriteRecord(line, rec)
	}
}

// Records queued faster than the daemon reads reach it in order, one
// datagram each and none lost: they go out in batches, which wait while
// the daemon's receive queue is full.
func TestBurstInOrder(t *testing.T) {
	d := listen(t, filepath.Join(t.TempDir(), "log"))
	w := New(Options{Path: d.path, Logger: quiet})
	defer w.Close()
	const n = 500 // far more than the kernel queues unread (net.unix.max_dgram_qlen, 10 by default)
	for i := range n {
		w.WriteRecord([]byte(`{"seq":`+strconv.Itoa(i)+`}`), &audit.Record{Decision: "allow"})
	}
	for i := range n {
		_, _, _, body := parse(t, d.next())
		if want := `{"seq":` + strconv.Itoa(i) + `}`; body != want {
			t.Fatalf("message %d: %q, want %q", i, body, want)
		}
	}
	wantAllWritten(t, w, n)
}

// TestStreamSocket: where the socket is a stream socket (syslog-ng's
// unix-stream source) the records arrive there as one line each, in
// order, none dropped.
func TestStreamSocket(t *testing.T) {
	path, ln := listenStream(t)
	w := New(Options{Path: path, Logger: quiet})
	defer w.Close()
	const n = 200
	for i := range n {
		w.WriteRecord([]byte(`{"seq":`+strconv.Itoa(i)+`}`), &audit.Record{Decision: "deny"})
	}
	_ = ln.SetDeadline(time.Now().Add(10 * time.Second))
	c, err := ln.Accept()
	if err != nil {
		t.Fatalf("the writer did not connect to a stream socket: %v", err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	sc := bufio.NewScanner(c)
	for i := range n {
		if !sc.Scan() {
			t.Fatalf("line %d: %v", i, sc.Err())
		}
		pri, _, _, body := parse(t, sc.Text())
		if want := `{"seq":` + strconv.Itoa(i) + `}`; body != want || pri != FacilityAuthPriv*8+SeverityWarning {
			t.Fatalf("line %d: <%d> %q, want <%d> %q", i, pri, body, FacilityAuthPriv*8+SeverityWarning, want)
		}
	}
	wantAllWritten(t, w, n)
}

// TestStalledStreamNotRedialled: a stream daemon that stopped reading is
// not given a new connection on every write timeout: within
// RedialInterval the writer stays on its one connection (and drops).
func TestStalledStreamNotRedialled(t *testing.T) {
	path, ln := listenStream(t)
	w := New(Options{Path: path, Logger: quiet, WriteTimeout: 20 * time.Millisecond, RedialInterval: time.Hour})
	defer w.Close()
	line := bytes.Repeat([]byte("x"), 1000)
	// 2 MB in all: far more than a unix stream socket buffers unread. Close
	// sends what is queued, so every dial has happened when it returns.
	for range 2000 {
		w.WriteRecord(line, &audit.Record{Decision: "allow"})
	}
	w.Close()
	if w.Dropped() == 0 {
		t.Fatal("nothing dropped: the daemon read everything")
	}
	conns := 0
	for {
		_ = ln.SetDeadline(time.Now().Add(100 * time.Millisecond))
		c, err := ln.Accept()
		if err != nil {
			break
		}
		conns++
		defer c.Close()
	}
	if conns != 1 {
		t.Errorf("%d connections to the stalled daemon, want 1", conns)
	}
}

// listenStream is a stream syslog socket (syslog-ng's unix-stream source)
// the test accepts on.
func listenStream(t *testing.T) (string, *net.UnixListener) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "log")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return path, ln
}

// wantAllWritten waits until w counts n messages written, and none dropped.
func wantAllWritten(t *testing.T, w *Writer, n uint64) {
	t.Helper()
	testsupport.WaitFor(t, "every record counted as written", func() bool { return w.Written() == n })
	if w.Dropped() != 0 {
		t.Errorf("dropped %d, want 0", w.Dropped())
	}
}
