package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/opengpa/gpa/proxyagent/msp"
)

// This file is the proxy's HTTP/1.1 server: one goroutine per client
// connection reads requests with net/http's own parser (http.ReadRequest:
// request line, header block, Content-Length and Transfer-Encoding
// framing with its smuggling checks), applies the checks Go's server adds
// (protocol version, Host, header names and values, Expect), runs the
// request flow in the same goroutine and writes the response with the
// framing rules of Go's server. What it leaves out of Go's server is what
// costs a proxy with one short request per connection the most: the
// per-request goroutine that watches the idle client connection, the
// per-connection and per-request contexts and the handler indirection.
//
// A client that closes its connection while its request is with the host
// is noticed when the response is written to it, not before (Go's server
// noticed it at once); the host exchange is bounded by
// Options.ResponseTimeout either way.

// postHandlerDiscard is how much of an unread request body is read and
// dropped after the response head so the connection can be kept; a larger
// remainder closes the connection (as Go's server).
const postHandlerDiscard = 256 << 10

// bodyBufferSize is how much of a response body is held before the head
// is written, so a short complete response gets a Content-Length.
const bodyBufferSize = 2048

var (
	bufReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	bufWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
)

// httpConn is one client connection served by serveConn.
type httpConn struct {
	s    *Server
	conn *clientConn
	lr   io.LimitedReader // under br: bounds the header block
	br   *bufio.Reader
	bw   *bufio.Writer
	w    respWriter  // the current request's, reused (respWriter)
	idle atomic.Bool // waiting for a request: Shutdown may close it
	rd   time.Time   // the read deadline set (setReadDeadline)
}

// setReadDeadline sets the client connection's read deadline.
func (hc *httpConn) setReadDeadline(t time.Time) error {
	hc.rd = t
	return hc.conn.SetReadDeadline(t)
}

// readWithin gives the next reads between 7/8 of d and d
// (renewDeadline): a keep-alive connection re-arms its idle timer about
// once per d/8, not per request.
func (hc *httpConn) readWithin(d time.Duration) {
	if t, renew := renewDeadline(hc.rd, d); renew {
		hc.setReadDeadline(t)
	}
}

// headerBuffered reports whether the buffered bytes hold a whole request
// head (a line, then the end of a header block), so reading it needs no
// more network reads. Line ends tolerated before it (readRequest) do not
// count.
func (hc *httpConn) headerBuffered() bool {
	b, _ := hc.br.Peek(hc.br.Buffered())
	return bytes.Contains(bytes.TrimLeft(b, "\r\n"), []byte("\r\n\r\n"))
}

// connSet tracks the connections being served, for Shutdown and Close.
type connSet struct {
	mu      sync.Mutex
	m       map[*httpConn]struct{}
	closing atomic.Bool   // Shutdown or Close called: no keep-alive
	left    chan struct{} // a connection ended (capacity 1, never blocks)
}

func (cs *connSet) add(hc *httpConn) bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.closing.Load() {
		return false
	}
	if cs.m == nil {
		cs.m = map[*httpConn]struct{}{}
	}
	cs.m[hc] = struct{}{}
	return true
}

func (cs *connSet) remove(hc *httpConn) {
	cs.mu.Lock()
	delete(cs.m, hc)
	cs.mu.Unlock()
	select {
	case cs.left <- struct{}{}:
	default:
	}
}

// closeConns closes the idle connections (all of them when all is set) and
// returns how many remain.
func (cs *connSet) closeConns(all bool) int {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.closing.Store(true)
	n := 0
	for hc := range cs.m {
		if all || hc.idle.Load() {
			hc.conn.Close()
			continue
		}
		n++
	}
	return n
}

// serveListener accepts connections until ln is closed.
func (s *Server) serveListener(ln net.Listener) error {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.conns.closing.Load() || errors.Is(err, net.ErrClosed) {
				return errServerClosed
			}
			// Out of file descriptors or similar: back off as Go's server
			// does, 5 ms doubling up to 1 s.
			if delay == 0 {
				delay = 5 * time.Millisecond
			} else if delay *= 2; delay > time.Second {
				delay = time.Second
			}
			s.log.Warn("proxy accept failed, retrying", "error", err, "delay", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		s.dispatch(c.(*clientConn))
	}
}

// maxIdleWorkers bounds the goroutines kept waiting for a connection
// after serving one (dispatch).
const maxIdleWorkers = 4

