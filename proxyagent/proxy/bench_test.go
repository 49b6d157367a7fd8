package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/opengpa/gpa/proxyagent/msp"
)

// benchRoundTrips sends b.N keep-alive GETs on one connection c.
func benchRoundTrips(b *testing.B, c net.Conn, raw string) {
	br := bufio.NewReader(c)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := io.WriteString(c, raw); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
}

const benchRequest = "GET /metadata/instance?api-version=2021-02-01&format=json HTTP/1.1\r\n" +
	"Host: 169.254.169.254\r\nMetadata: true\r\nUser-Agent: bench\r\n\r\n"

// BenchmarkProxyKeepAlive is one proxied, signed request per iteration on
// a kept-alive connection (authorization, signing, upstream round trip).
// Compare with BenchmarkDirectKeepAlive for the cost the proxy adds.
func BenchmarkProxyKeepAlive(b *testing.B) {
	e := newEnv(b, nil)
	c := e.connect(userRec(imdsDest))
	benchRoundTrips(b, c.c, benchRequest)
	b.StopTimer()
	if r := e.up.requests(); len(r) == 0 || !r[len(r)-1].sigOK {
		b.Fatal("requests not signed")
	}
}

// BenchmarkDirectKeepAlive is the same request sent straight to the fake
// upstream, the baseline for BenchmarkProxyKeepAlive.
func BenchmarkDirectKeepAlive(b *testing.B) {
	up := newFakeUpstream(b)
	c, err := net.Dial("tcp4", up.addr())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	benchRoundTrips(b, c, benchRequest)
}

// BenchmarkSignRequest is the proxy's per-request header work without I/O:
// header filtering, string-to-sign and HMAC.
func BenchmarkSignRequest(b *testing.B) {
	e := newEnv(b, nil)
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(benchRequest)))
	if err != nil {
		b.Fatal(err)
	}
	key := e.keys.Key()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		f := outHeaders(r)
		f = append(f, msp.Field{Name: msp.HeaderClaims, Value: msp.ClaimsValue(false)},
			msp.Field{Name: msp.HeaderDate, Value: msp.FormatDate(testNow)})
		sts := msp.StringToSign(r.Method, r.RequestURI, f, nil)
		_ = key.Authorization(sts)
	}
}

// BenchmarkProxyNewConn is one proxied, signed request per iteration on a
// new client connection (accept, identity, claims, upstream from the
// pool, request, close). Compare with BenchmarkDirectNewConn.
func BenchmarkProxyNewConn(b *testing.B) {
	e := newEnv(b, nil)
	b.ReportAllocs()
	for b.Loop() {
		c := e.connect(userRec(imdsDest))
		benchOne(b, c.c, benchRequest)
		c.c.Close()
	}
	b.StopTimer()
	b.ReportMetric(float64(e.up.conns.Load()), "upstream-conns")
}

// BenchmarkDirectNewConn is the same request on a new connection straight
// to the fake upstream, the baseline for BenchmarkProxyNewConn.
func BenchmarkDirectNewConn(b *testing.B) {
	up := newFakeUpstream(b)
	b.ReportAllocs()
	for b.Loop() {
		c, err := net.Dial("tcp4", up.addr())
		if err != nil {
			b.Fatal(err)
		}
		benchOne(b, c, benchRequest)
		c.Close()
	}
}

// benchOne sends one request on c and reads the whole response.
func benchOne(b *testing.B, c net.Conn, raw string) {
	if _, err := io.WriteString(c, raw); err != nil {
		b.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		b.Fatalf("status %d", resp.StatusCode)
	}
}
