package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// Almost every message the proxy reads has one simple shape: a client's
// bodiless HTTP/1.1 request with a handful of plain header lines, and the
// host's HTTP/1.1 answer with one Content-Length. Such a head is parsed
// here from the bytes already buffered, into strings that the names and
// values slice, instead of by net/http (BenchmarkReadHead: a curl request
// 0.86 against 1.05 µs and 7 against 11 allocations, an IMDS response 0.75
// against 1.19 µs and 6 against 13). Anything else — a request with a
// body, Transfer-Encoding, HTTP/1.0, an absolute-form target, a 1xx, 204
// or 304 answer or one to HEAD, a repeated Host or Content-Length,
// Trailer, Pragma, a folded line, a bare LF (net/http ends lines and heads
// at one; the fast path declines as soon as it sees one rather than wait
// for a CRLF), a byte net/http would reject or treat specially, a head
// longer than the read buffer — is left to http.ReadRequest and
// http.ReadResponse and their checks. So the fast path only ever gives the
// result net/http gives; FuzzFastRequest and FuzzFastResponse hold it to
// that.

// fastRequest returns the request whose head is buffered (or arrives into
// br's free buffer) when it is a simple bodiless one, consuming its head;
// nil, consuming nothing, otherwise.
func fastRequest(br *bufio.Reader) *http.Request {
	// A failed read is left to net/http, which reads again and reports it
	// (the client's read deadline is fixed, so that costs no second wait).
	head, _ := bufferedHead(br)
	if head == nil {
		return nil
	}
	var parsed http.Request
	// The request line is a string of its own, as net/http's is: the
	// method and target it slices can outlive the request (audit
	// summaries), the header lines cannot.
	end := bytes.Index(head, crlf)
	if !parseSimpleRequest(string(head[:end]), string(head[end+len(crlf):]), &parsed) {
		return nil
	}
	br.Discard(len(head))
	req := new(http.Request)
	*req = parsed
	return req
}

// parseSimpleRequest parses a request line (without its CRLF) and the
// header lines after it (through the blank line, all CRLF-terminated) into
// req when they are of the simple shape, and reports whether they were.
func parseSimpleRequest(line, rest string, req *http.Request) bool {
	method, line, _ := strings.Cut(line, " ")
	target, proto, _ := strings.Cut(line, " ")
	if proto != "HTTP/1.1" || !simpleMethod(method) || target == "" || target[0] != '/' {
		return false
	}
	u, err := url.ParseRequestURI(target)
	if err != nil {
		return false
	}
	h, ok := parseHeaderLines(rest)
	if !ok || len(h["Host"]) > 1 {
		return false
	}
	for _, k := range [...]string{"Content-Length", "Transfer-Encoding", "Trailer", "Pragma"} {
		if _, ok := h[k]; ok {
			return false
		}
	}
	host := u.Host
	if host == "" {
		host = h.Get("Host")
	}
	delete(h, "Host")
	*req = http.Request{
		Method: method, URL: u, RequestURI: target,
		Proto: proto, ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Host: host, Body: http.NoBody,
		Close: httpguts.HeaderValuesContainsToken(h["Connection"], "close"),
	}
	return true
}

// simpleMethod reports a method of upper-case letters other than CONNECT
// (whose target net/http reads in another form).
func simpleMethod(m string) bool {
	if m == "" || m == http.MethodConnect {
		return false
	}
	for _, c := range []byte(m) {
		if c < 'A' || c > 'Z' {
			return false
		}
	}
	return true
}

// fastResponse returns the response whose head is buffered (or arrives
// into br's free buffer) when it is of the simple shape, consuming its
// head; nil, consuming nothing, otherwise. A read that fails before the
// head is complete is returned as the error (io.EOF as
// io.ErrUnexpectedEOF): reading again through net/http would wait out a
// renewed upstream deadline a second time.
func fastResponse(br *bufio.Reader, method string) (*http.Response, error) {
	if method == http.MethodHead {
		return nil, nil
	}
	head, err := bufferedHead(br)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if head == nil {
		return nil, err
	}
	var parsed http.Response
	if !parseSimpleResponse(string(head), &parsed) {
		return nil, nil
	}
	br.Discard(len(head))
	// The response and its body reader in one allocation.
	fr := &struct {
		resp http.Response
		body lengthBody
	}{resp: parsed}
	resp := &fr.resp
	if resp.ContentLength == 0 {
		resp.Body = http.NoBody
	} else {
		fr.body = lengthBody{r: br, left: resp.ContentLength}
		resp.Body = &fr.body
	}
	return resp, nil
}

