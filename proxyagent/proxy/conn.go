package proxy

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opengpa/gpa/proxyagent/claims"
	"github.com/opengpa/gpa/proxyagent/msp"
	"github.com/opengpa/gpa/proxyagent/rawio"
)

// limitListener accepts at most cap(sem) connections at once. A connection
// beyond the limit is closed at once rather than queued, so a flood cannot
// hold the accept queue or goroutines.
type limitListener struct {
	net.Listener
	s         *Server
	sem       chan struct{} // shared by the listeners of one Server
	container bool          // the container listener
	lastWarn  atomic.Int64  // unix nanos of the last "too many" warning
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.sem <- struct{}{}:
		default:
			// Counted before the close, so whoever sees the close sees it
			// counted.
			n := l.s.refusedFull.Add(1)
			c.Close()
			// At most one warning a second, so a flood cannot flood the log.
			if now, last := time.Now().UnixNano(), l.lastWarn.Load(); now-last >= int64(time.Second) &&
				l.lastWarn.CompareAndSwap(last, now) {
				l.s.log.Warn("too many proxy connections, closing new connections",
					"maxConns", cap(l.sem), "refusedTotal", n)
			}
			continue
		}
		st := l.s.newConnState(c, l.container)
		return &clientConn{Conn: rawio.Wrap(c), st: st, release: func() { <-l.sem }}, nil
	}
}

// clientConn is an accepted client connection carrying its per-connection
// state. Closing it releases its connection slot and closes the upstream.
type clientConn struct {
	net.Conn
	st      *connState
	release func()
	once    sync.Once
}

func (c *clientConn) Close() error {
	err := c.Conn.Close()
	c.done()
	return err
}

// closeOwned is Close for the connection's goroutine when it is finished
// with the connection and nothing else reads or writes it: the socket is
// closed at once, its descriptor may be given back in a batch
// (rawio.Releaser).
func (c *clientConn) closeOwned() {
	rawio.CloseOwned(c.Conn, &c.st.s.fds)
	c.done()
}

// done releases the connection's slot and upstream, once.
func (c *clientConn) done() {
	c.once.Do(func() {
		c.st.close()
		c.release()
	})
}

// connState is what the proxy knows about one client TCP connection. setup
// writes the identity and upstream fields before the first request is
// read, on the connection's goroutine; they are read-only afterwards
// except up, which mu guards (requests on a connection are sequential, but
// Close may run concurrently).
type connState struct {
	s      *Server
	tcpID  uint64
	client netip.AddrPort
	local  netip.AddrPort // the listener's address the client connected to
	// viaContainer: accepted on the container listener, where nothing
	// without a kernel record is answered.
	viaContainer bool

	redirected bool
	dest       netip.AddrPort
	service    msp.Service // dest classified once, at accept
	caller     *claims.Claims
	claimsErr  error

	dialErr error // eager dial failure: every request gets 502

	// counted: the connection holds one of its caller's slots (key);
	// overLimit: its caller already held MaxConnsPerCaller, so it is
	// closed before any request is read.
	key       callerKey
	counted   bool
	overLimit bool

	mu     sync.Mutex
	up     *upstream // nil before the dial and after the upstream closed
	busy   *upstream // in an exchange with the host: close ends it
	closed bool
}

func (s *Server) newConnState(c net.Conn, viaContainer bool) *connState {
	return &connState{s: s, tcpID: s.tcpIDs.Add(1), client: addrPort(c.RemoteAddr()), local: addrPort(c.LocalAddr()),
		viaContainer: viaContainer}
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// setup runs once per connection, right after accept and before the first
// request is read: identity lookup (the record is consumed), claims, and
// the upstream connection (an idle pooled one, else a new dial). ctx ends
// a dial when the server closes.
func (st *connState) setup(ctx context.Context) {
	s := st.s
	rec, ok := s.opts.Identity.Lookup(st.client, st.local)
	if ok && st.viaContainer {
		// Only connects from other network namespaces are sent to the
		// container listener: whatever the record says, this caller is in a
		// container, never the VM's root. (The agent opens no container
		// listener where the kernel cannot tell namespaces apart; this
		// keeps the proxy safe without relying on that.)
		rec.OtherNetns = true
	}
	if key, exempt := keyOf(rec, ok); !exempt {
		if within, full := s.callers.acquire(key); !within {
			st.overLimit = true
			if total, warn := s.callers.refuse(time.Now(), full); warn {
				msg := "too many connections from one caller, closing its new connections"
				if full {
					msg = "the share of connection slots of this caller's group (the agent's namespace, or containers) is taken; closing its new connections"
				}
				s.log.Warn(msg, "uid", key.uid, "otherNetns", rec.OtherNetns, "unidentified", key.unidentified,
					"maxPerCaller", s.callers.max, "maxConns", cap(s.sem), "refusedTotal", total)
			}
			return
		}
		st.mu.Lock()
		if st.closed {
			// Closed meanwhile (the server is shutting down).
			st.mu.Unlock()
			s.callers.release(key)
			return
		}
		st.key, st.counted = key, true
		st.mu.Unlock()
	}
	if ok && rec.OrigDst.IsValid() {
		st.redirected = true
		st.dest = rec.OrigDst
		st.service = s.opts.Endpoints.Classify(rec.OrigDst)
		if s.isSelf(rec.OrigDst) {
			st.service = msp.ProxyAgent
		}
		c, err := s.opts.Claims.Resolve(rec, st.client)
		switch {
		case err != nil:
			st.claimsErr = err
		case c == nil:
			st.claimsErr = errors.New("claims resolver returned no claims")
		default:
			st.caller = c
		}
	}
	if st.caller == nil {
		return
	}
	if st.service == msp.ProxyAgent {
		st.dialErr = errors.New("destination is the proxy listener itself")
		return
	}
	up := s.pool.get(st.dest)
	var err error
	if up == nil {
		up, err = s.dial(ctx, st.dest)
	}
	if err != nil {
		st.dialErr = err
		s.log.Warn("upstream connect failed", "tcpId", st.tcpID, "dest", st.dest.String(), "error", err)
		return
	}
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		s.pool.put(up)
		return
	}
	st.up = up
	st.mu.Unlock()
}

