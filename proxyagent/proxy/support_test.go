package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opengpa/gpa/internal/testsupport"
	"github.com/opengpa/gpa/proxyagent/audit"
	"github.com/opengpa/gpa/proxyagent/authz"
	"github.com/opengpa/gpa/proxyagent/claims"
	"github.com/opengpa/gpa/proxyagent/identity"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// Destinations as the kernel would report them. Tests never dial them: the
// Upstream option maps every destination to a loopback fake.
var (
	wsDest   = msp.WireServerAddr
	imdsDest = msp.IMDSAddr
)

const (
	testKeyGUID = "9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf"
	testKeyHex  = "4A404E635266556A586E3272357538782F413F4428472B4B6250645367566B59"
)

var testNow = time.Date(2025, 4, 23, 12, 0, 0, 0, time.UTC)

func rootRec(dest netip.AddrPort) *identity.Record {
	return &identity.Record{PID: 100, UID: 0, Comm: "waagent", OrigDst: dest}
}

func userRec(dest netip.AddrPort) *identity.Record {
	return &identity.Record{PID: 200, UID: 1000, GID: 1000, Comm: "curl", OrigDst: dest}
}

// gateSource is an identity.Source over identity.MapSource whose Lookup
// waits until the test has said what the connection is (redirected with a
// record, or direct), so tests can register a client after dialing it.
// Each set answers one Lookup.
type gateSource struct {
	mu      sync.Mutex
	cond    *sync.Cond
	known   map[netip.AddrPort]int // sets not yet looked up
	m       identity.MapSource
	lookups atomic.Int64
}

func newGateSource() *gateSource {
	g := &gateSource{known: map[netip.AddrPort]int{}}
	g.cond = sync.NewCond(&g.mu)
	return g
}

func (g *gateSource) set(client netip.AddrPort, rec *identity.Record) {
	if rec != nil {
		g.m.Add(client, *rec)
	}
	g.mu.Lock()
	g.known[client]++
	g.mu.Unlock()
	g.cond.Broadcast()
}

func (g *gateSource) Lookup(client, _ netip.AddrPort) (identity.Record, bool) {
	g.lookups.Add(1)
	var expired bool
	timer := time.AfterFunc(testsupport.Deadline, func() {
		g.mu.Lock()
		expired = true
		g.mu.Unlock()
		g.cond.Broadcast()
	})
	defer timer.Stop()
	g.mu.Lock()
	for g.known[client] == 0 && !expired {
		g.cond.Wait()
	}
	// Consumed, like the kernel's record: a later connection from the same
	// port (reused by the client's kernel) waits for its own set.
	if g.known[client]--; g.known[client] <= 0 {
		delete(g.known, client)
	}
	g.mu.Unlock()
	return g.m.Lookup(client, netip.AddrPort{})
}

// fakeClaims derives claims from the record, with one ancestor; Comm
// "noclaims" fails.
type fakeClaims struct{}

func (fakeClaims) Resolve(rec identity.Record, client netip.AddrPort) (*claims.Claims, error) {
	if rec.Comm == "noclaims" {
		return nil, errors.New("process vanished")
	}
	return &claims.Claims{UserID: uint64(rec.UID), UserName: "u" + strconv.Itoa(int(rec.UID)), ProcessID: rec.PID,
		ProcessName: rec.Comm, RunAsElevated: rec.UID == 0, ClientIP: client.Addr().String(), ClientPort: client.Port(),
		OtherNetns: rec.OtherNetns, GroupID: uint64(rec.GID),
		Ancestry: []claims.Process{{PID: 1, Exe: "/sbin/init", CmdLine: "init splash"}}}, nil
}

// fakeAuthz denies targets containing "deny" and records what it saw.
type fakeAuthz struct {
	mu   sync.Mutex
	seen []authz.Request
}

func (a *fakeAuthz) Authorize(r authz.Request) authz.Decision {
	a.mu.Lock()
	a.seen = append(a.seen, r)
	a.mu.Unlock()
	d := authz.Decision{Result: authz.Allow, Service: r.Service, RuleID: "rules-1", Epoch: 3}
	if strings.Contains(r.Target, "deny") {
		d.Result, d.Reason = authz.Deny, "denied by test"
	}
	return d
}

func (a *fakeAuthz) requests() []authz.Request {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]authz.Request(nil), a.seen...)
}

// fakeKeys holds a swappable key and a fixed clock.
type fakeKeys struct{ key atomic.Pointer[msp.Key] }

func (k *fakeKeys) Key() *msp.Key  { return k.key.Load() }
func (k *fakeKeys) Now() time.Time { return testNow }

// recorder collects audit events.
type recorder struct {
	mu  sync.Mutex
	evs []audit.Event
}

func (r *recorder) Record(ev audit.Event) {
	r.mu.Lock()
	r.evs = append(r.evs, ev)
	r.mu.Unlock()
}

