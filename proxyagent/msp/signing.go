// Request endorsement: the canonical form of a request (method, body, headers, path
// and query), its HMAC-SHA256 signature under the latched key, and the
// x-ms-azure-host-authorization header that carries it.
//
// Both sides use it: the proxy agent signs what it forwards, and the
// simulated host recomputes the signature over exactly what it received.
// The canonical form follows shared/spec/protocol.md §2 byte for byte,
// including upstream's quirks (last header value wins, query entries keyed
// by key+value).

package msp

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync/atomic"
	"time"
)

// Header names and fixed values of the protocol.
const (
	// HeaderAuthorization carries the signature on requests and the literal
	// marker "value" on responses that passed through the agent.
	HeaderAuthorization = "x-ms-azure-host-authorization"
	// HeaderClaims carries the caller's claims, always ClaimsValue(isRoot).
	HeaderClaims = "x-ms-azure-host-claims"
	// HeaderDate carries the host-synced RFC 1123 time of the request.
	HeaderDate = "x-ms-azure-host-date"
	// Scheme is the authorization scheme named in the header and in the
	// secure-channel documents.
	Scheme = "Azure-HMAC-SHA256"
	// ResponseMarker is the value of HeaderAuthorization on every response
	// the agent returns from upstream.
	ResponseMarker = "value"
)

// Field is one header line as it appears on the wire: its name in any case
// and its raw value. Order matters only for duplicates (the last wins).
type Field struct {
	Name  string
	Value string
}

// ClaimsValue returns the exact x-ms-azure-host-claims text upstream sends:
// `{ "isRoot": "true"}` or `{ "isRoot": "false"}`.
func ClaimsValue(isRoot bool) string {
	if isRoot {
		return `{ "isRoot": "true"}`
	}
	return `{ "isRoot": "false"}`
}

// FormatDate renders t as the RFC 1123 GMT text used in HeaderDate, for
// example "Wed, 23 Apr 2025 12:00:00 GMT". The text of the last second
// asked for is kept: the requests of one second share it.
func FormatDate(t time.Time) string {
	sec := t.Unix()
	if d := lastDate.Load(); d != nil && d.sec == sec {
		return d.text
	}
	text := t.UTC().Format(http.TimeFormat)
	lastDate.Store(&formattedDate{sec: sec, text: text})
	return text
}

// formattedDate is one FormatDate result.
type formattedDate struct {
	sec  int64
	text string
}

var lastDate atomic.Pointer[formattedDate]

// ParseDate parses a HeaderDate value written by FormatDate.
func ParseDate(s string) (time.Time, error) {
	return time.Parse(http.TimeFormat, strings.TrimSpace(s))
}

// ValidHeaderValue reports whether v holds only visible ASCII, space and
// tab. Upstream crashes on anything else; callers reject such requests
// instead of signing them.
func ValidHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '\t' || (c >= 0x20 && c < 0x7f) {
			continue
		}
		return false
	}
	return true
}

// CanonicalHeaders returns the header block of the string-to-sign: names
// lower-cased, the last value of a repeated name kept, HeaderAuthorization
// dropped, names sorted byte-wise, each emitted as "name:trimmed-value\n".
func CanonicalHeaders(fields []Field) string {
	last := make(map[string]string, len(fields))
	for _, f := range fields {
		last[strings.ToLower(f.Name)] = f.Value
	}
	delete(last, HeaderAuthorization)
	names := make([]string, 0, len(last))
	for n := range last {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		b.WriteString(n)
		b.WriteByte(':')
		b.WriteString(strings.TrimSpace(last[n]))
		b.WriteByte('\n')
	}
	return b.String()
}

