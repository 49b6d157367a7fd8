package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/opengpa/gpa/proxyagent/audit"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// removedHeaders are never forwarded as the client sent them: hop-by-hop
// headers (this proxy frames and keeps alive its own upstream connection),
// Expect (the client side already answered it) and the framing headers the
// proxy rewrites. Keys are canonical.
var removedHeaders = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
	"Content-Length": true, "Expect": true, "Host": true, "Forwarded": true,
}

// spoofable reports whether a header name (any case, '_' for '-') is one
// only the proxy may set: the protocol's x-ms-azure-host-* headers and the
// forwarding headers IMDS rejects. Underscore spellings count too, as some
// servers (CGI-style header maps) read them as the dashed name.
func spoofable(name string) bool {
	return hasPrefixFold(name, "x-ms-azure-host-") || hasPrefixFold(name, "x-forwarded-") || hasPrefixFold(name, "forwarded") && len(name) == len("forwarded")
}

// hasPrefixFold is strings.HasPrefix ignoring ASCII case and reading '_'
// as '-', for a lower-case prefix.
func hasPrefixFold(s, prefix string) bool {
	if len(s) < len(prefix) {
		return false
	}
	for i := 0; i < len(prefix); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		} else if c == '_' {
			c = '-'
		}
		if c != prefix[i] {
			return false
		}
	}
	return true
}