// parseSimpleResponse parses head (status line, header lines, blank line,
// all CRLF-terminated) into resp when it is of the simple shape, and
// reports whether it was.
func parseSimpleResponse(head string, resp *http.Response) bool {
	const proto = "HTTP/1.1 "
	if !strings.HasPrefix(head, proto) {
		return false
	}
	line, rest, _ := cutCRLF(head[len(proto):])
	code, ok := statusCode(line)
	if !ok || code < 200 || code == http.StatusNoContent || code == http.StatusNotModified {
		return false
	}
	// The reason phrase takes the bytes a header value takes.
	if !httpguts.ValidHeaderFieldValue(line[3:]) {
		return false
	}
	h, ok := parseHeaderLines(rest)
	if !ok {
		return false
	}
	for _, k := range [...]string{"Transfer-Encoding", "Trailer", "Connection", "Pragma"} {
		if _, ok := h[k]; ok {
			return false
		}
	}
	cl := h["Content-Length"]
	if len(cl) != 1 {
		return false
	}
	// As net/http: digits only, at most 2⁶³−1.
	length, err := strconv.ParseUint(cl[0], 10, 63)
	if err != nil {
		return false
	}
	*resp = http.Response{
		Status: line, StatusCode: code,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, ContentLength: int64(length),
	}
	return true
}

// bufferedHead returns the head (through its blank line) at the start of
// br's buffer, reading more while the buffer has room. It returns nil when
// the head does not fit, when a bare LF comes before its end (a line end
// for net/http, so waiting for a CRLF could wait for bytes that never
// come), or with the error of a read that failed first.
func bufferedHead(br *bufio.Reader) ([]byte, error) {
	// Each pass searches only what arrived since the last (a client that
	// sends its head a byte at a time costs no rescans), from 3 bytes back
	// for an end that straddles the two.
	seen := 0
	for {
		n := br.Buffered()
		b, _ := br.Peek(n)
		from := max(seen-len(crlfcrlf)+1, 0)
		if i := bytes.Index(b[from:], crlfcrlf); i >= 0 {
			return b[:from+i+len(crlfcrlf)], nil
		}
		if hasBareLF(b, seen) || n >= br.Size() {
			return nil, nil
		}
		seen = n
		if _, err := br.Peek(n + 1); err != nil {
			return nil, err
		}
	}
}

// hasBareLF reports an LF at or after b[from] that no CR precedes.
func hasBareLF(b []byte, from int) bool {
	for i := from; ; i++ {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return false
		}
		i += j
		if i == 0 || b[i-1] != '\r' {
			return true
		}
	}
}

var (
	crlf     = []byte("\r\n")
	crlfcrlf = []byte("\r\n\r\n")
)

// parseHeaderLines parses "name:value" CRLF-terminated lines up to a blank
// line, as net/http's header reader does, when every line is a plain one
// (headerLine). Names are canonicalized;
// names and values are slices of lines.
func parseHeaderLines(lines string) (http.Header, bool) {
	// The map and the value slices are allocated once, for every line
	// but the blank one.
	n := strings.Count(lines, "\r\n") - 1
	h := make(http.Header, n)
	values := make([]string, n)
	for i := 0; ; i++ {
		var l string
		l, lines, _ = cutCRLF(lines)
		if l == "" {
			return h, true
		}
		name, value, ok := headerLine(l)
		if !ok {
			return nil, false
		}
		key := textproto.CanonicalMIMEHeaderKey(name)
		if vv, dup := h[key]; dup {
			h[key] = append(vv, value)
			continue
		}
		values[i] = value
		h[key] = values[i : i+1 : i+1]
	}
}

// cutCRLF splits s at its first CRLF.
func cutCRLF(s string) (line, rest string, ok bool) {
	if i := strings.Index(s, "\r\n"); i >= 0 {
		return s[:i], s[i+2:], true
	}
	return s, "", false
}

// statusCode reads a status line's code: three digits, then the end or a
// space.
func statusCode(line string) (int, bool) {
	if len(line) < 3 || len(line) > 3 && line[3] != ' ' {
		return 0, false
	}
	code := 0
	for _, c := range []byte(line[:3]) {
		if c < '0' || c > '9' {
			return 0, false
		}
		code = code*10 + int(c-'0')
	}
	return code, true
}

// headerLine splits "name:value" where name is a token and value holds
// only bytes net/http accepts (VCHAR, space, tab, obs-text), trimming the
// value's spaces and tabs at both ends as net/http does.
func headerLine(l string) (name, value string, ok bool) {
	name, value, ok = strings.Cut(l, ":")
	if !ok || !httpguts.ValidHeaderFieldName(name) || !httpguts.ValidHeaderFieldValue(value) {
		return "", "", false
	}
	return name, textproto.TrimString(value), true
}

// lengthBody reads a Content-Length body from the upstream connection as
// net/http's response body does: io.EOF with the last byte,
// io.ErrUnexpectedEOF when the connection ends early.
type lengthBody struct {
	r      *bufio.Reader
	left   int64
	closed bool
}

func (b *lengthBody) Read(p []byte) (int, error) {
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	switch {
	case b.left == 0:
		err = io.EOF
	case err == io.EOF:
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// Close ends reading; an unread rest is not drained (the caller closes a
// connection whose response it did not read to the end).
func (b *lengthBody) Close() error {
	b.closed = true
	return nil
}
