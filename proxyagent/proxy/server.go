// Package proxy is the proxy agent's HTTP listener: it accepts the
// connections the kernel redirected from the metadata endpoints, finds the
// caller's identity once per TCP connection, authorizes every request,
// endorses allowed requests with the latched key and forwards them over one
// upstream connection per client connection at a time, reusing idle ones
// across client connections (shared/spec/protocol.md §2,
// §4.1, §4.5, §4.6).
//
// Invariants a reader can rely on:
//
//   - The upstream destination comes only from the kernel's identity record
//     (identity.Record.OrigDst), never from Host or an absolute-form target.
//   - Every request that reaches the handler produces exactly one
//     audit.Event.
//   - Every client-supplied x-ms-azure-host-* header, X-Forwarded-* and
//     Forwarded is removed before forwarding; hop-by-hop headers (and the
//     headers a client names in Connection) are removed next; only then are
//     the proxy's own claims, date and authorization headers added. So a
//     forged authorization never reaches the host (upstream quirk 12 is
//     deliberately not reproduced), and Connection cannot strip the proxy's
//     headers.
//   - The upstream request is written by this package as raw HTTP/1.1, and
//     the signature covers exactly the request line target, header lines and
//     body bytes written; nothing is added behind its back.
//   - Header values outside visible ASCII, space and tab are answered 400
//     (upstream crashes on them, quirk 15).
//   - The 413 body-limit check runs before every other check (quirk 18).
//
// HTTP/1.1 (http1.go): each client connection is served by one goroutine
// that finds the caller once, then reads its requests in order with
// net/http's request parser and writes the responses with Go's server's
// framing rules (a differential test and fuzzer compare the two). A client
// that closes its connection while its request is with the host is
// noticed when the answer is written, not before; the exchange is bounded
// by ResponseTimeout. Goroutines that finished a connection take the next
// one (dispatch).
//
// Sockets (package rawio): on Linux connections are accepted, read,
// written and closed with raw system calls inside the runtime poller's
// callbacks, and the descriptors of finished connections are given back
// in batches (rawio.Releaser): the syscall package's blocking path would wake
// the runtime's monitor thread on every connection.
//
// Upstream connection: one per client connection at a time, taken right
// after accept for a connection with claims: an idle pooled connection to
// the same original destination when there is one, else a new dial. If
// that dial fails, every request on
// the client connection gets 502 (as upstream). When the host ends the
// kept connection (the eager one or one kept after a response), by
// Connection: close or by an idle close a non-blocking peek sees before
// reuse, the next request dials a new one. A closed connection found only
// on use is replaced once when the request can
// be replayed safely (buffered body, and either the write failed or the
// method is idempotent); otherwise the client gets 502. Other upstream
// failures (timeout, malformed response) get 503. Both close the client
// connection. A failure after the response started closes the client
// connection, as the response is then incomplete.
//
// Differences from upstream a reader should know:
//
//   - Upstream dials a new host connection for every client connection.
//     Here a host connection a client connection leaves idle (after a
//     complete response, or unused) returns to a small per-destination
//     pool (Options.MaxIdleUpstream, UpstreamIdleTimeout) and may serve a
//     later client connection, of any caller. This is safe because the
//     host authenticates each request by its own claims header and
//     signature, not by the TCP connection, and a connection is pooled
//     only between complete messages, so framing never carries over.
//     Claims are still resolved once per client connection.
//   - Hop-by-hop headers (Connection and those it names, Keep-Alive, TE,
//     Upgrade, Proxy-*, Trailer) and Expect are not forwarded; the request
//     is re-framed with Content-Length (chunked only for exempt streamed
//     uploads), and always sent as HTTP/1.1.
//   - For an absolute-form target the request's Host is taken from the
//     target, as RFC 9112 §3.2.2 requires of a proxy; that Host is
//     forwarded.
//   - A request with both Content-Length and Transfer-Encoding gets 400
//     and the connection closes (threats-and-benchmarks.md: request
//     smuggling); Go's server reads it by Transfer-Encoding (by
//     Content-Length in HTTP/1.0). So does an HTTP/1.0 request with
//     Transfer-Encoding alone, which Go's server frames as if the field
//     were not there (RFC 9112 §6.1: faulty framing). Nothing of them
//     reaches the host.
//   - Other requests refused before the request flow (malformed, headers
//     over MaxHeaderBytes or more than 100 fields, an unknown transfer
//     coding, a protocol version other than 1.x, a malformed Host, invalid
//     header bytes, an Expect other than 100-continue) get the answer Go's
//     server gives (400, 431, 501, 505, 417) and no audit event.
//   - A connection whose answer came before its request was read to the
//     end (those refusals, a 413, a refused request with a body) is
//     half-closed, and what the client still sends is read and dropped
//     until it closes (at most 16 MiB and 1 s), so that no reset destroys
//     the answer; Go's server half-closes and sleeps 500 ms.
//   - An HTTP/1.1 request without Host (or with an empty one) goes through
//     the request flow, so the method, traversal, local-endpoint,
//     direct-connection and authorization answers come first; one that
//     would be forwarded gets 400 "missing required Host header" and is
//     audited. Go's server answers 400 before any handler; upstream
//     forwards it.
//   - The reason phrase is Go's standard text for the host's status code.
//   - A request closed without any response (chunked body over the limit,
//     client body error) is audited with Status 0.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/opengpa/gpa/proxyagent/audit"
	"github.com/opengpa/gpa/proxyagent/authz"
	"github.com/opengpa/gpa/proxyagent/claims"
	"github.com/opengpa/gpa/proxyagent/hostconn"
	"github.com/opengpa/gpa/proxyagent/identity"
	"github.com/opengpa/gpa/proxyagent/msp"
	"github.com/opengpa/gpa/proxyagent/provision"
	"github.com/opengpa/gpa/proxyagent/rawio"
)

