package provision

import (
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opengpa/gpa/internal/testsupport"
	"github.com/opengpa/gpa/proxyagent/status"
)

type env struct {
	p        *Provisioner
	reg      *status.Registry
	dir      string
	state    atomic.Value
	notified atomic.Int32
	finished atomic.Int32
	mu       sync.Mutex
	console  []string
}

func newEnv(t *testing.T) *env {
	e := &env{reg: status.NewRegistry(), dir: filepath.Join(t.TempDir(), "keys")}
	e.state.Store("Unknown")
	e.p = New(Options{
		Dir:        e.dir,
		Registry:   e.reg,
		State:      func() string { return e.state.Load().(string) },
		Notify:     func() { e.notified.Add(1) },
		OnFinished: func() { e.finished.Add(1) },
		Console: func(m string) {
			e.mu.Lock()
			e.console = append(e.console, m)
			e.mu.Unlock()
		},
	})
	return e
}

func (e *env) read(t *testing.T, name string) (string, os.FileMode) {
	t.Helper()
	p := filepath.Join(e.dir, name)
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(p)
	return string(data), fi.Mode().Perm()
}

// Conformance item 18.
func TestProvisionQuerySemantics(t *testing.T) {
	e := newEnv(t)
	clock := testsupport.NewClock(time.Now())
	e.p.opts.Now = clock.Now
	e.p.ListenerReady()
	if fin, _ := e.p.Query(time.Now().UnixNano(), false); fin {
		t.Fatal("listener only: finished")
	}

	e.p.RedirectorReady()
	e.p.KeyLatched()
	e.state.Store("disabled")
	fin1 := e.p.FinishedTimeTick()
	if fin1 == 0 || e.p.Flags() != AllReady {
		t.Fatalf("all ready: tick %d flags %d", fin1, e.p.Flags())
	}
	if e.finished.Load() != 1 {
		t.Errorf("onFinished %d", e.finished.Load())
	}
	query := fin1 + 1 // a query that started after the finish
	if fin, msg := e.p.Query(query, false); fin || msg != "" {
		t.Errorf("disabled, finish older than query: finished=%v msg=%q", fin, msg)
	}
	clock.Advance(time.Millisecond)
	e.p.KeyLatched()
	if e.p.FinishedTimeTick() <= query {
		t.Fatal("key_latched did not refresh the finish time")
	}
	if fin, _ := e.p.Query(query, false); !fin {
		t.Error("after key_latched: not finished")
	}
	if e.finished.Load() != 1 {
		t.Errorf("later key_latched: onFinished %d (want 1)", e.finished.Load())
	}

	e.p.KeyLatchReset()
	if e.p.FinishedTimeTick() != 0 || e.p.Flags()&KeyLatchReady != 0 {
		t.Errorf("reset: tick %d flags %d", e.p.FinishedTimeTick(), e.p.Flags())
	}
	if fin, _ := e.p.Query(query, false); fin {
		t.Error("after reset: finished")
	}
}

func TestQueryFinishedRules(t *testing.T) {
	cases := []struct {
		name     string
		state    string
		fin      int64 // 0: leave unfinished
		tick     int64
		finished bool
	}{
		{"quirk 10: no tick, nothing finished", "Unknown", 0, 0, true},
		{"unfinished", "Unknown", 0, 100, false},
		{"finished after query", "disabled", 200, 100, true},
		{"finished at query", "disabled", 100, 100, true},
		{"finished before query, disabled", "disabled", 50, 100, false},
		{"finished before query, Unknown", "Unknown", 50, 100, false},
		{"finished before query, latched", "wireserver", 50, 100, true},
		{"latched but unfinished", "wireserver", 0, 100, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.state.Store(tc.state)
			if tc.fin != 0 {
				e.p.opts.Now = func() time.Time { return time.Unix(0, tc.fin) }
				e.p.RedirectorReady()
				e.p.ListenerReady()
				e.p.KeyLatched()
			}
			fin, _ := e.p.Query(tc.tick, true)
			if fin != tc.finished {
				t.Errorf("finished = %v, want %v", fin, tc.finished)
			}
			if want := int32(0); !fin {
				want = 1
				if e.notified.Load() != want {
					t.Errorf("notified %d times, want %d", e.notified.Load(), want)
				}
			} else if e.notified.Load() != 0 {
				t.Error("notified although finished")
			}
		})
	}
	e := newEnv(t)
	e.p.Query(100, false)
	if e.notified.Load() != 0 {
		t.Error("notified without the notify header")
	}
}

