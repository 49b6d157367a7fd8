package hostconn

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/proxyagent/msp"
)

// Client.Do writes exactly the common headers of §1.1, the caller's fields
// and content-length, in that order, then the signature when given a key.
func TestClientDoWritesExactHead(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := make(chan string, 1)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			r := bufio.NewReader(c)
			var head strings.Builder
			for {
				line, err := r.ReadString('\n')
				head.WriteString(line)
				if err != nil || line == "\r\n" {
					break
				}
			}
			body := make([]byte, 2)
			io.ReadFull(r, body)
			got <- head.String() + string(body)
			io.WriteString(c, "HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok")
			c.Close()
		}
	}()
	at := time.Date(2025, 4, 23, 12, 0, 0, 0, time.UTC)
	c := &Client{Addr: l.Addr().String(), Timeout: 5 * time.Second, Dial: Dialer(0, time.Second).DialContext,
		Now: func() time.Time { return at }}
	key, err := msp.NewKey("9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf", strings.Repeat("0f", 32))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []*msp.Key{nil, key} {
		r, err := c.Do(context.Background(), http.MethodPost, "/x?a=1", []msp.Field{{Name: "x-ms-version", Value: "v"}}, []byte("hi"), k)
		if err != nil || !r.OK() || string(r.Body) != "ok" {
			t.Fatalf("Do: %+v, %v", r, err)
		}
		want := "POST /x?a=1 HTTP/1.1\r\nx-ms-azure-host-date: Wed, 23 Apr 2025 12:00:00 GMT\r\nhost: 127.0.0.1\r\n" +
			"x-ms-azure-host-claims: { \"isRoot\": \"true\"}\r\nx-ms-version: v\r\ncontent-length: 2\r\n"
		if k != nil {
			want += "x-ms-azure-host-authorization: Azure-HMAC-SHA256 " + k.GUID + " "
		}
		if head := <-got; !strings.HasPrefix(head, want) || !strings.HasSuffix(head, "\r\n\r\nhi") {
			t.Errorf("request\n%q\nwant prefix\n%q", head, want)
		}
	}
}

func TestDecodeCharset(t *testing.T) {
	cases := []struct {
		ctype, want string
		body        []byte
		err         bool
	}{
		{"text/xml; charset=utf-8", "<a/>", []byte("<a/>"), false},
		{"", "{}", []byte("{}"), false},
		{"text/xml; charset=UTF-16", "<a/>", []byte{0xFF, 0xFE, '<', 0, 'a', 0, '/', 0, '>', 0}, false},
		{"text/xml; charset=utf-16", "<a", []byte{'<', 0, 'a', 0}, false},
		{"application/json; charset=utf-32", "", []byte("{}"), true},
	}
	for _, c := range cases {
		got, err := DecodeCharset(c.ctype, c.body)
		if (err != nil) != c.err || (err == nil && string(got) != c.want) {
			t.Errorf("DecodeCharset(%q) = %q, %v", c.ctype, got, err)
		}
	}
	if !IsXML("Text/XML; charset=utf-8") || IsXML("application/json") {
		t.Error("IsXML")
	}
}

// A host whose answer never ends its header block is cut off after
// MaxBodyBytes+MaxHeadBytes: the call fails at once rather than reading
// (and holding) header fields until the timeout.
func TestClientDoBoundsResponseHead(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	sent := make(chan int64, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		go io.Copy(io.Discard, c)
		n, _ := io.WriteString(c, "HTTP/1.1 200 OK\r\n")
		total := int64(n)
		line := "X-Filler: " + strings.Repeat("a", 1000) + "\r\n"
		for total < 64<<20 { // until the client hangs up (or 64 MiB: an unbounded reader)
			n, err := io.WriteString(c, line)
			total += int64(n)
			if err != nil {
				break
			}
		}
		sent <- total
	}()
	c := &Client{Addr: l.Addr().String(), Timeout: time.Hour, Dial: Dialer(0, time.Second).DialContext, Now: time.Now}
	_, err = c.Do(context.Background(), http.MethodGet, "/", nil, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "EOF") {
		t.Fatalf("Do: %v, want the head cut off", err)
	}
	// What the host got to send before the agent hung up: the limit plus
	// what the sockets' buffers held.
	if n := <-sent; n >= 32<<20 {
		t.Errorf("the host sent %d bytes of header fields before the agent gave up", n)
	}
}