// wait returns the events once at least n were recorded (events are
// recorded as the handler returns, which can be after the client read the
// response).
func (r *recorder) wait(t testing.TB, n int) []audit.Event {
	t.Helper()
	var evs []audit.Event
	testsupport.WaitFor(t, fmt.Sprintf("%d audit events", n), func() bool {
		r.mu.Lock()
		evs = append([]audit.Event(nil), r.evs...)
		r.mu.Unlock()
		return len(evs) >= n
	})
	return evs
}

type provisionCall struct {
	tick   int64
	notify bool
}

type fakeLocal struct {
	mu    sync.Mutex
	calls []provisionCall
}

func (l *fakeLocal) Query(tick int64, notify bool) (bool, string) {
	l.mu.Lock()
	l.calls = append(l.calls, provisionCall{tick, notify})
	l.mu.Unlock()
	return tick < 1000, `keyLatchStatus - "x" <y>`
}

func (l *fakeLocal) AggregateStatus() ([]byte, error) {
	return []byte(`{"proxyAgentStatus":{"status":"SUCCESS"}}`), nil
}

// seenRequest is a request as the fake upstream received it, bytes intact.
type seenRequest struct {
	conn           int
	method, target string
	proto          string
	fields         []msp.Field
	body           []byte
	chunked        bool
	sigPresent     bool
	sigOK          bool
}

// values returns every value of a header (any case) in received order.
func (r seenRequest) values(name string) []string {
	var vv []string
	for _, f := range r.fields {
		if strings.EqualFold(f.Name, name) {
			vv = append(vv, f.Value)
		}
	}
	return vv
}

func (r seenRequest) value(name string) string {
	vv := r.values(name)
	if len(vv) == 0 {
		return ""
	}
	return vv[len(vv)-1]
}

// upReply is what the fake upstream answers.
type upReply struct {
	status  int
	headers []string // "Name: value" lines
	body    string
	// chunked sends the body with chunked encoding instead of Content-Length.
	chunked bool
	// closeAfter closes the connection after the response.
	closeAfter bool
}

// fakeUpstream is a raw HTTP/1.1 server standing in for the host. It
// records every request byte for byte and verifies the signature the way
// the host does: over exactly what it received.
type fakeUpstream struct {
	t     testing.TB
	ln    net.Listener
	key   *msp.Key
	conns atomic.Int64

	mu     sync.Mutex
	reqs   []seenRequest
	handle func(seenRequest) upReply
}

func newFakeUpstream(t testing.TB) *fakeUpstream {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	key, err := msp.NewKey(testKeyGUID, testKeyHex)
	if err != nil {
		t.Fatal(err)
	}
	u := &fakeUpstream{t: t, ln: ln, key: key}
	t.Cleanup(func() { ln.Close() })
	go u.serve()
	return u
}

func (u *fakeUpstream) addr() string { return u.ln.Addr().String() }

func (u *fakeUpstream) setHandler(h func(seenRequest) upReply) {
	u.mu.Lock()
	u.handle = h
	u.mu.Unlock()
}

func (u *fakeUpstream) requests() []seenRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]seenRequest(nil), u.reqs...)
}

func (u *fakeUpstream) serve() {
	for {
		c, err := u.ln.Accept()
		if err != nil {
			return
		}
		id := int(u.conns.Add(1))
		go u.serveConn(c, id)
	}
}

func (u *fakeUpstream) serveConn(c net.Conn, id int) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		req, err := readRawRequest(br)
		if err != nil {
			return
		}
		req.conn = id
		if auth := req.value(msp.HeaderAuthorization); auth != "" {
			req.sigPresent = true
			guid, sig, ok := msp.ParseAuthorization(auth)
			sts := msp.StringToSign(req.method, req.target, req.fields, req.body)
			req.sigOK = ok && guid == testKeyGUID && u.key.Verify(sts, sig)
		}
		u.mu.Lock()
		u.reqs = append(u.reqs, req)
		h := u.handle
		u.mu.Unlock()
		rep := upReply{status: 200, headers: []string{"Content-Type: text/plain"}, body: "ok " + req.target}
		if h != nil {
			rep = h(req)
		}
		var b strings.Builder
		fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\n", rep.status, http.StatusText(rep.status))
		for _, h := range rep.headers {
			b.WriteString(h + "\r\n")
		}
		if rep.closeAfter {
			b.WriteString("Connection: close\r\n")
		}
		if rep.chunked {
			b.WriteString("Transfer-Encoding: chunked\r\n\r\n")
			if rep.body != "" {
				fmt.Fprintf(&b, "%x\r\n%s\r\n", len(rep.body), rep.body)
			}
			b.WriteString("0\r\n\r\n")
		} else {
			fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n", len(rep.body))
			if req.method != http.MethodHead {
				b.WriteString(rep.body)
			}
		}
		if _, err := io.WriteString(c, b.String()); err != nil || rep.closeAfter {
			return
		}
	}
}