// outHeaders returns the client's headers as they go upstream, before the
// proxy adds its own: Host first (as the client sent it; for an
// absolute-form target http.ReadRequest, as RFC 9112 §3.2.2 requires of a
// proxy, replaces it with the target's authority), then the remaining
// headers sorted by name, each name's values in received order.
func outHeaders(r *http.Request) []msp.Field {
	var named map[string]bool // lower-case names listed in Connection
	for _, v := range r.Header["Connection"] {
		if named == nil {
			named = map[string]bool{}
		}
		for _, tok := range strings.Split(v, ",") {
			if tok = strings.TrimSpace(tok); tok != "" {
				named[strings.ToLower(tok)] = true
			}
		}
	}
	keys := make([]string, 0, len(r.Header))
	for k := range r.Header {
		if removedHeaders[k] || spoofable(k) || (named != nil && named[strings.ToLower(k)]) {
			continue
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fields := make([]msp.Field, 0, len(keys)+5)
	if r.Host != "" {
		fields = append(fields, msp.Field{Name: "Host", Value: r.Host})
	}
	for _, k := range keys {
		for _, v := range r.Header[k] {
			fields = append(fields, msp.Field{Name: k, Value: v})
		}
	}
	return fields
}

// outRequest is one request as written upstream: the signed request
// (buffered body) or, for exempt uploads, its head and a streamed body.
type outRequest struct {
	msp.Request
	stream    *bodyGuard // streamed body (exempt requests), or nil
	streamLen int64      // -1: chunked
}

// bodyGuard reads the client body up to a limit and remembers whether a
// failure was the client's (so it is not blamed on the upstream).
type bodyGuard struct {
	r    io.Reader
	left int64
	err  error
}

var errBodyTooLarge = errors.New("request body exceeds limit")

func (g *bodyGuard) Read(p []byte) (int, error) {
	if g.left <= 0 {
		var one [1]byte
		if n, _ := io.ReadFull(g.r, one[:]); n > 0 {
			g.err = errBodyTooLarge
			return 0, g.err
		}
		return 0, io.EOF
	}
	if int64(len(p)) > g.left {
		p = p[:g.left]
	}
	n, err := g.r.Read(p)
	g.left -= int64(n)
	if err != nil && err != io.EOF {
		g.err = err
	}
	return n, err
}

// readBody reads a signed request's body; a known length (already
// checked against the limit) is allocated once instead of by doubling.
func readBody(g *bodyGuard, length int64) ([]byte, error) {
	if length <= 0 {
		return io.ReadAll(g)
	}
	body := make([]byte, length)
	n, err := io.ReadFull(g, body)
	if err != nil {
		if g.err != nil {
			return nil, g.err
		}
		return nil, err
	}
	// Content-Length bytes read: the body reader stops there.
	return body[:n], nil
}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// forward runs protocol.md §4.5 steps 10–13 for an authorized request.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, st *connState, exempt bool, limit int64, ev *audit.Event) {
	if r.ContentLength != 0 {
		// Bound the body read. Nothing reads the client connection while
		// the host answers, and the wait for the next request sets its own
		// deadline, so this does not cut short a slow host.
		http.NewResponseController(w).SetReadDeadline(time.Now().Add(s.opts.BodyReadTimeout))
	}
	out := &outRequest{Request: msp.Request{Method: r.Method, Target: r.RequestURI, Fields: outHeaders(r)}}
	_, sentLength := r.Header["Content-Length"]
	guard := &bodyGuard{r: r.Body, left: limit}
	if !exempt {
		var body []byte
		var err error
		if r.Body != http.NoBody {
			body, err = readBody(guard, r.ContentLength)
		}
		if err != nil {
			// A chunked body over the limit or a broken body: close without
			// a response, as upstream does.
			ev.Error = "read request body: " + err.Error()
			panic(http.ErrAbortHandler)
		}
		out.Body = body
		if sentLength || r.ContentLength != 0 || len(body) > 0 {
			out.Fields = append(out.Fields, msp.Field{Name: "Content-Length", Value: strconv.Itoa(len(body))})
		}
	} else {
		switch {
		case r.ContentLength < 0:
			out.stream, out.streamLen = guard, -1
			out.Fields = append(out.Fields, msp.Field{Name: "Transfer-Encoding", Value: "chunked"})
		case r.ContentLength > 0 || sentLength:
			out.stream, out.streamLen = guard, r.ContentLength
			out.Fields = append(out.Fields, msp.Field{Name: "Content-Length", Value: strconv.FormatInt(r.ContentLength, 10)})
		}
	}
	out.Fields = append(out.Fields,
		msp.Field{Name: msp.HeaderClaims, Value: msp.ClaimsValue(st.caller.RunAsElevated)},
		msp.Field{Name: msp.HeaderDate, Value: msp.FormatDate(s.opts.Keys.Now())})
	if !exempt {
		if key := s.opts.Keys.Key(); key != nil {
			out.Sign(key)
		}
	}

	resp, up, status, err := s.roundTrip(s.ctx, st, out)
	if err != nil {
		if guard.err != nil {
			ev.Error = "read request body: " + guard.err.Error()
			panic(http.ErrAbortHandler)
		}
		ev.Status, ev.Error = status, "upstream: "+err.Error()
		if s.opts.Metrics != nil {
			s.opts.Metrics.UpstreamFailure(ev, err)
		}
		s.log.Warn("upstream request failed", "httpId", ev.HTTPID, "tcpId", st.tcpID, "dest", st.dest.String(),
			"status", status, "error", err)
		reply(w, status, true)
		return
	}
	ev.Status = resp.StatusCode
	s.relay(w, st, up, resp, ev)
}

// roundTrip writes out on the connection's upstream and reads the response
// head. A kept-alive upstream connection that turns out closed is replaced
// by a new one once, when the request can be replayed safely (buffered
// body, and either nothing reached the host or the method is idempotent).
// The status returned with an error is 502 when the upstream connection is
// unavailable or closed and 503 for other failures.
func (s *Server) roundTrip(ctx context.Context, st *connState, out *outRequest) (*http.Response, *upstream, int, error) {
	for attempt := 0; ; attempt++ {
		up, reused, err := st.take(ctx)
		if err != nil {
			return nil, nil, http.StatusBadGateway, err
		}
		if !st.exchange(up) {
			up.close()
			return nil, nil, http.StatusBadGateway, net.ErrClosed
		}
		werr := writeRequest(up.bw, out)
		var resp *http.Response
		var rerr error
		if werr == nil {
			resp, rerr = readResponse(up.br, out.Method)
		}
		if !st.endExchange() {
			// The server closed the client connection, and with it this
			// upstream connection.
			if resp != nil {
				resp.Body.Close()
			}
			up.close()
			return nil, nil, http.StatusBadGateway, net.ErrClosed
		}
		if werr == nil && rerr == nil {
			return resp, up, 0, nil
		}
		up.close()
		err = werr
		if err == nil {
			err = rerr
		}
		var nr noResponse
		replayable := out.stream == nil &&
			(werr != nil && connGone(werr) || errors.As(rerr, &nr) && idempotent(out.Method))
		if attempt == 0 && reused && replayable {
			s.log.Debug("upstream kept-alive connection closed, reconnecting once", "tcpId", st.tcpID, "error", err)
			continue
		}
		if connGone(err) {
			return nil, nil, http.StatusBadGateway, err
		}
		return nil, nil, http.StatusServiceUnavailable, err
	}
}

func idempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// noResponse is a read failure before the first response byte.
type noResponse struct{ err error }

func (e noResponse) Error() string { return "no response: " + e.err.Error() }
func (e noResponse) Unwrap() error { return e.err }

// connGone reports whether err means the upstream connection is closed.
func connGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNREFUSED)
}