func (s *Server) isSelf(dest netip.AddrPort) bool {
	a := s.Addr()
	return a != nil && addrPort(a) == dest
}

func (s *Server) dial(ctx context.Context, dest netip.AddrPort) (*upstream, error) {
	addr := dest.String()
	if s.opts.Upstream != nil {
		addr = s.opts.Upstream(dest)
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.DialTimeout)
	defer cancel()
	c, err := s.opts.DialUpstream(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return newUpstream(c, dest, s.opts.ResponseTimeout), nil
}

// take removes the upstream connection from the state for one request's
// use. A kept connection (the eager one, or one kept after a response) is
// checked first and replaced when the host has closed it; with none kept, a
// new one is dialled. pooled says the connection was kept, not dialled for
// this request. take fails with the eager dial's error when that failed.
func (st *connState) take(ctx context.Context) (up *upstream, pooled bool, err error) {
	if st.dialErr != nil {
		return nil, false, st.dialErr
	}
	st.mu.Lock()
	up = st.up
	st.up = nil
	closed := st.closed
	st.mu.Unlock()
	if closed {
		if up != nil {
			up.close()
		}
		return nil, false, net.ErrClosed
	}
	if up != nil && !up.alive() {
		st.s.log.Debug("upstream closed the idle connection, reconnecting", "tcpId", st.tcpID)
		up.close()
		up = nil
	}
	if up != nil {
		return up, true, nil
	}
	up, err = st.s.dial(ctx, st.dest)
	return up, false, err
}

// exchange marks up as in an exchange with the host, so closing the client
// connection (Server.Close) ends it; false when the client connection is
// closed already.
func (st *connState) exchange(up *upstream) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.closed {
		return false
	}
	st.busy = up
	return true
}

// endExchange clears the mark and reports whether the client connection
// is still open (if not, up was closed under the exchange).
func (st *connState) endExchange() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.busy = nil
	return !st.closed
}

// put returns a healthy upstream connection after a complete response:
// to this client connection, or to the server's idle pool when the client
// connection has closed meanwhile.
func (st *connState) put(up *upstream) {
	st.mu.Lock()
	if st.closed || st.up != nil {
		st.mu.Unlock()
		st.s.pool.put(up)
		return
	}
	st.up = up
	st.mu.Unlock()
}

// close ends the client connection's state; its idle upstream connection
// (only ever one that finished a complete response, or the unused eager
// one) goes to the server's idle pool.
func (st *connState) close() {
	st.mu.Lock()
	if st.counted {
		st.counted = false
		st.s.callers.release(st.key)
	}
	st.closed = true
	up := st.up
	st.up = nil
	if st.busy != nil {
		st.busy.close()
	}
	st.mu.Unlock()
	if up != nil {
		st.s.pool.put(up)
	}
}

// upstreamPool keeps idle upstream connections, per original destination,
// for reuse by later client connections. Only a connection with no request
// in flight and nothing unread (a complete response read, or none sent) is
// ever put, so framing never carries over from one client connection to
// another; each request carries its own claims and signature. A
// connection is dropped when it has been idle longer than maxIdle, when
// the host closed it or sent unsolicited bytes (checked on get), and when
// more than max are idle for its destination.
type upstreamPool struct {
	max     int
	maxIdle time.Duration

	mu     sync.Mutex
	idle   map[netip.AddrPort][]idleUpstream
	closed bool
}

type idleUpstream struct {
	up    *upstream
	since time.Time
}