// Authorizer decides whether a request may be forwarded. It must be safe
// for concurrent use and must not block on I/O.
type Authorizer interface {
	Authorize(authz.Request) authz.Decision
}

// KeySource supplies the latched key (nil when none is in memory) and the
// host-synchronised clock used for x-ms-azure-host-date.
type KeySource interface {
	Key() *msp.Key
	Now() time.Time
}

// ClaimsResolver turns a kernel identity record into claims. An error means
// the connection is treated as having no identity (421 on every request).
type ClaimsResolver interface {
	Resolve(rec identity.Record, client netip.AddrPort) (*claims.Claims, error)
}

// Recorder receives one audit.Event per request. Record must not block for
// long; it is called on the request's goroutine.
type Recorder interface {
	Record(audit.Event)
}

// Metrics is told about every request outcome and every failed upstream
// exchange (package metrics). Its methods run on the request's goroutine
// and must not block.
type Metrics interface {
	Request(ev *audit.Event)
	UpstreamFailure(ev *audit.Event, err error)
}

// Local answers the agent's local endpoints (protocol.md §5.4, §5.5).
type Local interface {
	// Query answers /provision (provision.Serve).
	provision.Querier
	// AggregateStatus returns the §5.1 JSON document.
	AggregateStatus() ([]byte, error)
}

// DefaultAddr is the listen address when Options.Addr is empty.
var DefaultAddr = msp.ListenerAddr.String()

// Defaults for Options fields left zero.
const (
	DefaultBindRetries       = 5
	DefaultBindRetryInterval = time.Second
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = 120 * time.Second
	DefaultBodyReadTimeout   = 60 * time.Second
	DefaultMaxHeaderBytes    = 128 << 10
	DefaultMaxConns          = 1024
	DefaultMaxSignedBody     = 100 << 10 // 102 400 bytes, protocol.md §4.6
	DefaultMaxExemptBody     = 100 << 20 // 104 857 600 bytes
	DefaultDialTimeout       = 10 * time.Second
	DefaultResponseTimeout   = 120 * time.Second
	DefaultMaxIdleUpstream   = 16
	DefaultUpstreamIdle      = 30 * time.Second
)

