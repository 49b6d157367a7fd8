package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"

	"github.com/opengpa/gpa/proxyagent/rawio"
)

// maxHead bounds a request or response head (bytes).
const maxHead = 16 << 10

// relay forwards GET requests from client connections to one upstream
// over a pool of kept-alive connections.
type relay struct {
	upstream string // host:port, also sent as Host
	idle     chan *upConn
	// raw: socket calls as the agent makes them (package rawio): raw
	// accept, reads, writes and close inside Go's poller.
	raw bool
	fds rawio.Releaser // with raw, finished client descriptors
}

// upConn is a kept-alive upstream connection and its reader.
type upConn struct {
	c  net.Conn
	br *bufio.Reader
}

func newRelay(upstream string, keep int, raw bool) *relay {
	return &relay{upstream: upstream, idle: make(chan *upConn, keep), raw: raw}
}

// listen listens on addr for the relay: with raw, a listener that accepts
// with raw calls (rawio.Listen).
func (r *relay) listen(addr string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil || !r.raw {
		return l, err
	}
	rl, err := rawio.Listen(l) // closes l on error
	if err == nil && rl == l {
		l.Close()
		err = fmt.Errorf("-raw: rawio accepts on IPv4 listeners on Linux only, not %s", addr)
	}
	if err != nil {
		return nil, err
	}
	return rl, nil
}

// serve accepts client connections until l is closed.
func (r *relay) serve(l net.Listener) error {
	defer r.fds.Flush()
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go r.serveConn(c)
	}
}