// dispatch hands cc to a goroutine that finished its last connection and
// waits for another, or starts one. A kept goroutine has grown its stack
// already: a new goroutine per connection starts small and grows (copies)
// its stack on the way through the request flow, about 3 % of the agent's
// CPU at one new connection per request (perf, issue 13).
func (s *Server) dispatch(cc *clientConn) {
	select {
	case s.handoff <- cc:
	default:
		go s.worker(cc)
	}
}

// worker serves cc, then further connections handed to it while at most
// maxIdleWorkers wait; it ends when more wait or the listeners close.
func (s *Server) worker(cc *clientConn) {
	for {
		s.serveConn(cc)
		if s.idleWorkers.Add(1) > maxIdleWorkers {
			s.idleWorkers.Add(-1)
			return
		}
		select {
		case cc = <-s.handoff:
			s.idleWorkers.Add(-1)
		case <-s.noMoreConns:
			s.idleWorkers.Add(-1)
			return
		}
	}
}

var errServerClosed = errors.New("proxy: server closed")

// serveConn serves one client connection: the connection's setup
// (identity, claims, upstream), then its requests in order until the
// connection is to be closed.
func (s *Server) serveConn(cc *clientConn) {
	hc := &httpConn{s: s, conn: cc}
	hc.lr.R = cc
	hc.br = bufReaders.Get().(*bufio.Reader)
	hc.br.Reset(&hc.lr)
	hc.bw = bufWriters.Get().(*bufio.Writer)
	hc.bw.Reset(cc)
	defer func() {
		cc.closeOwned()
		s.conns.remove(hc)
		hc.br.Reset(nil)
		bufReaders.Put(hc.br)
		hc.bw.Reset(nil)
		bufWriters.Put(hc.bw)
	}()
	hc.idle.Store(true)
	if !s.conns.add(hc) {
		return
	}
	cc.st.setup(s.ctx)
	if cc.st.overLimit {
		return
	}
	lastPost := false
	for first := true; ; first = false {
		// Waiting for a request's first byte: the connection is idle.
		// As Go's server, a later request must bring at least 4 bytes
		// before the client's end or idle timeout; the first one is read
		// (and refused) whatever it is.
		wait, atLeast := s.opts.IdleTimeout, 4
		if first {
			wait, atLeast = s.opts.ReadHeaderTimeout, 1
		}
		if first {
			hc.setReadDeadline(time.Now().Add(wait))
		} else {
			hc.readWithin(wait)
		}
		hc.lr.N = int64(s.opts.MaxHeaderBytes) + 4096
		if _, err := hc.br.Peek(atLeast); err != nil {
			return
		}
		hc.idle.Store(false)
		// The first request's header time counts from accept. A later
		// one's counts from its first byte, unless its whole header block
		// has arrived already (usual for a small request), when reading
		// it cannot wait on the client.
		if !first && !hc.headerBuffered() {
			hc.setReadDeadline(time.Now().Add(s.opts.ReadHeaderTimeout))
		}
		req, err := hc.readRequest(lastPost)
		if s.conns.closing.Load() {
			return
		}
		if err != nil {
			hc.rejectRequest(err)
			return
		}
		lastPost = req.Method == http.MethodPost
		w := hc.respWriter(req)
		if ex := req.Header["Expect"]; len(ex) > 0 && ex[0] != "" {
			if !hasToken(ex[0], "100-continue") {
				// Go's server: an expectation other than 100-continue is
				// 417.
				w.Header().Set("Connection", "close")
				w.WriteHeader(http.StatusExpectationFailed)
				w.finish()
				if w.bodyUnread() {
					hc.lingerUnread()
				}
				return
			}
			if req.ProtoAtLeast(1, 1) && req.ContentLength != 0 {
				w.cont = &continueReader{w: w, body: req.Body}
				req.Body = w.cont
			}
		}
		if !hc.handle(w, req) {
			return
		}
		if !w.finish() || s.conns.closing.Load() {
			if w.bodyUnread() {
				hc.lingerUnread()
			}
			return
		}
		hc.idle.Store(true)
	}
}

