package main

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// upstream is an HTTP server that answers every request with its Host and
// the request's Connection header, counting the connections it accepted.
type upstream struct {
	*httptest.Server
	conns atomic.Int64
	mu    sync.Mutex
	hosts []string
	// hold: a request for /hold is answered once hold's count of them
	// has arrived.
	hold sync.WaitGroup
}

func newUpstream(t *testing.T) *upstream {
	u := &upstream{}
	u.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.hosts = append(u.hosts, r.Host)
		u.mu.Unlock()
		if r.URL.Path == "/hold" {
			u.hold.Done()
			u.hold.Wait()
		}
		if r.URL.Path == "/empty" {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		io.WriteString(w, "path="+r.URL.RequestURI()+" metadata="+r.Header.Get("Metadata")+" connection="+r.Header.Get("Connection"))
	}))
	u.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			u.conns.Add(1)
		}
	}
	u.Start()
	t.Cleanup(u.Close)
	return u
}

// startRelay serves a relay to u on a loopback port and returns its
// address; raw as the -raw flag.
func startRelay(t *testing.T, u *upstream, raw bool) string {
	r := newRelay(u.Listener.Addr().String(), 4, raw)
	l, err := r.listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { r.serve(l); close(served) }()
	addr := l.Addr().String()
	t.Cleanup(func() { l.Close(); <-served })
	return addr
}

// bothIO runs test with the net package's socket calls and with rawio's.
func bothIO(t *testing.T, test func(t *testing.T, raw bool)) {
	for _, raw := range []bool{false, true} {
		t.Run(map[bool]string{false: "net", true: "raw"}[raw], func(t *testing.T) { test(t, raw) })
	}
}

// dial opens a client connection to the relay at addr, closed when the
// test ends.
func dial(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// exchange sends raw on c and reads one response.
func exchange(t *testing.T, c net.Conn, br *bufio.Reader, raw string) (*http.Response, string) {
	t.Helper()
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func TestRelayKeepAlive(t *testing.T) {
	bothIO(t, func(t *testing.T, raw bool) {
		u := newUpstream(t)
		c, br := dial(t, startRelay(t, u, raw))
		for i := 0; i < 3; i++ {
			resp, body := exchange(t, c, br, "GET /metadata/instance?x=1 HTTP/1.1\r\nHost: relay\r\nMetadata: true\r\nConnection: keep-alive\r\n\r\n")
			if want := "path=/metadata/instance?x=1 metadata=true connection="; resp.StatusCode != 200 || body != want {
				t.Fatalf("request %d: %d %q, want 200 %q", i, resp.StatusCode, body, want)
			}
		}
		resp, body := exchange(t, c, br, "GET /empty HTTP/1.1\r\nHost: relay\r\n\r\n")
		if resp.StatusCode != http.StatusNoContent || body != "" {
			t.Errorf("204: %d %q", resp.StatusCode, body)
		}
		if n := u.conns.Load(); n != 1 {
			t.Errorf("%d upstream connections for four requests, want 1 (kept alive)", n)
		}
		u.mu.Lock()
		defer u.mu.Unlock()
		for _, h := range u.hosts {
			if h != u.Listener.Addr().String() {
				t.Errorf("upstream got Host %q, want the upstream's address", h)
			}
		}
	})
}

func TestRelayNewConnections(t *testing.T) {
	bothIO(t, func(t *testing.T, raw bool) {
		u := newUpstream(t)
		addr := startRelay(t, u, raw)
		for i := 0; i < 5; i++ {
			c, br := dial(t, addr)
			resp, _ := exchange(t, c, br, "GET / HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if _, err := br.ReadByte(); err != io.EOF {
				t.Errorf("connection not closed after Connection: close (%v)", err)
			}
			c.Close()
		}
		if n := u.conns.Load(); n != 1 {
			t.Errorf("%d upstream connections for five client connections, want 1 (pooled)", n)
		}
	})
}

func TestRelayUpstreamClosedIdle(t *testing.T) {
	bothIO(t, func(t *testing.T, raw bool) {
		u := newUpstream(t)
		c, br := dial(t, startRelay(t, u, raw))
		exchange(t, c, br, "GET /a HTTP/1.1\r\nHost: relay\r\n\r\n")
		u.CloseClientConnections() // the pooled connection dies while idle
		resp, body := exchange(t, c, br, "GET /b HTTP/1.1\r\nHost: relay\r\n\r\n")
		if resp.StatusCode != 200 || !strings.HasPrefix(body, "path=/b ") {
			t.Errorf("after the upstream closed the idle connection: %d %q", resp.StatusCode, body)
		}
	})
}

// Every pooled connection the upstream closed while idle: the request goes
// once more on a new connection, not on the next stale one.
func TestRelayAllPooledClosed(t *testing.T) {
	bothIO(t, func(t *testing.T, raw bool) {
		u := newUpstream(t)
		addr := startRelay(t, u, raw)
		// Two requests held at the upstream until both arrived leave two
		// pooled upstream connections.
		u.hold.Add(2)
		c1, br1 := dial(t, addr)
		c2, br2 := dial(t, addr)
		io.WriteString(c1, "GET /hold HTTP/1.1\r\nHost: relay\r\n\r\n")
		io.WriteString(c2, "GET /hold HTTP/1.1\r\nHost: relay\r\n\r\n")
		for _, br := range []*bufio.Reader{br1, br2} {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
		}
		if n := u.conns.Load(); n != 2 {
			t.Fatalf("%d upstream connections, want 2", n)
		}
		u.CloseClientConnections()
		for i, c := range []struct {
			c  net.Conn
			br *bufio.Reader
		}{{c1, br1}, {c2, br2}} {
			resp, body := exchange(t, c.c, c.br, "GET /again HTTP/1.1\r\nHost: relay\r\n\r\n")
			if resp.StatusCode != 200 || !strings.HasPrefix(body, "path=/again ") {
				t.Errorf("request %d after the upstream closed every pooled connection: %d %q", i, resp.StatusCode, body)
			}
		}
	})
}

func TestRelayRefusesWhatItDoesNotHandle(t *testing.T) {
	bothIO(t, func(t *testing.T, raw bool) {
		u := newUpstream(t)
		addr := startRelay(t, u, raw)
		for _, raw := range []string{
			"POST / HTTP/1.1\r\nHost: relay\r\nContent-Length: 1\r\n\r\nx",
			"GET / HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
			"GET / HTTP/1.0\r\n\r\n",
			"GET / HTTP/1.1\r\nno colon\r\n\r\n",
		} {
			c, br := dial(t, addr)
			resp, _ := exchange(t, c, br, raw)
			if resp.StatusCode != http.StatusNotImplemented {
				t.Errorf("%q: status %d, want 501", raw, resp.StatusCode)
			}
		}
		u.mu.Lock()
		defer u.mu.Unlock()
		if len(u.hosts) != 0 {
			t.Errorf("%d refused requests reached the upstream", len(u.hosts))
		}
	})
}

// With -raw the relay accepts with rawio's listener, not the net package's,
// and refuses an address rawio does not handle.
func TestRelayRawListener(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("rawio makes raw calls on Linux only")
	}
	if l, err := newRelay("127.0.0.1:1", 1, true).listen("[::1]:0"); err == nil {
		l.Close()
		t.Error("-raw on an IPv6 address accepted")
	}
	for _, raw := range []bool{false, true} {
		l, err := newRelay("127.0.0.1:1", 1, raw).listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if _, plain := l.(*net.TCPListener); plain == raw {
			t.Errorf("raw %v: listener %T", raw, l)
		}
		l.Close()
	}
}