func TestTagFiles(t *testing.T) {
	t.Run("success", func(t *testing.T) {
		e := newEnv(t)
		e.p.RedirectorReady()
		e.p.KeyLatched()
		e.p.ListenerReady()
		st, mode := e.read(t, StatusTag)
		if st != "" || mode != 0o600 {
			t.Errorf("status.tag %q mode %v", st, mode)
		}
		stamp, mode := e.read(t, ProvisionedTag)
		if _, err := time.Parse(status.TimestampLayout, stamp); err != nil || mode != 0o600 {
			t.Errorf("provisioned.tag %q (%v) mode %v", stamp, err, mode)
		}
		if len(e.console) != 1 || e.console[0] != SuccessConsoleMessage {
			t.Errorf("console %q", e.console)
		}
		if entries, _ := os.ReadDir(e.dir); len(entries) != 2 {
			t.Errorf("tag folder holds %v, want the two tags only", entries)
		}
	})
	t.Run("key latch failure escaped", func(t *testing.T) {
		e := newEnv(t)
		e.reg.Set(status.KeyLatch, status.Running, `Failed to acquire key details: "boom" <a&b> 'x'`)
		e.p.RedirectorReady()
		e.p.ListenerReady()
		e.p.ProvisionTimeout()
		want := `keyLatchStatus - Failed to acquire key details: &quot;boom&quot; &lt;a&amp;b&gt; &apos;x&apos;` + "\r\n"
		if st, _ := e.read(t, StatusTag); st != want {
			t.Errorf("status.tag %q, want %q", st, want)
		}
		if _, msg := e.p.Query(0, false); msg != `keyLatchStatus - Failed to acquire key details: "boom" <a&b> 'x'`+"\r\n" {
			t.Errorf("errorMessage %q (must be unescaped)", msg)
		}
		if e.p.FinishedTimeTick() == 0 || e.finished.Load() != 1 {
			t.Errorf("timeout: tick %d onFinished %d", e.p.FinishedTimeTick(), e.finished.Load())
		}
	})
	t.Run("all missing, in order", func(t *testing.T) {
		e := newEnv(t)
		e.reg.Set(status.EbpfProgram, status.Stopped, "load failed")
		e.p.ProvisionTimeout()
		want := "ebpfProgramStatus - load failed\r\nkeyLatchStatus - Status unknown.\r\nproxyListenerStatus - Status unknown.\r\n"
		if st, _ := e.read(t, StatusTag); st != want {
			t.Errorf("status.tag %q", st)
		}
	})
	t.Run("timeout after all ready does nothing", func(t *testing.T) {
		e := newEnv(t)
		e.p.RedirectorReady()
		e.p.KeyLatched()
		e.p.ListenerReady()
		tick := e.p.FinishedTimeTick()
		e.p.ProvisionTimeout()
		if e.p.FinishedTimeTick() != tick || len(e.console) != 1 {
			t.Error("timeout rewrote a finished provisioning")
		}
	})
}