// CanonicalQuery returns the query line of the string-to-sign for a raw
// (still percent-encoded) query string: pieces split on '&' and the first
// '=', empty keys skipped, keys lower-cased, values kept as received,
// entries de-duplicated and sorted by key+value, and joined with '&'.
func CanonicalQuery(rawQuery string) string {
	if rawQuery == "" {
		return ""
	}
	type pair struct{ key, value string }
	entries := make(map[string]pair)
	for _, piece := range strings.Split(rawQuery, "&") {
		k, v, _ := strings.Cut(piece, "=")
		if k == "" {
			continue
		}
		k = strings.ToLower(k)
		entries[k+v] = pair{k, v}
	}
	sortKeys := make([]string, 0, len(entries))
	for s := range entries {
		sortKeys = append(sortKeys, s)
	}
	sort.Strings(sortKeys)
	var b strings.Builder
	for i, s := range sortKeys {
		if i > 0 {
			b.WriteByte('&')
		}
		p := entries[s]
		b.WriteString(p.key)
		if p.value != "" {
			b.WriteByte('=')
			b.WriteString(p.value)
		}
	}
	return b.String()
}

// StringToSign builds the exact bytes that are signed:
//
//	METHOD "\n" BODY "\n" CANONICAL_HEADERS PATH "\n" CANONICAL_QUERY
//
// target is the request-target as sent (origin or absolute form) and
// fields every header of the request as sent, Host included.
func StringToSign(method, target string, fields []Field, body []byte) []byte {
	return AppendStringToSign(make([]byte, 0, len(method)+len(body)+len(target)+64*len(fields)+2), method, target, fields, body)
}

// Exempt reports whether a request is one of the two uploads that upstream
// never signs (PUT /vmAgentLog and POST /machine/?comp=telemetrydata). The
// comparison is on the lower-cased raw target, so any other spelling is not
// exempt.
func Exempt(method, target string) bool {
	t := strings.ToLower(target)
	switch method {
	case http.MethodPut:
		return t == "/vmagentlog"
	case http.MethodPost:
		return t == TelemetryDataPath
	}
	return false
}

// Key is a latched secure-channel key: its GUID and the 32-byte HMAC secret
// decoded from the host's hex text. Its String and Format methods never
// print the secret.
type Key struct {
	GUID   string
	secret []byte
	macs   *macs // reusable HMAC states of secret
}

// ErrInvalidKey is returned when the key text is not valid hex.
var ErrInvalidKey = errors.New("signing: key is not valid hex")

// NewKey decodes hexKey (either case) into a Key. The error never contains
// the key text.
func NewKey(guid, hexKey string) (*Key, error) {
	secret, err := hex.DecodeString(hexKey)
	if err != nil || len(secret) == 0 {
		return nil, ErrInvalidKey
	}
	return &Key{GUID: guid, secret: secret, macs: newMACs(secret)}, nil
}

// String names the key by GUID only.
func (k Key) String() string { return fmt.Sprintf("key %s", k.GUID) }

// GoString names the key by GUID only, so %#v cannot leak the secret.
func (k Key) GoString() string { return k.String() }

// Sign returns the lower-case hex HMAC-SHA256 of msg under the key.
func (k *Key) Sign(msg []byte) string {
	var buf [2 * sha256.Size]byte
	return string(k.appendSignature(buf[:0], msg))
}

// Authorization returns the full HeaderAuthorization value for msg:
// "Azure-HMAC-SHA256 <guid> <signature>".
func (k *Key) Authorization(msg []byte) string {
	var buf [160]byte
	b := append(buf[:0], Scheme...)
	b = append(b, ' ')
	b = append(b, k.GUID...)
	b = append(b, ' ')
	return string(k.appendSignature(b, msg))
}

// Verify reports, in constant time, whether sigHex is the signature of msg.
func (k *Key) Verify(msg []byte, sigHex string) bool {
	got, err := hex.DecodeString(sigHex)
	if err != nil {
		return false
	}
	m := hmac.New(sha256.New, k.secret)
	m.Write(msg)
	return hmac.Equal(m.Sum(nil), got)
}

// ParseAuthorization splits a HeaderAuthorization value into key GUID and
// hex signature. ok is false unless the value is exactly
// "Azure-HMAC-SHA256 <guid> <sig>" with single spaces.
func ParseAuthorization(v string) (guid, sig string, ok bool) {
	parts := strings.Split(v, " ")
	if len(parts) != 3 || parts[0] != Scheme || parts[1] == "" || parts[2] == "" {
		return "", "", false
	}
	return parts[1], parts[2], true
}