// readRequest reads one request head (a simple one on the fast path,
// fastRequest; any other with net/http's parser) and applies the checks
// Go's server adds to it.
func (hc *httpConn) readRequest(lastPost bool) (*http.Request, error) {
	if lastPost {
		// RFC 9112 §2.2: tolerate a CRLF an old client sends after a POST
		// body.
		peek, _ := hc.br.Peek(4)
		n := 0
		for n < len(peek) && (peek[n] == '\r' || peek[n] == '\n') {
			n++
		}
		hc.br.Discard(n)
	}
	req := fastRequest(hc.br)
	fast := req != nil // names and values already checked (headerLine)
	if !fast {
		var err error
		if req, err = hc.readFullRequest(); err != nil {
			if hc.lr.N <= 0 {
				return nil, errHeaderTooLarge
			}
			return nil, err
		}
	}
	hc.lr.N = math.MaxInt64
	if req.ContentLength != 0 {
		// The body is read without the header deadline (forward bounds
		// it). Without a body nothing reads the connection before the
		// next request's wait, which sets its own.
		hc.setReadDeadline(time.Time{})
	}
	if req.ProtoMajor != 1 {
		return nil, statusError{http.StatusHTTPVersionNotSupported, "unsupported protocol version"}
	}
	// http.ReadRequest has already refused two Host lines, leaving the
	// value (or the absolute-form target's authority) in req.Host. An
	// HTTP/1.1 request without one is read (upstream's server accepts it)
	// and refused by the request flow if it would be forwarded, after the
	// method, direct-connection and authorization checks (serveRequest).
	if !httpguts.ValidHostHeader(req.Host) {
		return nil, statusError{http.StatusBadRequest, "malformed Host header"}
	}
	fields := 0
	if req.Host != "" {
		fields++
	}
	for k, vv := range req.Header {
		if !fast {
			if !httpguts.ValidHeaderFieldName(k) {
				return nil, statusError{http.StatusBadRequest, "invalid header name"}
			}
			for _, v := range vv {
				if !httpguts.ValidHeaderFieldValue(v) {
					return nil, statusError{http.StatusBadRequest, "invalid header value"}
				}
			}
		}
		fields += len(vv)
	}
	if fields > maxHeaderFields {
		return nil, errHeaderTooLarge
	}
	if req.Body != http.NoBody {
		req.Body = &requestBody{rc: req.Body}
	}
	return req, nil
}

var errHeaderTooLarge = errors.New("request header too large")

// maxHeaderFields is the most header fields a request may have, Host
// included; one more gets 431, as upstream's HTTP library (hyper's default
// of 100, protocol.md §4.6) answers.
const maxHeaderFields = 100

// readFullRequest reads a request that the fast path declined with
// net/http's parser, and refuses one whose head has both Content-Length
// and Transfer-Encoding (threats-and-benchmarks.md: request smuggling),
// or an HTTP/1.0 one with Transfer-Encoding.
// net/http reads such a request by its Transfer-Encoding and removes the
// Content-Length field, so the head's bytes are kept while it parses:
// those already buffered and those it reads.
func (hc *httpConn) readFullRequest() (*http.Request, error) {
	buffered, _ := hc.br.Peek(hc.br.Buffered())
	tap := headTap{r: hc.lr.R, head: append([]byte(nil), buffered...)}
	hc.lr.R = &tap
	req, err := http.ReadRequest(hc.br)
	hc.lr.R = tap.r
	if err != nil {
		return nil, err
	}
	// net/http ignores (and drops) Transfer-Encoding in an HTTP/1.0
	// request and frames it by Content-Length; RFC 9112 §6.1 calls such a
	// message's framing faulty.
	old := !req.ProtoAtLeast(1, 1)
	te := len(req.TransferEncoding) > 0 || old && headHasField(tap.head, "Transfer-Encoding")
	switch {
	case te && headHasField(tap.head, "Content-Length"):
		return nil, statusError{http.StatusBadRequest, "both Content-Length and Transfer-Encoding"}
	case te && old:
		return nil, statusError{http.StatusBadRequest, "Transfer-Encoding in an HTTP/1.0 request"}
	}
	return req, nil
}

// headTap records what is read through it.
type headTap struct {
	r    io.Reader
	head []byte
}

func (t *headTap) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	t.head = append(t.head, p[:n]...)
	return n, err
}

// headHasField reports whether the header block at the start of raw (after
// the request line, up to the first empty line) has a field named name,
// compared as net/http's parser does: the line starts with the name, in any
// case, followed by a colon.
func headHasField(raw []byte, name string) bool {
	_, rest, ok := bytes.Cut(raw, []byte("\n"))
	for ok {
		var line []byte
		line, rest, ok = bytes.Cut(rest, []byte("\n"))
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			return false
		}
		if len(line) > len(name) && line[len(name)] == ':' && strings.EqualFold(string(line[:len(name)]), name) {
			return true
		}
	}
	return false
}

