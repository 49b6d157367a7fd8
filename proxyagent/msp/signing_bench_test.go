package msp

import (
	"strings"
	"testing"
	"time"
)

// benchFields are the headers of a typical proxied IMDS request as the
// agent signs them.
var benchFields = []Field{
	{Name: "Host", Value: "169.254.169.254"},
	{Name: "Metadata", Value: "true"},
	{Name: "User-Agent", Value: "azsdk-go-azidentity/v1.5.0 (go1.22; linux)"},
	{Name: HeaderClaims, Value: ClaimsValue(false)},
	{Name: HeaderDate, Value: FormatDate(time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC))},
}

const benchTarget = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F"

// BenchmarkSignRequest is the signing cost of one request: canonical
// headers and query, string-to-sign and the HMAC-SHA256 Authorization
// value.
func BenchmarkSignRequest(b *testing.B) {
	k, err := NewKey("00000000-0000-0000-0000-000000000001", strings.Repeat("ab", 32))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = k.Authorization(StringToSign("GET", benchTarget, benchFields, nil))
	}
}

// BenchmarkHMAC is the HMAC alone over a typical string-to-sign.
func BenchmarkHMAC(b *testing.B) {
	k, err := NewKey("00000000-0000-0000-0000-000000000001", strings.Repeat("ab", 32))
	if err != nil {
		b.Fatal(err)
	}
	msg := StringToSign("GET", benchTarget, benchFields, nil)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		_ = k.Sign(msg)
	}
}

// BenchmarkRequestSign is what the proxy does per forwarded request: sign
// a Request in place (reused string-to-sign buffer and HMAC state).
func BenchmarkRequestSign(b *testing.B) {
	k, err := NewKey("00000000-0000-0000-0000-000000000001", strings.Repeat("ab", 32))
	if err != nil {
		b.Fatal(err)
	}
	fields := make([]Field, len(benchFields), len(benchFields)+1)
	b.ReportAllocs()
	for b.Loop() {
		copy(fields, benchFields)
		r := Request{Method: "GET", Target: benchTarget, Fields: fields[:len(benchFields)]}
		r.Sign(k)
	}
}
