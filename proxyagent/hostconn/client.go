package hostconn

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"

	"github.com/opengpa/gpa/proxyagent/msp"
)

// MaxBodyBytes bounds a response body the agent reads from the host; real
// ones (key status with rules, goal state, shared config, instance
// metadata) are a few KiB.
const MaxBodyBytes = 4 << 20

// MaxHeadBytes bounds the head of the host's answer (status line and
// header fields) on top of MaxBodyBytes.
const MaxHeadBytes = 64 << 10

// Client makes the agent's own calls to one host service (protocol.md
// §1.1) over a fresh TCP connection each, writing the request bytes
// itself so the headers sent are exactly the ones signed: no User-Agent,
// no Accept-Encoding, nothing else. Every request carries the common
// headers — x-ms-azure-host-date from Now, host (Addr without its port),
// x-ms-azure-host-claims of a root caller — then the caller's fields and
// content-length. A Client is safe for concurrent use.
type Client struct {
	// Addr is the host:port dialled.
	Addr string
	// Timeout bounds each call: connect, send and the whole answer.
	Timeout time.Duration
	// Dial opens the connection; typically Dialer(mark, Timeout).DialContext.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Now is the host-synced clock of x-ms-azure-host-date.
	Now func() time.Time
}

// Response is what the agent keeps of an answer: status code, headers and
// the whole body (at most MaxBodyBytes).
type Response struct {
	Code   int
	Header http.Header
	Body   []byte
}

// OK reports a 2xx status.
func (r *Response) OK() bool { return r.Code >= 200 && r.Code <= 299 }

// Do sends one request and reads the whole answer, all within c.Timeout.
// fields come after the common headers and before content-length; key,
// when not nil, signs the request (§2) after every field is in place.
func (c *Client) Do(ctx context.Context, method, target string, fields []msp.Field, body []byte, key *msp.Key) (*Response, error) {
	host, _, err := net.SplitHostPort(c.Addr)
	if err != nil {
		return nil, fmt.Errorf("host address %q: %w", c.Addr, err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()

	req := msp.Request{Method: method, Target: target, Body: body, Fields: make([]msp.Field, 0, 5+len(fields))}
	req.Fields = append(req.Fields,
		msp.Field{Name: msp.HeaderDate, Value: msp.FormatDate(c.Now())},
		msp.Field{Name: "host", Value: host},
		msp.Field{Name: msp.HeaderClaims, Value: msp.ClaimsValue(true)})
	req.Fields = append(req.Fields, fields...)
	req.Fields = append(req.Fields, msp.Field{Name: "content-length", Value: strconv.Itoa(len(body))})
	if key != nil {
		req.Sign(key)
	}

	conn, err := c.Dial(ctx, "tcp", c.Addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", c.Addr, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	// Closing the connection unblocks I/O when ctx is cancelled early.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if err := req.Write(bufio.NewWriter(conn)); err != nil {
		return nil, fmt.Errorf("send %s %s: %w", method, target, err)
	}
	// The whole answer, head included, is bounded: net/http reads a
	// response head without a size limit.
	resp, err := http.ReadResponse(bufio.NewReader(io.LimitReader(conn, MaxBodyBytes+MaxHeadBytes)), &http.Request{Method: method})
	if err != nil {
		return nil, fmt.Errorf("read response to %s %s: %w", method, target, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxBodyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read response body of %s %s: %w", method, target, err)
	}
	if len(data) > MaxBodyBytes {
		return nil, fmt.Errorf("response body of %s %s exceeds %d bytes", method, target, MaxBodyBytes)
	}
	return &Response{Code: resp.StatusCode, Header: resp.Header, Body: data}, nil
}

// DecodeCharset turns a response body into UTF-8 following upstream's
// read_response_body: a Content-Type whose charset names utf-16 is decoded
// as UTF-16LE (after an optional byte-order mark), utf-32 is an error, and
// anything else is taken as UTF-8.
func DecodeCharset(contentType string, body []byte) ([]byte, error) {
	ct := strings.ToLower(contentType)
	switch {
	case strings.Contains(ct, "utf-32"):
		return nil, errors.New("unsupported response charset utf-32")
	case strings.Contains(ct, "utf-16"):
		if len(body) >= 2 && body[0] == 0xFF && body[1] == 0xFE {
			body = body[2:]
		}
		u := make([]uint16, 0, len(body)/2)
		for i := 0; i+1 < len(body); i += 2 {
			u = append(u, uint16(body[i])|uint16(body[i+1])<<8)
		}
		return []byte(string(utf16.Decode(u))), nil
	}
	return body, nil
}

// IsXML reports whether a Content-Type announces XML (upstream reads such a
// body as XML and any other as JSON).
func IsXML(contentType string) bool {
	return strings.Contains(strings.ToLower(contentType), "xml")
}