// serveConn relays the requests of one client connection until it closes,
// asks to close, or sends something the relay does not handle (then it
// answers 501 and closes).
func (r *relay) serveConn(c net.Conn) {
	if r.raw {
		defer rawio.CloseOwned(c, &r.fds)
	} else {
		defer c.Close()
	}
	br := bufio.NewReader(c)
	var req, out []byte
	for {
		var err error
		var keep bool
		req, keep, err = r.readRequest(br, req[:0])
		if err != nil {
			if !errors.Is(err, io.EOF) {
				c.Write([]byte("HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
			}
			return
		}
		out, err = r.roundTrip(req, out[:0])
		if err != nil {
			c.Write([]byte("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
			return
		}
		if _, err := c.Write(out); err != nil || !keep {
			return
		}
	}
}

// readRequest reads one request head from br and appends it to dst as it
// goes upstream: Host set to the upstream, Connection dropped (hop by
// hop). keep is false when the client asked to close. Requests with a
// body are not handled.
func (r *relay) readRequest(br *bufio.Reader, dst []byte) (head []byte, keep bool, err error) {
	line, err := readLine(br)
	if err != nil {
		return dst, false, err
	}
	if !bytes.HasPrefix(line, []byte("GET ")) || !bytes.HasSuffix(line, []byte(" HTTP/1.1")) {
		return dst, false, fmt.Errorf("request line %q: only GET over HTTP/1.1", line)
	}
	dst = append(append(dst, line...), "\r\nHost: "...)
	dst = append(append(dst, r.upstream...), "\r\n"...)
	keep = true
	for n := len(line); ; {
		line, err = readLine(br)
		if n += len(line); err != nil || n > maxHead {
			return dst, false, errors.Join(err, errors.New("request head too long or cut"))
		}
		if len(line) == 0 {
			return append(dst, "\r\n"...), keep, nil
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		switch {
		case !ok:
			return dst, false, fmt.Errorf("header line %q", line)
		case equalFold(name, "Content-Length") || equalFold(name, "Transfer-Encoding"):
			return dst, false, errors.New("request body")
		case equalFold(name, "Host"):
		case equalFold(name, "Connection"):
			keep = !equalFold(bytes.TrimSpace(value), "close")
		default:
			dst = append(append(dst, line...), "\r\n"...)
		}
	}
}

// roundTrip sends req on a pooled (or new) upstream connection and appends
// the whole response to out. When a pooled connection turns out closed
// before any byte of a response came back, the request is sent once more
// on a new connection.
func (r *relay) roundTrip(req, out []byte) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		u, pooled, err := r.get(attempt > 0)
		if err != nil {
			return out, err
		}
		var keep bool
		resp := out
		if _, err = u.c.Write(req); err == nil {
			resp, keep, err = readResponse(u.br, out)
		} else {
			err = noResponse{err}
		}
		if err != nil {
			u.c.Close()
			if _, none := err.(noResponse); none && pooled && attempt == 0 {
				continue
			}
			return out, err
		}
		r.put(u, keep)
		return resp, nil
	}
}

// noResponse is a failure before any byte of a response was read: the
// request may be sent again.
type noResponse struct{ err error }

func (e noResponse) Error() string { return "no response: " + e.err.Error() }

// get takes an idle upstream connection, or dials one (always with dial).
func (r *relay) get(dial bool) (u *upConn, pooled bool, err error) {
	if !dial {
		select {
		case u := <-r.idle:
			return u, true, nil
		default:
		}
	}
	c, err := net.Dial("tcp", r.upstream)
	if err != nil {
		return nil, false, err
	}
	if r.raw {
		c = rawio.Wrap(c)
	}
	return &upConn{c: c, br: bufio.NewReader(c)}, false, nil
}

// put keeps u for the next request, or closes it.
func (r *relay) put(u *upConn, keep bool) {
	if keep {
		select {
		case r.idle <- u:
			return
		default:
		}
	}
	u.c.Close()
}

// readResponse appends one response (head and Content-Length body) from
// br to dst. keep is false when the upstream closes after it. An error
// before the response's first byte is a noResponse.
func readResponse(br *bufio.Reader, dst []byte) (resp []byte, keep bool, err error) {
	start := len(dst)
	if _, err := br.Peek(1); err != nil {
		return dst, false, noResponse{err}
	}
	line, err := readLine(br)
	if err != nil {
		return dst[:start], false, err
	}
	if !bytes.HasPrefix(line, []byte("HTTP/1.1 ")) || len(line) < 12 {
		return dst[:start], false, fmt.Errorf("status line %q", line)
	}
	status := string(line[9:12])
	length := -1
	keep = true
	dst = append(append(dst, line...), "\r\n"...)
	for n := len(line); ; {
		line, err = readLine(br)
		if n += len(line); err != nil || n > maxHead {
			return dst[:start], false, errors.Join(err, errors.New("response head too long or cut"))
		}
		dst = append(append(dst, line...), "\r\n"...)
		if len(line) == 0 {
			break
		}
		name, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimSpace(value)
		switch {
		case equalFold(name, "Content-Length"):
			if length, err = strconv.Atoi(string(value)); err != nil || length < 0 {
				return dst[:start], false, fmt.Errorf("Content-Length %q", value)
			}
		case equalFold(name, "Transfer-Encoding"):
			return dst[:start], false, errors.New("chunked response")
		case equalFold(name, "Connection"):
			keep = !equalFold(value, "close")
		}
	}
	if status == "204" || status == "304" {
		length = 0
	}
	if length < 0 {
		return dst[:start], false, errors.New("response without Content-Length")
	}
	body := len(dst)
	dst = append(dst, make([]byte, length)...)
	if _, err := io.ReadFull(br, dst[body:]); err != nil {
		return dst[:start], false, err
	}
	return dst, keep, nil
}

// readLine returns the next line without its CRLF (or LF); the bytes are
// valid until the next read from br.
func readLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, errors.New("line too long")
		}
		if errors.Is(err, io.EOF) && len(line) > 0 {
			return nil, io.ErrUnexpectedEOF
		}
		return nil, err
	}
	line = line[:len(line)-1]
	return bytes.TrimSuffix(line, []byte("\r")), nil
}

// equalFold reports whether b is s, ignoring ASCII case.
func equalFold(b []byte, s string) bool {
	return len(b) == len(s) && bytes.EqualFold(b, []byte(s))
}