// get returns a live idle connection to dest, most recently used first, or
// nil.
func (p *upstreamPool) get(dest netip.AddrPort) *upstream {
	if p.max <= 0 {
		return nil
	}
	now := time.Now()
	for {
		p.mu.Lock()
		list := p.idle[dest]
		if len(list) == 0 {
			p.mu.Unlock()
			return nil
		}
		it := list[len(list)-1]
		list[len(list)-1] = idleUpstream{}
		if list = list[:len(list)-1]; len(list) == 0 {
			delete(p.idle, dest)
		} else {
			p.idle[dest] = list
		}
		p.mu.Unlock()
		if now.Sub(it.since) <= p.maxIdle && it.up.alive() {
			return it.up
		}
		it.up.close()
	}
}

// put keeps up for reuse, or closes it when the pool is closed, disabled
// or full for its destination. The oldest idle connections expire first.
func (p *upstreamPool) put(up *upstream) {
	now := time.Now()
	var drop []*upstream
	p.mu.Lock()
	if p.closed || p.max <= 0 {
		p.mu.Unlock()
		up.close()
		return
	}
	if p.idle == nil {
		p.idle = map[netip.AddrPort][]idleUpstream{}
	}
	list := p.idle[up.dest]
	// Expire from the front (oldest), then make room.
	n := 0
	for n < len(list) && (now.Sub(list[n].since) > p.maxIdle || len(list)-n >= p.max) {
		drop = append(drop, list[n].up)
		n++
	}
	if n > 0 {
		list = append(list[:0], list[n:]...)
	}
	p.idle[up.dest] = append(list, idleUpstream{up: up, since: now})
	p.mu.Unlock()
	for _, u := range drop {
		u.close()
	}
}

// closeAll closes every idle connection; later puts close theirs.
func (p *upstreamPool) closeAll() {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, list := range idle {
		for _, it := range list {
			it.up.close()
		}
	}
}

// upstream is one HTTP/1.1 connection to the original destination. Every
// read and write is bounded by the response timeout.
type upstream struct {
	conn net.Conn
	dest netip.AddrPort // original destination (pool key)
	br   *bufio.Reader
	bw   *bufio.Writer
	peek *peeker   // nil: the connection cannot be peeked
	seen time.Time // dialled or peeked open then, and unused since (zero: used)
}

// upstreamFresh is how long after a dial or a peek that found it open an
// unused connection is trusted without another peek, so the connection a
// client connection takes at accept costs no second peek for its first
// request. A connection that has carried a response is always peeked
// again: a host may close it after the response without saying so.
const upstreamFresh = 100 * time.Millisecond

func newUpstream(c net.Conn, dest netip.AddrPort, timeout time.Duration) *upstream {
	dc := &deadlineConn{Conn: rawio.Wrap(c), timeout: timeout}
	// Small buffers: response bodies bypass br into the relay's buffer,
	// and idle pooled connections keep theirs.
	return &upstream{conn: c, dest: dest, br: bufio.NewReaderSize(dc, 4<<10), bw: bufio.NewWriterSize(dc, 4<<10),
		peek: newPeeker(c), seen: time.Now()}
}

func (u *upstream) close() { u.conn.Close() }

// alive reports whether an idle connection can still be used: no pending
// bytes and the peer has not closed it (seen by a non-blocking peek, or
// trusted within upstreamFresh of the dial or peek while unused). The
// peek also finds bytes the host sent unasked (a 408 before it closes),
// which would otherwise be read as the next request's answer, so even a
// request roundTrip could replay is not sent without it.
func (u *upstream) alive() bool {
	if u.br.Buffered() > 0 {
		return false
	}
	now := time.Now()
	if now.Sub(u.seen) < upstreamFresh {
		return true
	}
	if !u.peek.peerOpen() {
		return false
	}
	u.seen = now
	return true
}

// renewDeadline returns the deadline that gives the next call between
// 7/8 of d and d: set itself when it falls in that window (renew false:
// nothing to set), else now+d. Keeping a deadline that is still good
// re-arms a busy connection's timer about once per d/8 instead of on
// every call (each a timer update in the runtime poller).
func renewDeadline(set time.Time, d time.Duration) (t time.Time, renew bool) {
	now := time.Now()
	if left := set.Sub(now); left >= d-d/8 && left <= d {
		return set, false
	}
	return now.Add(d), true
}

// deadlineConn gives every read and write at least 7/8 of timeout
// (renewDeadline).
type deadlineConn struct {
	net.Conn
	timeout time.Duration
	rd, wd  time.Time // the deadlines set; one user at a time
}

func (c *deadlineConn) Read(p []byte) (int, error) {
	if t, renew := renewDeadline(c.rd, c.timeout); renew {
		c.rd = t
		c.Conn.SetReadDeadline(t)
	}
	return c.Conn.Read(p)
}

func (c *deadlineConn) Write(p []byte) (int, error) {
	if t, renew := renewDeadline(c.wd, c.timeout); renew {
		c.wd = t
		c.Conn.SetWriteDeadline(t)
	}
	return c.Conn.Write(p)
}