// Options configures a Server. Identity, Claims, Authorizer and Keys are
// required; everything else has a default.
type Options struct {
	// Addr is the listen address (IPv4), default 127.0.0.1:3080.
	Addr string
	// Endpoints classify each connection's original destination; zero
	// fields take the production addresses. A valid ContainerListener is
	// a second listen address, for callers in other network namespaces
	// (containers): a connection accepted there without a kernel record is
	// refused (421), whatever it asks.
	Endpoints msp.Endpoints

	Identity   identity.Source
	Claims     ClaimsResolver
	Authorizer Authorizer
	Keys       KeySource
	// Recorder receives audit events; nil discards them.
	Recorder Recorder
	// Metrics counts requests and upstream failures; nil counts nothing.
	Metrics Metrics
	// Local answers /provision and /gpa-aggregated-status; nil answers 500.
	Local  Local
	Logger *slog.Logger

	// ListenerStatus is told RUNNING (running=true, message
	// "Started proxy listener, ready to accept request - <ms>") once the
	// listener is bound, and STOPPED (running=false, error text) when binding
	// fails or serving stops.
	ListenerStatus func(running bool, message string)
	// Start is the agent start time the RUNNING message's milliseconds are
	// counted from; zero means the time New was called.
	Start time.Time

	// DialUpstream opens the upstream connection (the agent passes a dialer
	// that sets its socket mark); nil uses a plain net.Dialer.
	DialUpstream func(ctx context.Context, network, address string) (net.Conn, error)
	// ListenerMark, when not 0, is the SO_MARK of the listening sockets:
	// the agent's mark, which the kernel hooks require of the socket they
	// redirect to (only root can set it), so that a socket of someone
	// else's that got the listener's port never gets a connection.
	ListenerMark uint32
	// Upstream maps the original destination to the address dialled; nil
	// dials the original destination. Tests map destinations to loopback.
	Upstream func(orig netip.AddrPort) string

	// BindRetries is how many times binding is retried after EADDRINUSE,
	// BindRetryInterval apart, before the final attempt (§4.1: 5 × 1 s).
	BindRetries       int
	BindRetryInterval time.Duration

	// ReadHeaderTimeout bounds reading one request's headers (slowloris).
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes a keep-alive client connection idle this long.
	IdleTimeout time.Duration
	// BodyReadTimeout bounds reading one request body from the client.
	BodyReadTimeout time.Duration
	MaxHeaderBytes  int
	// MaxConns is the most client connections served at once; connections
	// beyond it are closed at accept, never queued.
	MaxConns int
	// MaxConnsPerCaller is the most connections one caller holds at once
	// (a user in a network namespace; all unidentified connections count
	// as one caller); root in the agent's namespace is not limited. Beyond
	// it a connection is closed before any request is read. 0: no limit.
	MaxConnsPerCaller int
	// OneConnectionPool makes containers share the slots of the agent
	// namespace's callers instead of having their own (ConnShares): the
	// kernel cannot tell namespaces apart (no netns cookie).
	OneConnectionPool bool
	// MaxSignedBody and MaxExemptBody are the body limits of signed and
	// signature-exempt requests.
	MaxSignedBody int64
	MaxExemptBody int64
	// MaxUploadBody is the body limit of waagent's signed uploads (see
	// isUpload; default DefaultMaxUploadBody) and UploadBudget the bytes
	// all such bodies above MaxSignedBody may hold at once (default
	// DefaultUploadBudget).
	MaxUploadBody int64
	UploadBudget  int64
	// DialTimeout bounds the upstream connect; ResponseTimeout bounds every
	// single read or write on the upstream connection.
	DialTimeout     time.Duration
	ResponseTimeout time.Duration

	// MaxIdleUpstream is how many idle upstream connections are kept per
	// destination for reuse by later client connections (default 16;
	// negative: none, every client connection dials its own).
	MaxIdleUpstream int
	// UpstreamIdleTimeout drops a pooled upstream connection idle this
	// long (default 30 s).
	UpstreamIdleTimeout time.Duration
}

// Server is the proxy listener. Create it with New, then Listen and Serve.
// Safe for concurrent use.
type Server struct {
	opts Options
	log  *slog.Logger

	// handle runs one request (serveRequest; tests put a plain handler
	// here to compare the HTTP/1.1 framing with Go's server).
	handle func(http.ResponseWriter, *http.Request, *connState)

	ctx    context.Context // ends with Close: stops upstream dials and exchanges
	cancel context.CancelFunc
	conns  connSet // client connections being served
	// handoff passes accepted connections to idle workers (dispatch);
	// idleWorkers counts those waiting; noMoreConns, closed with the
	// listeners, ends them.
	handoff     chan *clientConn
	idleWorkers atomic.Int32
	noMoreConns chan struct{}
	stopWorkers sync.Once
	fds         rawio.Releaser // descriptors of finished client connections

	pool    upstreamPool  // idle upstream connections shared by client connections
	callers callerLimit   // connections per caller (Options.MaxConnsPerCaller)
	sem     chan struct{} // the listeners' connection slots (MaxConns), set by Listen
	uploads byteBudget    // buffers of large signed uploads (reserveUpload)

	requests    atomic.Uint64 // proxyConnectionsCount and HTTP ids
	tcpIDs      atomic.Uint64
	refusedFull atomic.Uint64 // connections closed at accept: every slot (MaxConns) taken

	mu  sync.Mutex   // guards ln and cln
	ln  net.Listener // set by Listen
	cln net.Listener // container listener, set by Listen when configured
}