func TestXMLEscape(t *testing.T) {
	for in, want := range map[string]string{
		"plain":     "plain",
		`"`:         "&quot;",
		"&amp;":     "&amp;amp;",
		"<a b='c'>": "&lt;a b=&apos;c&apos;&gt;",
		"\r\n":      "\r\n",
	} {
		if got := XMLEscape(in); got != want {
			t.Errorf("XMLEscape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseTimeTick(t *testing.T) {
	for in, want := range map[string]int64{
		"":                         0,
		"abc":                      0,
		"12.5":                     0,
		"1745409600123456789":      1745409600123456789,
		"+5":                       5,
		"-7":                       -7,
		" 42 ":                     42,
		"99999999999999999999999":  math.MaxInt64,
		"-99999999999999999999999": math.MinInt64,
	} {
		if got := ParseTimeTick(in); got != want {
			t.Errorf("ParseTimeTick(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestHandler(t *testing.T) {
	e := newEnv(t)
	srv := httptest.NewServer(serving(e.p))
	defer srv.Close()

	resp, err := http.Get(srv.URL + Path)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 || !resp.Close {
		t.Errorf("without Metadata: %d close=%v", resp.StatusCode, resp.Close)
	}

	e.reg.Set(status.ProxyListener, status.Stopped, "bind <failed>")
	req, _ := http.NewRequest("GET", srv.URL+Path, nil)
	req.Header.Set("Metadata", "anything")
	req.Header.Set(HeaderTimeTick, "5")
	req.Header.Set(HeaderNotify, "")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, 4096)
	n, _ := resp.Body.Read(body)
	resp.Body.Close()
	got := string(body[:n])
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json; charset=utf-8" {
		t.Errorf("status %d type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	want := `{"finished":false,"errorMessage":"ebpfProgramStatus - Status unknown.\r\nkeyLatchStatus - Status unknown.\r\nproxyListenerStatus - bind <failed>\r\n"}`
	if got != want {
		t.Errorf("body %s\nwant %s", got, want)
	}
	if e.notified.Load() != 1 {
		t.Errorf("notify header (empty value) did not notify")
	}
}

// serving is the production /provision endpoint over q, for httptest.
func serving(q Querier) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { Serve(w, r, q) })
}

// recorder wraps the provisioning handler and records each query's headers.
type recorder struct {
	mu   sync.Mutex
	hdrs []http.Header
	next http.Handler
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	r.hdrs = append(r.hdrs, req.Header.Clone())
	r.mu.Unlock()
	r.next.ServeHTTP(w, req)
}

func TestQueryStatusExitCodes(t *testing.T) {
	t.Run("not finished, polls, notify once", func(t *testing.T) {
		e := newEnv(t)
		e.p.ListenerReady()
		rec := &recorder{next: serving(e.p)}
		srv := httptest.NewServer(rec)
		defer srv.Close()
		start := time.Now().UnixNano()
		code, msg := QueryStatus(strings.TrimPrefix(srv.URL, "http://"), 350*time.Millisecond)
		if code != 1 || msg != "" {
			t.Errorf("exit %d msg %q, want 1", code, msg)
		}
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if len(rec.hdrs) < 3 || len(rec.hdrs) > 6 {
			t.Errorf("%d queries in 350 ms, want about 4 (100 ms apart)", len(rec.hdrs))
		}
		tick := rec.hdrs[0].Get(HeaderTimeTick)
		for i, h := range rec.hdrs {
			_, notify := h[http.CanonicalHeaderKey(HeaderNotify)]
			if notify != (i == 0) {
				t.Errorf("query %d notify=%v", i, notify)
			}
			if h.Get("Metadata") != "true" || h.Get(HeaderTimeTick) != tick {
				t.Errorf("query %d headers %v", i, h)
			}
		}
		if n := ParseTimeTick(tick); n < start || n > time.Now().UnixNano() {
			t.Errorf("time tick %s is not the CLI start", tick)
		}
		if e.notified.Load() != 1 {
			t.Errorf("key keeper notified %d times", e.notified.Load())
		}
	})
	t.Run("finished ok", func(t *testing.T) {
		e := newEnv(t)
		e.state.Store("wireserver")
		e.p.RedirectorReady()
		e.p.KeyLatched()
		e.p.ListenerReady()
		srv := httptest.NewServer(serving(e.p))
		defer srv.Close()
		if code, msg := QueryStatus(strings.TrimPrefix(srv.URL, "http://"), 0); code != 0 || msg != "" {
			t.Errorf("exit %d msg %q, want 0", code, msg)
		}
	})
	t.Run("finished with error", func(t *testing.T) {
		e := newEnv(t)
		e.reg.Set(status.EbpfProgram, status.Stopped, "no BTF")
		e.p.ListenerReady()
		e.p.KeyLatched()
		e.p.ProvisionTimeout()
		e.state.Store("wireserver")
		srv := httptest.NewServer(serving(e.p))
		defer srv.Close()
		code, msg := QueryStatus(strings.TrimPrefix(srv.URL, "http://"), 0)
		if code != 2 || msg != "ebpfProgramStatus - no BTF\r\n" {
			t.Errorf("exit %d msg %q, want 2", code, msg)
		}
	})
	t.Run("finishes while waiting", func(t *testing.T) {
		e := newEnv(t)
		e.p.RedirectorReady()
		e.p.ListenerReady()
		// Provisioning finishes once the first query has been answered
		// "not finished", so the second or a later one must see it.
		var queries atomic.Int32
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			serving(e.p).ServeHTTP(w, r)
			if queries.Add(1) == 1 {
				e.p.KeyLatched()
			}
		}))
		defer srv.Close()
		if code, _ := QueryStatus(strings.TrimPrefix(srv.URL, "http://"), 5*time.Second); code != 0 {
			t.Errorf("exit %d, want 0", code)
		}
		if n := queries.Load(); n < 2 {
			t.Errorf("%d queries, want the wait to query again", n)
		}
	})
	t.Run("no listener", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		code, msg := QueryStatus(addr, 0)
		if code != 1 || !strings.HasPrefix(msg, "Failed to query the current provision state with error: ") {
			t.Errorf("exit %d msg %q", code, msg)
		}
	})
	t.Run("server error", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) }))
		defer srv.Close()
		if code, msg := QueryStatus(strings.TrimPrefix(srv.URL, "http://"), 0); code != 1 || !strings.Contains(msg, "500") {
			t.Errorf("exit %d msg %q", code, msg)
		}
	})
}
