package load

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	d := make([]time.Duration, 1000)
	for i := range d {
		d[i] = time.Duration(i+1) * time.Microsecond
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{
		{50, 500 * time.Microsecond},
		{90, 900 * time.Microsecond},
		{99, 990 * time.Microsecond},
		{99.9, 999 * time.Microsecond},
		{100, 1000 * time.Microsecond},
		{0.01, 1 * time.Microsecond},
	} {
		if got := Percentile(d, c.p); got != c.want {
			t.Errorf("p%v = %v, want %v", c.p, got, c.want)
		}
	}
	if got := Percentile(nil, 50); got != 0 {
		t.Errorf("empty: %v", got)
	}
	one := []time.Duration{7}
	if got := Percentile(one, 99.9); got != 7 {
		t.Errorf("single: %v", got)
	}
}

func TestSummarizeSortsAndAverages(t *testing.T) {
	l := Summarize([]time.Duration{3 * time.Microsecond, 1 * time.Microsecond, 2 * time.Microsecond})
	if l.P50 != 2 || l.Max != 3 || l.Mean != 2 {
		t.Errorf("got %+v", l)
	}
	if (Summarize(nil) != Latency{}) {
		t.Error("empty input must give zero Latency")
	}
}

func TestRunCountsStatusesAndConnections(t *testing.T) {
	// Connections are counted per case: a request the previous case
	// cancelled when its run ended can still reach the handler later.
	var mu sync.Mutex
	conns := map[string]map[net.Conn]bool{}
	var sawHeader bool
	// A connection is told apart by its net.Conn, not its address: a
	// client port is reused within a case when connections come fast.
	type connKey struct{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		name := r.URL.Query().Get("case")
		if conns[name] == nil {
			conns[name] = map[net.Conn]bool{}
		}
		conns[name][r.Context().Value(connKey{}).(net.Conn)] = true
		if r.Header.Get("Metadata") == "true" {
			sawHeader = true
		}
		mu.Unlock()
		if r.URL.Query().Get("fail") != "" {
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.Write([]byte("ok"))
	}))
	srv.Config.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		return context.WithValue(ctx, connKey{}, c)
	}
	srv.Start()
	defer srv.Close()

	for _, c := range []struct {
		name      string
		keepAlive bool
		query     string
		wantOK    bool
	}{
		{"keep-alive", true, "", true},
		{"new-connection", false, "", true},
		{"non-200", true, "&fail=1", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := http.Header{}
			h.Set("Metadata", "true")
			res, err := Run(context.Background(), Config{URL: srv.URL + "/?case=" + c.name + c.query, Headers: h, Concurrency: 2,
				Duration: 200 * time.Millisecond, Warmup: 20 * time.Millisecond, KeepAlive: c.keepAlive, Trace: true})
			if err != nil {
				t.Fatal(err)
			}
			if res.Requests == 0 || res.Errors != 0 {
				t.Fatalf("requests %d errors %d (%s)", res.Requests, res.Errors, res.FirstError)
			}
			if len(res.Trace) != res.Requests {
				t.Errorf("trace has %d samples for %d requests", len(res.Trace), res.Requests)
			}
			for i := 1; i < len(res.Trace); i++ {
				if res.Trace[i].Start < res.Trace[i-1].Start {
					t.Fatal("trace not in start order")
				}
			}
			if c.wantOK {
				if res.OK != res.Requests || res.Status[200] != res.Requests || res.Latency.P50 <= 0 || res.Latency.P99 < res.Latency.P50 {
					t.Errorf("ok %d of %d, latency %+v", res.OK, res.Requests, res.Latency)
				}
			} else if res.OK != 0 || res.Status[429] != res.Requests || res.Latency != (Latency{}) {
				t.Errorf("non-200 counted as success: %+v", res)
			}
			mu.Lock()
			n := len(conns[c.name])
			mu.Unlock()
			if c.keepAlive && n > 4 { // 2 clients (warm-up connections included)
				t.Errorf("keep-alive used %d connections", n)
			}
			if !c.keepAlive && n < res.Requests {
				t.Errorf("new-connection mode used %d connections for %d requests", n, res.Requests)
			}
		})
	}
	mu.Lock() // a request a run cancelled may still be in the handler
	defer mu.Unlock()
	if !sawHeader {
		t.Error("configured header not sent")
	}
}

func TestRunCountsTransportErrors(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // nothing listens any more
	res, err := Run(context.Background(), Config{URL: url, Concurrency: 1, Duration: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors == 0 || res.OK != 0 || res.FirstError == "" {
		t.Errorf("refused connections not counted as errors: %+v", res)
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	for _, c := range []Config{
		{URL: "http://127.0.0.1:1/", Concurrency: 0, Duration: time.Second},
		{URL: "http://127.0.0.1:1/", Concurrency: 1},
		{URL: "http://[::1", Concurrency: 1, Duration: time.Second},
	} {
		if _, err := Run(context.Background(), c); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
}

// Hold keeps n connections open with an unfinished request head and
// reopens each one the server closes.
func TestHold(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	heads := make(chan string, 16)
	go func() {
		for n := 1; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if n <= 6 {
				c.Close() // as a per-caller limit would
				continue
			}
			if n == 10 {
				// Four holders, six closed connections: each holder
				// redials only after it saw its connection closed, so
				// the tenth connection means six reopens.
				cancel()
			}
			go func() {
				b := make([]byte, 256)
				k, _ := c.Read(b)
				select {
				case heads <- string(b[:k]):
				default:
				}
				io.Copy(io.Discard, c)
				c.Close()
			}()
		}
	}()
	res := Hold(ctx, ln.Addr().String(), 4, time.Hour)
	// The six closed connections were opened, seen closed and reopened
	// before the tenth arrived; the last dials may end with the cancel.
	if res.Wanted != 4 || res.Opened < 6 || res.Closed < 6 {
		t.Fatalf("%+v, want 4 wanted, at least 6 opened, seen closed and reopened", res)
	}
	if h := <-heads; !strings.HasPrefix(h, "GET ") || strings.Contains(h, "\r\n\r\n") {
		t.Errorf("held connection sent %q, want an unfinished request head", h)
	}
}