// New validates opts, fills defaults and returns a Server that is not yet
// listening.
func New(opts Options) (*Server, error) {
	if opts.Identity == nil || opts.Claims == nil || opts.Authorizer == nil || opts.Keys == nil {
		return nil, errors.New("proxy: Identity, Claims, Authorizer and Keys are required")
	}
	opts.Endpoints = opts.Endpoints.WithDefaults()
	if opts.Addr == "" {
		opts.Addr = DefaultAddr
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Start.IsZero() {
		opts.Start = time.Now()
	}
	if opts.BindRetries == 0 {
		opts.BindRetries = DefaultBindRetries
	}
	if opts.BindRetryInterval == 0 {
		opts.BindRetryInterval = DefaultBindRetryInterval
	}
	setDur := func(d *time.Duration, def time.Duration) {
		if *d <= 0 {
			*d = def
		}
	}
	setDur(&opts.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	setDur(&opts.IdleTimeout, DefaultIdleTimeout)
	setDur(&opts.BodyReadTimeout, DefaultBodyReadTimeout)
	setDur(&opts.DialTimeout, DefaultDialTimeout)
	setDur(&opts.ResponseTimeout, DefaultResponseTimeout)
	if opts.MaxHeaderBytes <= 0 {
		opts.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if opts.MaxConns <= 0 {
		opts.MaxConns = DefaultMaxConns
	}
	if opts.MaxSignedBody <= 0 {
		opts.MaxSignedBody = DefaultMaxSignedBody
	}
	if opts.MaxExemptBody <= 0 {
		opts.MaxExemptBody = DefaultMaxExemptBody
	}
	if opts.MaxUploadBody <= 0 {
		opts.MaxUploadBody = DefaultMaxUploadBody
	}
	if opts.UploadBudget <= 0 {
		opts.UploadBudget = DefaultUploadBudget
	}
	if opts.DialUpstream == nil {
		d := &net.Dialer{}
		opts.DialUpstream = d.DialContext
	}
	setDur(&opts.UpstreamIdleTimeout, DefaultUpstreamIdle)
	if opts.MaxIdleUpstream == 0 {
		opts.MaxIdleUpstream = DefaultMaxIdleUpstream
	}
	s := &Server{opts: opts, log: opts.Logger.With("module", "proxy"), handoff: make(chan *clientConn), noMoreConns: make(chan struct{})}
	s.pool = upstreamPool{max: opts.MaxIdleUpstream, maxIdle: opts.UpstreamIdleTimeout}
	s.callers.max = max(opts.MaxConnsPerCaller, 0)
	s.callers.maxAll, s.callers.maxOther = ConnShares(opts.MaxConns, s.callers.max, !opts.OneConnectionPool)
	s.uploads.free = opts.UploadBudget
	s.handle = s.serveRequest
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.conns.left = make(chan struct{}, 1)
	return s, nil
}

// RequestCount returns the number of HTTP requests handled since start
// (status field proxyConnectionsCount).
func (s *Server) RequestCount() uint64 { return s.requests.Load() }

// Addr returns the bound listen address, or nil before Listen succeeds.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Listen binds the listener, retrying on EADDRINUSE as protocol.md §4.1
// describes, and reports RUNNING or STOPPED through Options.ListenerStatus.
//
// The container listener, when configured, is bound too; if it cannot be,
// the listener still starts and its message says so: connects from
// containers are then refused (nothing listens where the kernel sends
// them).
func (s *Server) Listen() error {
	ln, err := s.bind(s.opts.Addr)
	if err != nil {
		err = fmt.Errorf("proxy: listen on %s: %w", s.opts.Addr, err)
		s.log.Error("proxy listener failed to start", "addr", s.opts.Addr, "error", err)
		s.status(false, err.Error())
		return err
	}
	sem := make(chan struct{}, s.opts.MaxConns)
	s.sem = sem
	var cln net.Listener
	note := ""
	if ca := s.opts.Endpoints.ContainerListener; ca.IsValid() {
		raw, err := s.bind(ca.String())
		if err != nil {
			note = fmt.Sprintf("; container listener %s failed, containers are refused: %v", ca, err)
			s.log.Error("container listener failed to start; connects from containers are refused", "addr", ca.String(), "error", err)
		} else {
			cln = &limitListener{Listener: raw, s: s, sem: sem, container: true}
		}
	}
	s.mu.Lock()
	s.ln = &limitListener{Listener: ln, s: s, sem: sem}
	s.cln = cln
	s.mu.Unlock()
	msg := fmt.Sprintf("Started proxy listener, ready to accept request - %d", time.Since(s.opts.Start).Milliseconds()) + note
	s.log.Info(msg, "addr", ln.Addr().String())
	s.status(true, msg)
	return nil
}

// bind listens on addr. Accepted connections get no TCP keep-alive probes
// (four setsockopt calls per connection saved): a client connection idle
// longer than IdleTimeout is closed anyway.
func (s *Server) bind(addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	if s.opts.ListenerMark != 0 {
		lc.Control = hostconn.MarkControl(s.opts.ListenerMark)
	}
	for i := 0; i < s.opts.BindRetries; i++ {
		ln, err := lc.Listen(context.Background(), "tcp4", addr)
		if err == nil {
			return rawio.Listen(ln)
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			return nil, err
		}
		s.log.Warn("proxy listen address in use, retrying", "addr", addr, "attempt", i+1)
		time.Sleep(s.opts.BindRetryInterval)
	}
	ln, err := lc.Listen(context.Background(), "tcp4", addr)
	if err != nil {
		return nil, err
	}
	return rawio.Listen(ln)
}

func (s *Server) status(running bool, msg string) {
	if s.opts.ListenerStatus != nil {
		s.opts.ListenerStatus(running, msg)
	}
}

// Serve serves the listener bound by Listen until Shutdown or Close, then
// returns nil; any other error is returned and reported as STOPPED.
func (s *Server) Serve() error {
	s.mu.Lock()
	ln, cln := s.ln, s.cln
	s.mu.Unlock()
	if ln == nil {
		return errors.New("proxy: Serve called before Listen")
	}
	if cln != nil {
		go func() {
			if err := s.serveListener(cln); err != nil && !errors.Is(err, errServerClosed) {
				s.log.Error("container listener stopped", "error", err)
			}
		}()
	}
	err := s.serveListener(ln)
	if errors.Is(err, errServerClosed) {
		s.status(false, "proxy listener stopped")
		return nil
	}
	s.log.Error("proxy listener stopped", "error", err)
	s.status(false, err.Error())
	return err
}

// closeListeners stops accepting; later connections are refused.
func (s *Server) closeListeners() {
	s.conns.closing.Store(true)
	s.stopWorkers.Do(func() { close(s.noMoreConns) })
	s.mu.Lock()
	ln, cln := s.ln, s.cln
	s.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	if cln != nil {
		cln.Close()
	}
}

// Shutdown stops accepting, closes idle client connections, lets requests
// in flight finish (their connections close after the response) until ctx
// ends, then closes the idle upstream connections. It returns ctx's error
// when requests were still in flight.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeListeners()
	defer s.fds.Flush()
	defer s.pool.closeAll()
	// Look again when a connection ends, and at growing intervals (1 ms to
	// 500 ms, as Go's server) for one that turned idle after a response.
	poll := time.Millisecond
	timer := time.NewTimer(poll)
	defer timer.Stop()
	for s.conns.closeConns(false) > 0 {
		select {
		case <-s.conns.left:
		case <-timer.C:
			poll = min(2*poll, 500*time.Millisecond)
			timer.Reset(poll)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Close closes the listeners, every client connection and every idle
// upstream connection at once.
func (s *Server) Close() error {
	s.closeListeners()
	s.cancel()
	s.conns.closeConns(true)
	s.pool.closeAll()
	s.fds.Flush()
	return nil
}
