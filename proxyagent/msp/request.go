package msp

import (
	"bufio"
	"errors"
	"strings"
	"time"
)

// Request is a request as the agent writes it to the host, byte for byte:
// the request line with the raw target, the header fields in the order
// given (exactly the ones signed: nothing is added on the wire), and a
// buffered body. The proxy, the key keeper and the simulated host's
// clients all write requests through it, and the simulated host checks
// what it receives with Verify.
type Request struct {
	Method string
	Target string // raw request-target, origin or absolute form
	Fields []Field
	Body   []byte // buffered body; a streamed body is written by the caller after WriteHead
}

// Sign appends HeaderAuthorization computed over the request as it
// stands; call it after every other field is in place.
func (r *Request) Sign(k *Key) {
	buf := stsBuffers.Get().(*[]byte)
	*buf = AppendStringToSign((*buf)[:0], r.Method, r.Target, r.Fields, r.Body)
	r.Fields = append(r.Fields, Field{Name: HeaderAuthorization, Value: k.Authorization(*buf)})
	if cap(*buf) <= 64<<10 { // a large signed body's buffer is not kept
		stsBuffers.Put(buf)
	}
}

// WriteHead writes the request line and the header block, ending with the
// empty line. Errors are bufio's sticky errors, reported by Flush.
func (r *Request) WriteHead(bw *bufio.Writer) {
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	bw.WriteString(r.Target)
	bw.WriteString(" HTTP/1.1\r\n")
	for _, f := range r.Fields {
		bw.WriteString(f.Name)
		bw.WriteString(": ")
		bw.WriteString(f.Value)
		bw.WriteString("\r\n")
	}
	bw.WriteString("\r\n")
}

// Write writes the head and the buffered body and flushes.
func (r *Request) Write(bw *bufio.Writer) error {
	r.WriteHead(bw)
	bw.Write(r.Body)
	return bw.Flush()
}

// Errors of Verify.
var (
	// ErrUnsigned: the request carries no HeaderAuthorization.
	ErrUnsigned = errors.New("msp: request is not signed")
	// ErrBadSignature: a malformed or repeated authorization header, a key
	// GUID other than the key's, a header value that cannot be signed, or a
	// signature that does not verify.
	ErrBadSignature = errors.New("msp: request signature does not verify")
	// ErrBadDate: the signature verifies but HeaderDate is missing,
	// repeated, unparsable or further than the allowed skew from now.
	ErrBadDate = errors.New("msp: request date is missing or out of range")
)

// Verify checks the endorsement of a request as received: Fields must be
// every header as it arrived (Host included) and Body the exact body
// bytes. It recomputes the signature under key (nil: no key latched) and
// checks the date against now within skew. It returns the key GUID the
// authorization header names ("" when there is none or it is malformed)
// and nil, ErrUnsigned, ErrBadSignature or ErrBadDate. Comparisons of the
// signature are constant-time.
func (r *Request) Verify(key *Key, now time.Time, skew time.Duration) (guid string, err error) {
	auths, dates := r.values(HeaderAuthorization), r.values(HeaderDate)
	switch {
	case len(auths) == 0:
		return "", ErrUnsigned
	case len(auths) > 1:
		return "", ErrBadSignature
	}
	guid, sig, ok := ParseAuthorization(auths[0])
	if !ok {
		return "", ErrBadSignature
	}
	if key == nil || guid != key.GUID {
		return guid, ErrBadSignature
	}
	for _, f := range r.Fields {
		if !ValidHeaderValue(f.Value) {
			return guid, ErrBadSignature
		}
	}
	if !key.Verify(StringToSign(r.Method, r.Target, r.Fields, r.Body), sig) {
		return guid, ErrBadSignature
	}
	if len(dates) != 1 {
		return guid, ErrBadDate
	}
	t, err := ParseDate(dates[0])
	if err != nil {
		return guid, ErrBadDate
	}
	if d := now.Sub(t); d > skew || d < -skew {
		return guid, ErrBadDate
	}
	return guid, nil
}

// values returns the values of the fields named name (any case).
func (r *Request) values(name string) []string {
	var out []string
	for _, f := range r.Fields {
		if strings.EqualFold(f.Name, name) {
			out = append(out, f.Value)
		}
	}
	return out
}
