package keykeeper

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

// maxBodyBytes bounds a secure-channel response body; real ones are a few
// KiB even with rules.
const maxBodyBytes = 4 << 20

// hostClient makes the three secure-channel calls of protocol.md §1.1 over
// a fresh TCP connection each, writing the request bytes itself so the
// headers sent are exactly the ones signed: no User-Agent, no
// Accept-Encoding, nothing else.
type hostClient struct {
	addr    string // host:port of the WireServer
	host    string // host header value: addr without port
	timeout time.Duration
	dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	now     func() time.Time // host-synced clock for x-ms-azure-host-date
}

// response is what the key keeper needs from an answer.
type response struct {
	code   int
	header http.Header
	body   []byte
}

// do sends one request and reads the whole answer, all within c.timeout.
// key, when not nil, signs the request (attestation).
func (c *hostClient) do(ctx context.Context, method, target, contentType string, body []byte, key *msp.Key) (*response, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()

	req := msp.Request{Method: method, Target: target, Body: body, Fields: []msp.Field{
		{Name: msp.HeaderDate, Value: msp.FormatDate(c.now())},
		{Name: "host", Value: c.host},
		{Name: msp.HeaderClaims, Value: msp.ClaimsValue(true)},
		{Name: "metadata", Value: msp.MetadataHeaderValue},
	}}
	if contentType != "" {
		req.Fields = append(req.Fields, msp.Field{Name: "content-type", Value: contentType})
	}
	req.Fields = append(req.Fields, msp.Field{Name: "content-length", Value: strconv.Itoa(len(body))})
	if key != nil {
		req.Sign(key)
	}

	conn, err := c.dial(ctx, "tcp", c.addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", c.addr, err)
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
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		return nil, fmt.Errorf("read response to %s %s: %w", method, target, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBodyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read response body of %s %s: %w", method, target, err)
	}
	if len(data) > maxBodyBytes {
		return nil, fmt.Errorf("response body of %s %s exceeds %d bytes", method, target, maxBodyBytes)
	}
	return &response{code: resp.StatusCode, header: resp.Header, body: data}, nil
}

// status performs GET /secure-channel/status: any 2xx is success.
func (c *hostClient) status(ctx context.Context) (*response, error) {
	r, err := c.do(ctx, http.MethodGet, msp.StatusPath, "", nil, nil)
	if err != nil {
		return nil, err
	}
	if r.code < 200 || r.code > 299 {
		return nil, fmt.Errorf("GET %s returned status %d", msp.StatusPath, r.code)
	}
	return r, nil
}

// acquire performs POST /secure-channel/key: exactly 200 is success.
func (c *hostClient) acquire(ctx context.Context) (*msp.IssuedKey, error) {
	r, err := c.do(ctx, http.MethodPost, msp.KeyPath, "application/json", []byte(msp.KeyRequestBody), nil)
	if err != nil {
		return nil, err
	}
	if r.code != http.StatusOK {
		return nil, fmt.Errorf("POST %s returned status %d", msp.KeyPath, r.code)
	}
	body, err := decodeBody(r.header.Get("Content-Type"), r.body)
	if err != nil {
		return nil, err
	}
	return msp.ParseIssuedKey(body)
}

// attest performs the signed POST /secure-channel/key/<guid>/key-attestation:
// exactly 200 is success; the body is ignored.
func (c *hostClient) attest(ctx context.Context, key *msp.Key) error {
	target := fmt.Sprintf(msp.AttestationPathFormat, key.GUID)
	r, err := c.do(ctx, http.MethodPost, target, "", nil, key)
	if err != nil {
		return err
	}
	if r.code != http.StatusOK {
		return fmt.Errorf("POST %s returned status %d", target, r.code)
	}
	return nil
}

// decodeBody turns a JSON response body into UTF-8 following upstream's
// read_response_body: charset utf-16 is decoded as UTF-16LE, utf-32 is an
// error, anything else is taken as UTF-8. An XML body is an error here: every
// secure-channel answer is JSON.
func decodeBody(contentType string, body []byte) ([]byte, error) {
	ct := strings.ToLower(contentType)
	if strings.Contains(ct, "xml") {
		return nil, errors.New("unexpected XML response body")
	}
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