// readRawRequest parses one request without normalising anything.
func readRawRequest(br *bufio.Reader) (seenRequest, error) {
	var r seenRequest
	line, err := readLine(br)
	if err != nil {
		return r, err
	}
	parts := strings.Split(line, " ")
	if len(parts) != 3 {
		return r, fmt.Errorf("bad request line %q", line)
	}
	r.method, r.target, r.proto = parts[0], parts[1], parts[2]
	for {
		line, err := readLine(br)
		if err != nil {
			return r, err
		}
		if line == "" {
			break
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			return r, fmt.Errorf("bad header line %q", line)
		}
		r.fields = append(r.fields, msp.Field{Name: name, Value: strings.TrimLeft(value, " ")})
	}
	switch {
	case strings.EqualFold(r.value("Transfer-Encoding"), "chunked"):
		r.chunked = true
		r.body, err = io.ReadAll(httputil.NewChunkedReader(br))
		if err == nil {
			_, err = readLine(br) // empty trailer
		}
	case r.value("Content-Length") != "":
		n, perr := strconv.Atoi(r.value("Content-Length"))
		if perr != nil {
			return r, perr
		}
		r.body = make([]byte, n)
		_, err = io.ReadFull(br, r.body)
	}
	return r, err
}

func readLine(br *bufio.Reader) (string, error) {
	l, err := br.ReadString('\n')
	if err != nil {
		return "", err
	}
	if !strings.HasSuffix(l, "\r\n") {
		return "", fmt.Errorf("line without CRLF: %q", l)
	}
	return strings.TrimSuffix(l, "\r\n"), nil
}

// env is a proxy server wired to fakes.
type env struct {
	t     testing.TB
	srv   *Server
	addr  string
	ids   *gateSource
	up    *fakeUpstream
	rec   *recorder
	keys  *fakeKeys
	az    *fakeAuthz
	local *fakeLocal

	statusMu sync.Mutex
	statuses []string
}

func newEnv(t testing.TB, mutate func(*Options)) *env {
	t.Helper()
	e := &env{t: t, ids: newGateSource(), up: newFakeUpstream(t), rec: &recorder{}, keys: &fakeKeys{},
		az: &fakeAuthz{}, local: &fakeLocal{}}
	e.keys.key.Store(e.up.key)
	opts := Options{
		Addr:       "127.0.0.1:0",
		Identity:   e.ids,
		Claims:     fakeClaims{},
		Authorizer: e.az,
		Keys:       e.keys,
		Recorder:   e.rec,
		Local:      e.local,
		Logger:     slog.New(slog.DiscardHandler),
		Upstream:   func(netip.AddrPort) string { return e.up.addr() },
		ListenerStatus: func(running bool, msg string) {
			e.statusMu.Lock()
			e.statuses = append(e.statuses, fmt.Sprintf("%v %s", running, msg))
			e.statusMu.Unlock()
		},
		DialTimeout:     2 * time.Second,
		ResponseTimeout: 5 * time.Second,
	}
	if mutate != nil {
		mutate(&opts)
	}
	srv, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	e.srv, e.addr = srv, srv.Addr().String()
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return e
}

// client is one TCP connection to the proxy.
type client struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

// connect dials the proxy and tells the identity source what the kernel
// would have recorded: rec, or nothing (a direct connection) when nil.
func (e *env) connect(rec *identity.Record) *client {
	e.t.Helper()
	c, err := net.Dial("tcp4", e.addr)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	e.ids.set(addrPort(c.LocalAddr()), rec)
	return &client{t: e.t, c: c, br: bufio.NewReader(c)}
}

// openClients returns how many client connections hold a connection slot:
// a slot is released after the connection's handlers returned and its
// upstream connection was pooled or closed.
func (e *env) openClients() int {
	e.srv.mu.Lock()
	l := e.srv.ln.(*limitListener)
	e.srv.mu.Unlock()
	return len(l.sem)
}

// waitClientsClosed waits until the server is done with every client
// connection the test closed.
func (e *env) waitClientsClosed() {
	e.t.Helper()
	testsupport.WaitFor(e.t, "the server to release every client connection", func() bool { return e.openClients() == 0 })
}

func (c *client) send(raw string) {
	c.t.Helper()
	c.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c.c, raw); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// read reads one response and its whole body.
func (c *client) read(method string) (*http.Response, string) {
	c.t.Helper()
	c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(c.br, &http.Request{Method: method})
	if err != nil {
		c.t.Fatalf("read response: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatalf("read body: %v", err)
	}
	return resp, string(body)
}

func (c *client) do(raw string) (*http.Response, string) {
	c.t.Helper()
	c.send(raw)
	return c.read(strings.SplitN(raw, " ", 2)[0])
}

// closedByServer reports whether the server closed the connection with no
// further bytes.
func (c *client) closedByServer() bool {
	c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.br.Read(make([]byte, 1))
	return n == 0 && err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
}

// req builds a raw request with a Host header and extra header lines.
func req(method, target string, extra ...string) string {
	var b strings.Builder
	b.WriteString(method + " " + target + " HTTP/1.1\r\nHost: 168.63.129.16\r\n")
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

func closedPortAddr(t testing.TB) string {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	ln.Close()
	return a
}

func slogDiscard() *slog.Logger { return slog.New(slog.DiscardHandler) }