// statusError is a request refused before the request flow, with the
// status and text Go's server would answer.
type statusError struct {
	code int
	text string
}

func (e statusError) Error() string { return strconv.Itoa(e.code) + " " + e.text }

// rejectRequest answers a request that could not be read, as Go's server
// does, and is the connection's last act: what the client still sends (the
// rest of the head, a body) is read and dropped (lingerUnread), so that no
// reset destroys the answer.
func (hc *httpConn) rejectRequest(err error) {
	const errorHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
	var se statusError
	switch {
	case errors.Is(err, errHeaderTooLarge):
		const msg = "431 Request Header Fields Too Large"
		hc.bw.WriteString("HTTP/1.1 " + msg + errorHeaders + msg)
	case strings.HasPrefix(err.Error(), "unsupported transfer encoding"):
		// RFC 9112 §6.1: a transfer coding the server does not understand
		// is 501. The value is not echoed.
		hc.bw.WriteString("HTTP/1.1 501 Not Implemented" + errorHeaders + "Unsupported transfer encoding")
	case commonReadError(err):
		return
	case errors.As(err, &se):
		text := strconv.Itoa(se.code) + " " + http.StatusText(se.code) + ": " + se.text
		hc.bw.WriteString("HTTP/1.1 " + text + errorHeaders + text)
	default:
		const msg = "400 Bad Request"
		hc.bw.WriteString("HTTP/1.1 " + msg + errorHeaders + msg)
	}
	hc.lingerUnread()
}

// commonReadError is a client that went away or timed out: no answer.
func commonReadError(err error) bool {
	if err == io.EOF {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "read"
}

// Bounds of lingerUnread: what it reads of a request the answer left
// unread (more than any body limit that answers 413 but the exempt
// uploads' 100 MiB), and for how long.
const (
	lingerBytes = 16 << 20
	lingerTime  = time.Second
)

// lingerUnread ends a connection whose last request was answered before
// its bytes were all read (a 413 before the body, a 431 before the rest of
// the head): it sends what is buffered, half-closes, and reads and drops
// what the client still sends, until the client closes its end (having
// read the answer) or lingerBytes or lingerTime run out. Closing with
// unread bytes makes the kernel reset the connection, which can destroy
// the answer before the client has read it (RFC 9112 §9.6); Go's server
// half-closes and sleeps 500 ms instead, this returns as soon as the
// client is done.
func (hc *httpConn) lingerUnread() {
	hc.bw.Flush()
	if tc, ok := hc.conn.Conn.(interface{ CloseWrite() error }); ok {
		tc.CloseWrite()
	}
	hc.setReadDeadline(time.Now().Add(lingerTime))
	hc.lr.N = lingerBytes
	io.Copy(io.Discard, hc.br)
}

// handle runs the request flow, recovering a handler that aborts the
// response (http.ErrAbortHandler) or panics: what was written is sent and
// the connection closes. It reports whether the response may complete.
func (hc *httpConn) handle(w *respWriter, req *http.Request) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				hc.s.log.Error("proxy request panicked", "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			}
			hc.bw.Flush()
			ok = false
		}
	}()
	hc.s.handle(w, req, hc.conn.st)
	return true
}

// requestBody remembers whether the request body was read to its end.
type requestBody struct {
	rc  io.ReadCloser
	eof bool
}

func (b *requestBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *requestBody) Close() error { return b.rc.Close() }

// continueReader sends "100 Continue" before the first read of a body the
// client holds back (Expect: 100-continue), unless the response started.
type continueReader struct {
	w    *respWriter
	body io.ReadCloser
	sent bool
}

func (c *continueReader) Read(p []byte) (int, error) {
	if !c.sent && !c.w.committed {
		c.sent = true
		c.w.hc.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
		if err := c.w.hc.bw.Flush(); err != nil {
			return 0, err
		}
	}
	return c.body.Read(p)
}

func (c *continueReader) Close() error { return c.body.Close() }

// respWriter is the http.ResponseWriter of one request. It follows Go's
// server: a complete short response gets a Content-Length, a longer one
// without it is chunked (HTTP/1.1) or ends with the connection (1.0); Date
// is added unless the handler set the key (nil: omitted) and Content-Type
// is sniffed unless set; HEAD and bodiless statuses get no body.
type respWriter struct {
	hc  *httpConn
	req *http.Request

	header      http.Header
	status      int
	wroteHeader bool // WriteHeader called
	committed   bool // the head is in hc.bw
	handlerDone bool
	chunking    bool
	closeAfter  bool

	contentLength int64 // declared, or -1
	written       int64
	pending       []byte // body held before the head is written
	cont          *continueReader
	werr          error
}

