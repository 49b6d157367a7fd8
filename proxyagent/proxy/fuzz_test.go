package proxy

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/proxyagent/msp"
)

// FuzzRawRequest sends arbitrary bytes from a redirected non-root caller and
// checks what reached the host: every request carries exactly the proxy's
// claims and date, is signed correctly unless exempt, and carries no
// forwarding header. The server must survive any input.
// Run longer with: go test -fuzz FuzzRawRequest -fuzztime 30s ./proxyagent/proxy
func FuzzRawRequest(f *testing.F) {
	for _, seed := range []string{
		req("GET", "/metadata/instance", "Metadata: true"),
		req("POST", "/machine?comp=health", "Content-Length: 3") + "abc",
		req("POST", "/machine?comp=health", "Transfer-Encoding: chunked", "Content-Length: 3") + "3\r\nabc\r\n0\r\n\r\n",
		req("GET", "/a", "x-ms-azure-host-claims: { \"isRoot\": \"true\"}", "Connection: x-ms-azure-host-claims"),
		req("GET", "http://169.254.169.254/x?A=1&a=1", "X-Forwarded-For: 1.2.3.4"),
		req("PUT", "/vmAgentLog", "Content-Length: 1", "x-ms-azure-host-authorization: forged") + "z",
		"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
		"GET /\xff HTTP/1.1\r\nHost: a\r\nX: \x80\r\n\r\n",
		req("GET", "/p1") + req("GET", "/p2"),
	} {
		f.Add(seed)
	}
	e := newEnv(f, func(o *Options) { o.ReadHeaderTimeout = time.Second })
	f.Fuzz(func(t *testing.T, raw string) {
		before := len(e.up.requests())
		c, err := net.Dial("tcp4", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		e.ids.set(addrPort(c.LocalAddr()), userRec(imdsDest))
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, raw)
		c.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, c) // until the proxy closes
		for _, r := range e.up.requests()[before:] {
			if v := r.values(msp.HeaderClaims); len(v) != 1 || v[0] != msp.ClaimsValue(false) {
				t.Errorf("claims %q reached the host", v)
			}
			if v := r.values(msp.HeaderDate); len(v) != 1 || v[0] != msp.FormatDate(testNow) {
				t.Errorf("date %q reached the host", v)
			}
			auth := r.values(msp.HeaderAuthorization)
			if msp.Exempt(r.method, r.target) {
				if len(auth) != 0 {
					t.Errorf("exempt request carries authorization %q", auth)
				}
			} else if len(auth) != 1 || !r.sigOK {
				t.Errorf("%s %s: authorization %q verifies=%v", r.method, r.target, auth, r.sigOK)
			}
			for _, fl := range r.fields {
				if l := strings.ToLower(fl.Name); strings.HasPrefix(l, "x-forwarded-") || l == "forwarded" {
					t.Errorf("%s reached the host", fl.Name)
				}
			}
		}
	})
}