// writeRequest writes out as raw HTTP/1.1 (msp.Request: the header lines
// exactly as signed) followed by its buffered or streamed body.
func writeRequest(bw *bufio.Writer, out *outRequest) error {
	if out.stream == nil {
		return out.Write(bw)
	}
	out.WriteHead(bw)
	switch {
	case out.streamLen < 0:
		cw := httputil.NewChunkedWriter(bw)
		if err := copyBody(cw, out.stream); err != nil {
			return err
		}
		if err := cw.Close(); err != nil {
			return err
		}
		bw.WriteString("\r\n")
	default:
		if err := copyBody(bw, out.stream); err != nil {
			return err
		}
	}
	return bw.Flush()
}

func copyBody(dst io.Writer, src io.Reader) error {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	_, err := io.CopyBuffer(dst, src, *bp)
	return err
}

// readResponse reads the final response head (skipping 1xx interim
// responses) for a request with the given method: the common simple head
// on the fast path (fastResponse), any other with net/http.
func readResponse(br *bufio.Reader, method string) (*http.Response, error) {
	if _, err := br.Peek(1); err != nil {
		return nil, noResponse{err}
	}
	if resp, err := fastResponse(br, method); resp != nil || err != nil {
		return resp, err
	}
	return readFinalResponse(br, method)
}

// readFinalResponse reads response heads with net/http until the final
// one.
func readFinalResponse(br *bufio.Reader, method string) (*http.Response, error) {
	req := &http.Request{Method: method}
	for {
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			return nil, errors.New("unexpected 101 Switching Protocols")
		}
		if resp.StatusCode >= 200 {
			return resp, nil
		}
	}
}

// relay streams the upstream response to the client unchanged except for
// the response marker, and keeps the upstream connection when the response
// ended cleanly.
func (s *Server) relay(w http.ResponseWriter, st *connState, up *upstream, resp *http.Response, ev *audit.Event) {
	h := w.Header()
	for k, vv := range resp.Header {
		h[k] = vv
	}
	// Add nothing the host did not send: no automatic Date, no sniffed
	// Content-Type.
	if _, ok := resp.Header["Date"]; !ok {
		h["Date"] = nil
	}
	if _, ok := resp.Header["Content-Type"]; !ok {
		h["Content-Type"] = nil
	}
	// Trailers are not relayed; a declared Trailer would promise fields
	// that never come.
	delete(h, "Trailer")
	h.Del(msp.HeaderAuthorization)
	h[msp.HeaderAuthorization] = []string{msp.ResponseMarker}
	w.WriteHeader(resp.StatusCode)

	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				up.close()
				ev.Error = "write response to client: " + werr.Error()
				return
			}
			if up.br.Buffered() == 0 {
				flush(w)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			up.close()
			ev.Error = "read upstream response body: " + rerr.Error()
			if errors.Is(rerr, os.ErrDeadlineExceeded) {
				ev.Error = "upstream response timed out"
			}
			if s.opts.Metrics != nil {
				s.opts.Metrics.UpstreamFailure(ev, rerr)
			}
			// The client has a partial response; closing is the only honest
			// way to end it.
			panic(http.ErrAbortHandler)
		}
	}
	resp.Body.Close()
	if resp.Close {
		up.close()
		return
	}
	up.seen = time.Time{}
	st.put(up)
}

// flush sends what w buffered to the client (http.ResponseController.Flush
// without its allocation).
func flush(w http.ResponseWriter) {
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
}