// respWriter returns the connection's response writer set up for req. Its
// header map and body buffer are the previous request's, emptied: a
// handler does not keep them past its return.
func (hc *httpConn) respWriter(req *http.Request) *respWriter {
	h, pending := hc.w.header, hc.w.pending[:0]
	if h == nil {
		h = make(http.Header, 4)
	} else {
		clear(h)
	}
	hc.w = respWriter{hc: hc, req: req, header: h, contentLength: -1, pending: pending}
	return &hc.w
}

// Header implements http.ResponseWriter.
func (w *respWriter) Header() http.Header { return w.header }

// WriteHeader implements http.ResponseWriter. Informational statuses are
// not supported and are ignored; a second call is ignored.
func (w *respWriter) WriteHeader(code int) {
	if w.wroteHeader || code < 200 || code > 999 {
		return
	}
	w.wroteHeader = true
	w.status = code
	if cl := w.header.Get("Content-Length"); cl != "" {
		if v, err := strconv.ParseInt(cl, 10, 64); err == nil && v >= 0 {
			w.contentLength = v
		} else {
			w.header.Del("Content-Length")
		}
	}
}

// bodyAllowed reports whether the status may carry a body (not 1xx, 204,
// 304).
func bodyAllowed(code int) bool {
	return code != http.StatusNoContent && code != http.StatusNotModified
}

// Write implements http.ResponseWriter.
func (w *respWriter) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if !bodyAllowed(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	w.written += int64(len(p))
	if w.contentLength != -1 && w.written > w.contentLength {
		return 0, http.ErrContentLength
	}
	// A HEAD response's body is dropped, but, as in Go's server, what fits
	// the buffer still gives the head its Content-Length and Content-Type.
	if !w.committed {
		if len(w.pending)+len(p) <= bodyBufferSize {
			w.pending = append(w.pending, p...)
			return len(p), nil
		}
		w.commit()
	}
	return w.writeBody(p)
}

func (w *respWriter) writeBody(p []byte) (int, error) {
	if w.werr != nil {
		return 0, w.werr
	}
	if w.req.Method == http.MethodHead {
		return len(p), nil
	}
	bw := w.hc.bw
	if w.chunking {
		bw.WriteString(strconv.FormatInt(int64(len(p)), 16))
		bw.WriteString("\r\n")
	}
	n, err := bw.Write(p)
	if w.chunking && err == nil {
		_, err = bw.WriteString("\r\n")
	}
	if err != nil {
		w.werr = err
	}
	return n, err
}

// Flush implements http.Flusher: the head and what is held are sent.
func (w *respWriter) Flush() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	w.commit()
	if err := w.hc.bw.Flush(); err != nil && w.werr == nil {
		w.werr = err
	}
}

// SetReadDeadline bounds reading the request body
// (http.ResponseController).
func (w *respWriter) SetReadDeadline(t time.Time) error { return w.hc.setReadDeadline(t) }

