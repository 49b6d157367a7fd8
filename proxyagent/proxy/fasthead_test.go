package proxy

import (
	"bufio"
	"errors"
	"io"
	"net/http"
	"os"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

// curlRequest is a request head as curl sends it to IMDS.
const curlRequest = "GET /metadata/instance?api-version=2021-02-01&format=json HTTP/1.1\r\n" +
	"Host: 169.254.169.254\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\nMetadata: true\r\n\r\n"

// readBothRequests reads raw with http.ReadRequest and with fastRequest
// (net/http where it declines) and fails unless both give the same
// request and leave the same bytes unread; fast reports whether the fast
// path took it.
func readBothRequests(t *testing.T, raw string) (fast bool) {
	t.Helper()
	wbr := bufio.NewReader(strings.NewReader(raw))
	want, wantErr := http.ReadRequest(wbr)
	gbr := bufio.NewReader(strings.NewReader(raw))
	got := fastRequest(gbr)
	fast = got != nil
	if wantErr != nil {
		if fast {
			t.Fatalf("fast path took %q, which net/http refuses: %v", raw, wantErr)
		}
		return false
	}
	if !fast {
		return false
	}
	switch {
	case got.Method != want.Method || got.RequestURI != want.RequestURI || !reflect.DeepEqual(got.URL, want.URL):
		t.Fatalf("%q: request line %s %q %+v, net/http %s %q %+v", raw, got.Method, got.RequestURI, got.URL,
			want.Method, want.RequestURI, want.URL)
	case got.Proto != want.Proto || got.ProtoMajor != want.ProtoMajor || got.ProtoMinor != want.ProtoMinor:
		t.Fatalf("%q: protocol %s, net/http %s", raw, got.Proto, want.Proto)
	case !reflect.DeepEqual(got.Header, want.Header) || got.Host != want.Host:
		t.Fatalf("%q: headers %v host %q, net/http %v %q", raw, got.Header, got.Host, want.Header, want.Host)
	case got.Close != want.Close || got.ContentLength != want.ContentLength || got.Body != want.Body ||
		!reflect.DeepEqual(got.TransferEncoding, want.TransferEncoding) || !reflect.DeepEqual(got.Trailer, want.Trailer):
		t.Fatalf("%q: framing differs from net/http's", raw)
	}
	wrest, _ := io.ReadAll(wbr)
	grest, _ := io.ReadAll(gbr)
	if string(grest) != string(wrest) {
		t.Fatalf("%q: left %q unread, net/http %q", raw, grest, wrest)
	}
	return true
}

func TestFastRequest(t *testing.T) {
	taken := []string{
		curlRequest,
		curlRequest + curlRequest,
		"GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F HTTP/1.1\r\n" +
			"Host: 169.254.169.254\r\nUser-Agent: python-requests/2.31.0\r\nAccept-Encoding: gzip, deflate\r\n" +
			"Accept: */*\r\nConnection: keep-alive\r\nMetadata: true\r\n\r\n",
		"GET /machine?comp=goalstate HTTP/1.1\r\nhost: 168.63.129.16\r\nx-ms-version: 2012-11-30\r\nConnection: Keep-Alive, close\r\n\r\n",
		"DELETE /a//b/../c HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a:\t2 \r\nExpect: 100-continue\r\n\r\n",
		"GET //evil.example/x HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n",
		"GET /\xe2\x9c\x93?q=\xff HTTP/1.1\r\nX-Obs: caf\xe9\r\n\r\n",
		"GET / HTTP/1.1\r\n\r\n",
	}
	for _, raw := range taken {
		if !readBothRequests(t, raw) {
			t.Errorf("fast path declined %q", raw)
		}
	}
	declined := []string{
		"POST /machine?comp=health HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
		"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
		"GET http://169.254.169.254/metadata/instance HTTP/1.1\r\nHost: other\r\n\r\n",
		"CONNECT 169.254.169.254:80 HTTP/1.1\r\nHost: a\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
		"get / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nPragma: no-cache\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nTrailer: X\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
		"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
		"GET / HTTP/1.1\nHost: a\n\n",
		"GET / HTTP/1.1\r\nHost: a\nX: bare LF\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
		"GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
		"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\n",
	}
	for _, raw := range declined {
		if readBothRequests(t, raw) {
			t.Errorf("fast path took %q", raw)
		}
	}
}

// FuzzFastRequest holds the fast path to net/http: what it takes,
// http.ReadRequest reads as the same request, consuming the same bytes.
// Run longer with: go test -fuzz FuzzFastRequest -fuzztime 30s ./proxyagent/proxy
func FuzzFastRequest(f *testing.F) {
	f.Add(curlRequest)
	f.Add(curlRequest + "GET /x HTTP/1.1\r\n")
	f.Add("GET /a?b=%41 HTTP/1.1\r\nHost: h\r\nConnection: close\r\nX: 1\r\nx: 2\r\n\r\n")
	f.Add("POST /machine?comp=health HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
	f.Fuzz(func(t *testing.T, raw string) {
		readBothRequests(t, raw)
	})
}

// imdsHead is a response head as IMDS sends it.
const imdsHead = "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n" +
	"Date: Tue, 01 Dec 2026 18:00:00 GMT\r\nServer: Microsoft-IIS/10.0\r\n" +
	"x-ms-request-id: 3f2a7a0e-1111-2222-3333-444455556666\r\nContent-Length: 5\r\n\r\n"

// readBoth reads raw with net/http (readFinalResponse) and with
// readResponse (through the fast path where it applies) and fails unless both give the same
// response and body; fast reports whether the fast path took it.
func readBoth(t *testing.T, raw string, method string) (fast bool) {
	t.Helper()
	want, wantBody, wantErr := readWith(raw, func(br *bufio.Reader) (*http.Response, error) {
		return readFinalResponse(br, method)
	})
	got, gotBody, gotErr := readWith(raw, func(br *bufio.Reader) (*http.Response, error) {
		resp, _ := fastResponse(br, method)
		fast = resp != nil
		if fast {
			// Read it again through readResponse, as the proxy does.
			br.Reset(strings.NewReader(raw))
		}
		return readResponse(br, method)
	})
	if wantErr != nil {
		if fast {
			t.Fatalf("fast path took %q, which net/http refuses: %v", raw, wantErr)
		}
		return fast
	}
	if gotErr != nil {
		t.Fatalf("%q: %v, net/http reads it", raw, gotErr)
	}
	if d := diffResponse(want, got); d != "" {
		t.Fatalf("%q (fast %v): %s", raw, fast, d)
	}
	if gotBody != wantBody {
		t.Fatalf("%q: body %q, net/http %q", raw, gotBody, wantBody)
	}
	return fast
}

// readWith reads one response from raw with read and its body to the end
// (the error ends the body text, so a short body compares by its error).
func readWith(raw string, read func(*bufio.Reader) (*http.Response, error)) (*http.Response, string, error) {
	br := bufio.NewReaderSize(strings.NewReader(raw), 4<<10)
	resp, err := read(br)
	if err != nil {
		return nil, "", err
	}
	b, err := io.ReadAll(resp.Body)
	body := string(b)
	if err != nil {
		body += " <" + err.Error() + ">"
	}
	resp.Body.Close()
	return resp, body, nil
}

// diffResponse names the first field in which got differs from want.
func diffResponse(want, got *http.Response) string {
	switch {
	case got.Status != want.Status:
		return "Status " + got.Status + ", net/http " + want.Status
	case got.StatusCode != want.StatusCode || got.Proto != want.Proto ||
		got.ProtoMajor != want.ProtoMajor || got.ProtoMinor != want.ProtoMinor:
		return "status line differs"
	case !reflect.DeepEqual(got.Header, want.Header):
		return "headers differ"
	case got.ContentLength != want.ContentLength || got.Close != want.Close ||
		!reflect.DeepEqual(got.TransferEncoding, want.TransferEncoding) ||
		!reflect.DeepEqual(got.Trailer, want.Trailer):
		return "framing differs"
	}
	return ""
}

func TestFastResponse(t *testing.T) {
	taken := []string{
		imdsHead + "hello",
		"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 404\r\nContent-Length: 2\r\n\r\nno",
		"HTTP/1.1 500 Internal Server Error  \r\ncontent-length:  3 \r\nX-A: 1\r\nx-a:\t2\r\nX-Empty:\r\n\r\nabc",
		"HTTP/1.1 200 \xe2\x9c\x93\r\nX-Obs: caf\xe9\r\nContent-Length: 007\r\n\r\n1234567",
		"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\nX-Ms-Azure-Host-Authorization: forged\r\n\r\nnope",
	}
	for _, raw := range taken {
		if !readBoth(t, raw, http.MethodGet) {
			t.Errorf("fast path declined %q", raw)
		}
	}
	declined := []string{
		"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\n",
		"HTTP/1.1 304 Not Modified\r\n\r\n",
		"HTTP/1.1 200 OK\r\n\r\nuntil close",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n2\r\nok\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nPragma: no-cache\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTrailer: X\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Folded: a\r\n b\r\n\r\nok",
		"HTTP/1.1 200 OK\r\n X: leading space\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX : space before colon\r\n\r\nok",
		"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\nX: bare LF\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: a\x00b\r\n\r\nok",
		"HTTP/1.1 200\tOK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1  200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/2 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2",
	}
	for _, raw := range declined {
		if readBoth(t, raw, http.MethodGet) {
			t.Errorf("fast path took %q", raw)
		}
	}
	if readBoth(t, imdsHead+"hello", http.MethodHead) {
		t.Error("fast path took the response to a HEAD request")
	}
}

// A body is read as net/http reads it: EOF with its last byte, an
// unexpected EOF when the connection ends early, and the next response on
// the connection left unread.
func TestFastResponseBody(t *testing.T) {
	readBoth(t, imdsHead+"hel", http.MethodGet)

	br := bufio.NewReader(strings.NewReader(imdsHead + "hello" + strings.Replace(imdsHead, "200 OK", "201 Created", 1) + "again"))
	for _, want := range []string{"hello", "again"} {
		resp, err := fastResponse(br, http.MethodGet)
		if resp == nil || err != nil {
			t.Fatal("fast path declined a kept-alive response")
		}
		buf := make([]byte, 64)
		n, err := resp.Body.Read(buf)
		if string(buf[:n]) != want || err != io.EOF {
			t.Fatalf("read %q, %v; want %q with io.EOF", buf[:n], err, want)
		}
		resp.Body.Close()
		if _, err := resp.Body.Read(buf); !errors.Is(err, http.ErrBodyReadAfterClose) {
			t.Fatalf("read after Close: %v", err)
		}
	}
}

// A head that arrives in pieces is gathered; one larger than the read
// buffer goes to net/http.
func TestFastResponseHeadSize(t *testing.T) {
	pr, pw := io.Pipe()
	go func() {
		io.WriteString(pw, imdsHead[:20])
		io.WriteString(pw, imdsHead[20:]+"hello")
		pw.Close()
	}()
	if resp, err := fastResponse(bufio.NewReaderSize(pr, 4<<10), http.MethodGet); resp == nil || err != nil || resp.ContentLength != 5 {
		t.Fatalf("head in two writes: %+v", resp)
	}

	br := bufio.NewReaderSize(strings.NewReader(imdsHead+"hello"), 64)
	if resp, _ := fastResponse(br, http.MethodGet); resp != nil {
		t.Fatal("fast path took a head longer than the buffer")
	}
	resp, err := readResponse(br, http.MethodGet)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("net/http after the declined fast path: %v", err)
	}
	if b, _ := io.ReadAll(resp.Body); string(b) != "hello" {
		t.Fatalf("body %q", b)
	}
}

// stallReader serves data, then fails with err (nil: the peer says
// nothing more, as a kept-open connection); any read after that is a
// second wait on a silent peer, and fails the test.
type stallReader struct {
	t     *testing.T
	data  string
	err   error
	reads int
}

func (r *stallReader) Read(p []byte) (int, error) {
	r.reads++
	if r.reads == 1 {
		return copy(p, r.data), nil
	}
	if r.reads == 2 && r.err != nil {
		return 0, r.err
	}
	r.t.Errorf("read %d after %q: waiting for the head again", r.reads, r.data)
	return 0, io.EOF
}

// The fast path never waits where net/http would not: a head that a bare
// LF ends (for net/http) is declined at once, not waited on for a CRLF,
// and a read that fails mid-head is reported, not retried by net/http
// (which would wait out a renewed upstream deadline a second time).
func TestFastHeadNoSecondWait(t *testing.T) {
	for _, raw := range []string{"GET /x HTTP/1.1\nHost: a\n\n", "GET /x HTTP/1.1\r\nHost: a\r\n\n"} {
		r := &stallReader{t: t, data: raw}
		br := bufio.NewReader(r)
		if fastRequest(br) != nil {
			t.Fatalf("fast path took %q", raw)
		}
		if req, err := http.ReadRequest(br); err != nil || req.Host != "a" {
			t.Fatalf("net/http after the fast path declined %q: %v", raw, err)
		}
	}
	for _, raw := range []string{"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\nok"} {
		br := bufio.NewReader(&stallReader{t: t, data: raw})
		resp, err := readResponse(br, http.MethodGet)
		if err != nil {
			t.Fatalf("%q: %v", raw, err)
		}
		if b, err := io.ReadAll(resp.Body); string(b) != "ok" || err != nil {
			t.Fatalf("%q: body %q, %v", raw, b, err)
		}
	}
	r := &stallReader{t: t, data: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", err: os.ErrDeadlineExceeded}
	if _, err := readResponse(bufio.NewReader(r), http.MethodGet); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("host silent mid-head: %v, want the deadline's error", err)
	}
	r = &stallReader{t: t, data: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", err: io.EOF}
	if _, err := readResponse(bufio.NewReader(r), http.MethodGet); err != io.ErrUnexpectedEOF {
		t.Fatalf("host gone mid-head: %v, want io.ErrUnexpectedEOF", err)
	}
}

// A head that arrives a byte at a time is found across reads: its end and
// its CRLFs straddle them, and a bare LF is seen when it arrives, with the
// rest of the head still unread.
func TestFastHeadByteAtATime(t *testing.T) {
	if req := fastRequest(bufio.NewReader(iotest.OneByteReader(strings.NewReader(curlRequest)))); req == nil || req.Host != "169.254.169.254" {
		t.Fatalf("request a byte at a time: %+v", req)
	}
	br := bufio.NewReader(iotest.OneByteReader(strings.NewReader(imdsHead + "hello")))
	resp, err := fastResponse(br, http.MethodGet)
	if resp == nil || err != nil {
		t.Fatalf("response a byte at a time: %v", err)
	}
	if b, err := io.ReadAll(resp.Body); string(b) != "hello" || err != nil {
		t.Fatalf("body %q, %v", b, err)
	}
	const bare = "GET /x HTTP/1.1\r\nHost: a\nX: never read\r\n\r\n"
	sr := strings.NewReader(bare)
	if fastRequest(bufio.NewReader(iotest.OneByteReader(sr))) != nil {
		t.Fatal("fast path took a head with a bare LF")
	}
	if read := len(bare) - sr.Len(); read != strings.Index(bare, "a\n")+2 {
		t.Fatalf("read %d bytes, want to stop at the bare LF (%d)", read, strings.Index(bare, "a\n")+2)
	}
}

// FuzzFastResponse holds the fast path to net/http: what it takes, net/http
// reads with the same status, headers, framing and body.
// Run longer with: go test -fuzz FuzzFastResponse -fuzztime 30s ./proxyagent/proxy
func FuzzFastResponse(f *testing.F) {
	f.Add(imdsHead+"hello", false)
	f.Add("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: a\r\nx: b\r\n\r\nok", false)
	f.Add("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok", false)
	f.Add("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", false)
	f.Add(imdsHead+"hello", true)
	f.Fuzz(func(t *testing.T, raw string, head bool) {
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		readBoth(t, raw, method)
	})
}

// BenchmarkReadHead is a curl request head and an IMDS response head and
// body read as the proxy reads them (fast path) and with net/http.
func BenchmarkReadHead(b *testing.B) {
	bench := func(name, raw string, read func(*bufio.Reader) error) {
		b.Run(name, func(b *testing.B) {
			sr := strings.NewReader(raw)
			br := bufio.NewReaderSize(sr, 4<<10)
			b.ReportAllocs()
			for b.Loop() {
				sr.Reset(raw)
				br.Reset(sr)
				if err := read(br); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	bench("request/fast", curlRequest, func(br *bufio.Reader) error {
		if fastRequest(br) == nil {
			return errors.New("declined")
		}
		return nil
	})
	bench("request/net-http", curlRequest, func(br *bufio.Reader) error {
		_, err := http.ReadRequest(br)
		return err
	})
	for name, read := range map[string]func(*bufio.Reader, string) (*http.Response, error){
		"response/fast": readResponse, "response/net-http": readFinalResponse,
	} {
		bench(name, imdsHead+"hello", func(br *bufio.Reader) error {
			resp, err := read(br, http.MethodGet)
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
			}
			return err
		})
	}
}
