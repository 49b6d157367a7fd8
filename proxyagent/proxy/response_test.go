package proxy

import (
	"bufio"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

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
		fast = fastResponse(br, method) != nil
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
		resp := fastResponse(br, http.MethodGet)
		if resp == nil {
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
	if resp := fastResponse(bufio.NewReaderSize(pr, 4<<10), http.MethodGet); resp == nil || resp.ContentLength != 5 {
		t.Fatalf("head in two writes: %+v", resp)
	}

	br := bufio.NewReaderSize(strings.NewReader(imdsHead+"hello"), 64)
	if fastResponse(br, http.MethodGet) != nil {
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

// BenchmarkReadResponse is one IMDS response head and body read as the
// proxy reads it (fast path), against net/http's parser.
func BenchmarkReadResponse(b *testing.B) {
	raw := imdsHead + "hello"
	for _, bc := range []struct {
		name string
		read func(*bufio.Reader, string) (*http.Response, error)
	}{{"fast", readResponse}, {"net-http", readFinalResponse}} {
		b.Run(bc.name, func(b *testing.B) {
			sr := strings.NewReader(raw)
			br := bufio.NewReaderSize(sr, 4<<10)
			b.ReportAllocs()
			for b.Loop() {
				sr.Reset(raw)
				br.Reset(sr)
				resp, err := bc.read(br, http.MethodGet)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
			}
		})
	}
}
