package proxy

import (
	"fmt"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/opengpa/gpa/internal/testsupport"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// pooled returns how many idle upstream connections the server keeps for
// dest.
func (e *env) pooled(dest netip.AddrPort) int {
	e.srv.pool.mu.Lock()
	defer e.srv.pool.mu.Unlock()
	return len(e.srv.pool.idle[dest])
}

// waitPooled waits until the pool holds n connections for dest.
func (e *env) waitPooled(dest netip.AddrPort, n int) {
	e.t.Helper()
	testsupport.WaitFor(e.t, fmt.Sprintf("%d pooled upstream connections", n), func() bool { return e.pooled(dest) == n })
}

// agePool makes the idle connections pooled for dest older by d, as if
// that much time had passed.
func (e *env) agePool(dest netip.AddrPort, d time.Duration) {
	e.srv.pool.mu.Lock()
	defer e.srv.pool.mu.Unlock()
	for i := range e.srv.pool.idle[dest] {
		e.srv.pool.idle[dest][i].since = e.srv.pool.idle[dest][i].since.Add(-d)
	}
}

// An upstream connection left idle by a closed client connection serves
// the next client connection; every request still carries its own claims
// and signature.
func TestUpstreamPoolReuseAcrossClients(t *testing.T) {
	e := newEnv(t, nil)
	a := e.connect(rootRec(imdsDest))
	if resp, _ := a.do(req("GET", "/a")); resp.StatusCode != 200 {
		t.Fatalf("first client: %d", resp.StatusCode)
	}
	a.c.Close()
	e.waitPooled(imdsDest, 1)
	b := e.connect(userRec(imdsDest))
	if resp, body := b.do(req("GET", "/b")); resp.StatusCode != 200 || body != "ok /b" {
		t.Fatalf("second client: %d %q", resp.StatusCode, body)
	}
	if n := e.up.conns.Load(); n != 1 {
		t.Errorf("upstream connections %d, want 1 (reused)", n)
	}
	reqs := e.up.requests()
	if len(reqs) != 2 || reqs[0].conn != reqs[1].conn {
		t.Fatalf("upstream requests %+v", reqs)
	}
	for i, elevated := range []bool{true, false} {
		if !reqs[i].sigOK || reqs[i].value(msp.HeaderClaims) != msp.ClaimsValue(elevated) {
			t.Errorf("request %d: signed=%v claims %q", i, reqs[i].sigOK, reqs[i].value(msp.HeaderClaims))
		}
	}
}

// A connection the host asked to close, or any connection when pooling is
// disabled, is never handed to another client connection.
func TestUpstreamPoolNotReused(t *testing.T) {
	for _, tc := range []struct {
		name      string
		maxIdle   int
		target    string
		wantConns int64
	}{
		{"connection-close", 0, "/close", 2},
		{"pool-disabled", -1, "/ok", 2},
		{"default", 0, "/ok", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, func(o *Options) { o.MaxIdleUpstream = tc.maxIdle })
			e.up.setHandler(func(r seenRequest) upReply {
				return upReply{status: 200, body: "ok", closeAfter: r.target == "/close"}
			})
			a := e.connect(rootRec(imdsDest))
			if resp, _ := a.do(req("GET", tc.target)); resp.StatusCode != 200 {
				t.Fatalf("first client: %d", resp.StatusCode)
			}
			a.c.Close()
			e.waitClientsClosed() // the server has seen the close
			b := e.connect(rootRec(imdsDest))
			if resp, _ := b.do(req("GET", "/b")); resp.StatusCode != 200 {
				t.Fatalf("second client: %d", resp.StatusCode)
			}
			if n := e.up.conns.Load(); n != tc.wantConns {
				t.Errorf("upstream connections %d, want %d", n, tc.wantConns)
			}
		})
	}
}

// The pool keeps at most MaxIdleUpstream connections per destination and
// drops connections idle longer than UpstreamIdleTimeout.
func TestUpstreamPoolBounds(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxIdleUpstream = 2; o.UpstreamIdleTimeout = 100 * time.Millisecond })
	var cs []*client
	for i := 0; i < 4; i++ {
		c := e.connect(rootRec(imdsDest))
		if resp, _ := c.do(req("GET", "/"+strconv.Itoa(i))); resp.StatusCode != 200 {
			t.Fatalf("client %d: %d", i, resp.StatusCode)
		}
		cs = append(cs, c)
	}
	for _, c := range cs {
		c.c.Close()
	}
	e.waitClientsClosed()
	e.waitPooled(imdsDest, 2)
	e.agePool(imdsDest, 150*time.Millisecond) // both pooled connections expire
	before := e.up.conns.Load()
	c := e.connect(rootRec(imdsDest))
	if resp, _ := c.do(req("GET", "/late")); resp.StatusCode != 200 {
		t.Fatalf("late client: %d", resp.StatusCode)
	}
	if n := e.up.conns.Load(); n != before+1 {
		t.Errorf("upstream connections %d after expiry, want %d (a new dial)", n, before+1)
	}
}

// A deadline is kept while it leaves between 7/8 of d and d, and renewed
// to now+d otherwise.
func TestRenewDeadline(t *testing.T) {
	const d = time.Minute
	now := time.Now()
	for _, c := range []struct {
		set   time.Time
		renew bool
	}{
		{time.Time{}, true},           // none set
		{now.Add(d - d/16), false},    // still good
		{now.Add(d / 2), true},        // too close
		{now.Add(-time.Second), true}, // passed
		{now.Add(2 * d), true},        // further than d: another timeout's
	} {
		got, renew := renewDeadline(c.set, d)
		if renew != c.renew {
			t.Errorf("renewDeadline(now%+v) renews %v, want %v", c.set.Sub(now), renew, c.renew)
		}
		if !renew && !got.Equal(c.set) {
			t.Errorf("kept deadline changed: %v, want %v", got, c.set)
		}
		if renew && (got.Before(now.Add(d)) || got.After(time.Now().Add(d))) {
			t.Errorf("renewed to now%+v, want now+%v", got.Sub(now), d)
		}
	}
}