// commit writes the head into the connection's buffer, followed by the
// held body.
func (w *respWriter) commit() {
	if w.committed {
		return
	}
	w.committed = true
	h := w.header
	isHEAD := w.req.Method == http.MethodHead
	te := h.Get("Transfer-Encoding")
	hasTE := te != ""
	if w.handlerDone && !hasTE && bodyAllowed(w.status) && w.contentLength == -1 && (!isHEAD || len(w.pending) > 0) {
		w.contentLength = int64(len(w.pending))
		h.Set("Content-Length", strconv.Itoa(len(w.pending)))
	}
	wants10KeepAlive := !w.req.ProtoAtLeast(1, 1) && hasToken(w.req.Header.Get("Connection"), "keep-alive")
	hasCL := w.contentLength != -1
	if wants10KeepAlive && (isHEAD || hasCL || !bodyAllowed(w.status)) {
		if _, ok := h["Connection"]; !ok {
			h.Set("Connection", "keep-alive")
		}
	} else if !w.req.ProtoAtLeast(1, 1) || w.req.Close {
		w.closeAfter = true
	}
	if hasToken(h.Get("Connection"), "close") {
		w.closeAfter = true
	}
	// A body the client offered after Expect: 100-continue and was not
	// asked for: the next bytes are not a request.
	if w.cont != nil && !w.cont.sent {
		w.closeAfter = true
	}
	if !w.closeAfter {
		w.discardBody()
	}
	if bodyAllowed(w.status) {
		if _, ok := h["Content-Type"]; !ok && !hasTE && h.Get("Content-Encoding") == "" && len(w.pending) > 0 {
			h.Set("Content-Type", http.DetectContentType(w.pending))
		}
	} else {
		h.Del("Content-Length")
		h.Del("Transfer-Encoding")
		if w.status == http.StatusNotModified {
			h.Del("Content-Type")
		}
	}
	if _, ok := h["Date"]; !ok {
		h.Set("Date", msp.FormatDate(time.Now()))
	}
	if hasCL && hasTE && te != "identity" {
		h.Del("Content-Length")
		hasCL = false
	}
	switch {
	case isHEAD || !bodyAllowed(w.status):
		h.Del("Transfer-Encoding")
	case hasCL:
		h.Del("Transfer-Encoding")
	case w.req.ProtoAtLeast(1, 1) && te != "identity":
		w.chunking = true
		h.Set("Transfer-Encoding", "chunked")
		h.Del("Content-Length")
	default:
		// No length and no chunking: the connection's end ends the body.
		w.closeAfter = true
		h.Del("Transfer-Encoding")
	}
	if w.closeAfter && !hasToken(h.Get("Connection"), "close") {
		h.Del("Connection")
		if w.req.ProtoAtLeast(1, 1) {
			h.Set("Connection", "close")
		}
	}
	bw := w.hc.bw
	if w.req.ProtoAtLeast(1, 1) {
		bw.WriteString("HTTP/1.1 ")
	} else {
		bw.WriteString("HTTP/1.0 ")
	}
	bw.WriteString(strconv.Itoa(w.status))
	bw.WriteByte(' ')
	text := http.StatusText(w.status)
	if text == "" {
		text = "status code " + strconv.Itoa(w.status)
	}
	bw.WriteString(text)
	bw.WriteString("\r\n")
	if err := h.Write(bw); err != nil {
		w.werr = err
	}
	bw.WriteString("\r\n")
	if len(w.pending) > 0 {
		w.writeBody(w.pending)
		w.pending = w.pending[:0]
	}
}

// discardBody reads and drops what is left of the request body, so the
// next request on the connection can be read; more than
// postHandlerDiscard, or a broken body, closes the connection instead.
func (w *respWriter) discardBody() {
	if w.req.ContentLength == 0 {
		return
	}
	b, ok := w.req.Body.(*requestBody)
	if !ok {
		if w.cont == nil {
			w.closeAfter = true
			return
		}
		b = w.cont.body.(*requestBody)
	}
	if b.eof {
		return
	}
	_, err := io.CopyN(io.Discard, b, postHandlerDiscard+1)
	switch {
	case err == nil:
		w.closeAfter = true // too big
	case err == io.EOF:
	default:
		w.closeAfter = true
	}
}

// finish completes the response after the handler returned and reports
// whether the connection may serve another request.
func (w *respWriter) finish() bool {
	w.handlerDone = true
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	w.commit()
	if w.chunking && w.werr == nil {
		w.hc.bw.WriteString("0\r\n\r\n")
	}
	if err := w.hc.bw.Flush(); err != nil && w.werr == nil {
		w.werr = err
	}
	if w.closeAfter || w.werr != nil {
		return false
	}
	if w.req.Method != http.MethodHead && w.contentLength != -1 && bodyAllowed(w.status) && w.contentLength != w.written {
		return false // the declared length was not written: out of step
	}
	return !w.bodyUnread()
}

// bodyUnread reports whether the request has a body that was not read to
// its end.
func (w *respWriter) bodyUnread() bool {
	b, _ := w.req.Body.(*requestBody)
	if w.cont != nil {
		b, _ = w.cont.body.(*requestBody)
	}
	return b != nil && w.req.ContentLength != 0 && !b.eof
}

// hasToken reports whether token occurs in the header value v, ignoring
// ASCII case, delimited by the value's ends, spaces, tabs or commas: the
// test Go's server applies to the first Connection and Expect values.
func hasToken(v, token string) bool {
	for sp := 0; sp+len(token) <= len(v); sp++ {
		if sp > 0 && !tokenBoundary(v[sp-1]) {
			continue
		}
		if end := sp + len(token); end != len(v) && !tokenBoundary(v[end]) {
			continue
		}
		if strings.EqualFold(v[sp:sp+len(token)], token) {
			return true
		}
	}
	return false
}

func tokenBoundary(b byte) bool { return b == ' ' || b == ',' || b == '\t' }
