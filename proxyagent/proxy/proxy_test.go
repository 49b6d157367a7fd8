package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opengpa/gpa/internal/testsupport"
	"github.com/opengpa/gpa/proxyagent/audit"
	"github.com/opengpa/gpa/proxyagent/authz"
	"github.com/opengpa/gpa/proxyagent/identity"
	"github.com/opengpa/gpa/proxyagent/msp"
	"github.com/opengpa/gpa/proxyagent/provision"
)

// §8 item 5: a direct connection has no destination.
func TestDirectConnectionIs421(t *testing.T) {
	e := newEnv(t, nil)
	c := e.connect(nil)
	resp, body := c.do(req("GET", "/"))
	if resp.StatusCode != http.StatusMisdirectedRequest || body != "" || !resp.Close {
		t.Fatalf("got %d close=%v body %q, want 421 with Connection: close and empty body", resp.StatusCode, resp.Close, body)
	}
	if !c.closedByServer() {
		t.Error("connection still open after 421")
	}
	evs := e.rec.wait(t, 1)
	if evs[0].Status != 421 || evs[0].Authorized || evs[0].Dest.IsValid() || evs[0].Caller != nil {
		t.Errorf("audit event %+v", evs[0])
	}
	if n := len(e.up.requests()); n != 0 {
		t.Errorf("upstream got %d requests", n)
	}
}

// A resolver error means no identity: 421, nothing forwarded.
func TestNoClaimsIs421(t *testing.T) {
	e := newEnv(t, nil)
	rec := rootRec(wsDest)
	rec.Comm = "noclaims"
	c := e.connect(rec)
	resp, _ := c.do(req("GET", "/machine?comp=goalstate"))
	if resp.StatusCode != http.StatusMisdirectedRequest || !resp.Close {
		t.Fatalf("got %d close=%v, want 421 close", resp.StatusCode, resp.Close)
	}
	ev := e.rec.wait(t, 1)[0]
	if ev.Dest != wsDest || ev.Caller != nil || !strings.Contains(ev.Error, "process vanished") {
		t.Errorf("audit event %+v", ev)
	}
	if n := e.up.conns.Load(); n != 0 {
		t.Errorf("upstream dialled %d times for a caller without claims", n)
	}
}

// §8 item 6: traversal guard (403, upstream), and the ambiguous targets
// msp.CheckTarget refuses (400): nothing reaches the host, the refusal is
// audited with its reason.
func TestTraversalAndAmbiguousTargets(t *testing.T) {
	for _, tc := range []struct {
		target string
		want   int
	}{
		{"/test/../", http.StatusForbidden},
		{"//metadata/instance", http.StatusForbidden},
		{"/foo/%2e%2E/bar", http.StatusForbidden},
		{"/a/%2E./b", http.StatusForbidden},
		{"http://168.63.129.16//machine", http.StatusForbidden},
		{"/gpa-aggregated-status/..", http.StatusForbidden},
		{"/metadata/instance#/../identity/oauth2/token", http.StatusBadRequest},
		{"/metadata/instance/%252E%252E/identity/oauth2/token", http.StatusBadRequest},
		{"/metadata/%2e/instance", http.StatusBadRequest},
		{"/metadata/./instance", http.StatusBadRequest},
		{"/a;b=c", http.StatusBadRequest},
		{"/%2Fmetadata", http.StatusBadRequest},
		{"http:/machine?comp=goalstate", http.StatusBadRequest},
		{"foo:/machine", http.StatusBadRequest},
		{"*", http.StatusBadRequest},
		{"/machine?comp=config&Comp=goalstate", http.StatusBadRequest},
		{"http://168.63.129.16/machine?comp=goalstate", http.StatusOK},
		{"/metadata/instance?x=..", http.StatusOK},
		{"/metadata/instance?resource=https%3A%2F%2Fx%2F", http.StatusOK},
		{"/machine/a/49c242ba%2Dc18a%5Fzpeng?comp=config", http.StatusOK},
	} {
		t.Run(tc.target, func(t *testing.T) {
			e := newEnv(t, nil)
			c := e.connect(rootRec(wsDest))
			resp, body := c.do(req("GET", tc.target))
			if tc.want == http.StatusOK {
				if resp.StatusCode != http.StatusOK || body != "ok "+tc.target {
					t.Fatalf("got %d %q, want forwarded 200", resp.StatusCode, body)
				}
				return
			}
			if resp.StatusCode != tc.want || body != "" || !resp.Close {
				t.Fatalf("got %d close=%v body %q, want %d close", resp.StatusCode, resp.Close, body, tc.want)
			}
			if resp.Header.Get(msp.HeaderAuthorization) != "" {
				t.Error("a proxy-generated refusal carries the upstream marker")
			}
			if n := len(e.up.requests()); n != 0 {
				t.Errorf("forwarded %d requests", n)
			}
			ev := e.rec.wait(t, 1)[0]
			if ev.Status != tc.want || ev.Authorized || ev.Target != tc.target || ev.Error == "" ||
				(tc.want == http.StatusBadRequest && !strings.HasPrefix(ev.Error, "ambiguous request target: ")) {
				t.Errorf("audit event %+v", ev)
			}
		})
	}
}

// A client that sends its whole oversized body at once, as Go's and most
// HTTP clients do, reads the 413 (or a 417 for an expectation not met):
// the agent does not close the connection with the body unread, which
// would make the kernel reset it and, for many such clients, the answer
// with it.
func TestBodyLimitAnswerSurvivesUnreadBody(t *testing.T) {
	e := newEnv(t, nil)
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp4", e.addr)
		if err == nil {
			e.ids.set(addrPort(c.LocalAddr()), rootRec(imdsDest))
		}
		return c, err
	}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	body := strings.Repeat("x", 102401)
	const n = 300
	failed := 0
	for i := range n {
		b := body
		if i%30 == 0 {
			// Over the upload limit (8 MiB): the answer must survive a
			// body that large too.
			b = strings.Repeat("x", int(DefaultMaxUploadBody)+1)
		}
		want := http.StatusRequestEntityTooLarge
		r, _ := http.NewRequest("POST", "http://169.254.169.254/metadata/instance", strings.NewReader(b))
		if i%10 == 5 {
			// An expectation the server does not meet: 417, the body
			// (under the limit) unread.
			r, _ = http.NewRequest("POST", "http://169.254.169.254/metadata/instance", strings.NewReader(body[:90<<10]))
			r.Header.Set("Expect", "foo")
			want = http.StatusExpectationFailed
		}
		resp, err := client.Do(r)
		if err != nil {
			failed++
			t.Log(err)
			continue
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("status %d, want %d", resp.StatusCode, want)
		}
	}
	if failed > 0 {
		t.Errorf("%d of %d clients got no answer, only an error", failed, n)
	}
}

// §8 item 7 and quirk 18: 413 before anything else, chunked over the limit
// closes without a response.
func TestBodyLimit(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxExemptBody = 200 << 10 })
	big := strings.Repeat("x", 102401)
	cases := []struct {
		name, raw string
		want      int
	}{
		{"signed over limit", req("POST", "/machine/x?restype=role", "Content-Length: 102401") + big, 413},
		{"traversal path", req("POST", "/test/../", "Content-Length: 102401") + big, 413},
		{"bad method", req("WIDGET", "/", "Content-Length: 102401") + big, 413},
		{"local endpoint", req("POST", "/provision", "Content-Length: 102401", "Metadata: true") + big, 413},
		{"signed at limit", req("POST", "/machine/x?restype=role", "Content-Length: 102400") + big[:102400], 200},
		{"exempt over signed limit", req("PUT", "/vmAgentLog", "Content-Length: 102401") + big, 200},
		{"exempt over exempt limit", req("PUT", "/vmAgentLog", "Content-Length: 204801"), 413},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := e.srv.RequestCount()
			c := e.connect(rootRec(wsDest))
			c.send(tc.raw)
			resp, _ := c.read("POST")
			if resp.StatusCode != tc.want {
				t.Fatalf("got %d, want %d", resp.StatusCode, tc.want)
			}
			if tc.want == 413 && !resp.Close {
				t.Error("413 without Connection: close")
			}
			// A 413 comes from before the request flow (upstream's limit
			// layer): no request id, not counted; audited with id 0.
			if tc.want == 413 {
				c.closedByServer()
				if n := e.srv.RequestCount(); n != before {
					t.Errorf("proxyConnectionsCount %d -> %d for a 413", before, n)
				}
				evs := e.rec.wait(t, 1)
				if ev := evs[len(evs)-1]; ev.Status != 413 || ev.HTTPID != 0 || !ev.BeforeFlow {
					t.Errorf("audit event %+v", ev)
				}
			}
		})
	}

	t.Run("chunked over limit", func(t *testing.T) {
		before := len(e.up.requests())
		c := e.connect(rootRec(wsDest))
		c.send(req("POST", "/machine/x?restype=role", "Transfer-Encoding: chunked"))
		chunk := strings.Repeat("y", 60000)
		c.send(fmt.Sprintf("%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n", len(chunk), chunk, len(chunk), chunk))
		if !c.closedByServer() {
			t.Fatal("connection not closed without response")
		}
		if n := len(e.up.requests()); n != before {
			t.Errorf("upstream got %d new requests", n-before)
		}
	})
}

// §8 item 8: methods outside the allow-list.
func TestMethodNotAllowed(t *testing.T) {
	e := newEnv(t, nil)
	for _, raw := range []string{
		"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
		req("TRACE", "/"),
		req("WIDGET", "/"),
	} {
		t.Run(strings.Fields(raw)[0], func(t *testing.T) {
			c := e.connect(rootRec(wsDest))
			resp, body := c.do(raw)
			if resp.StatusCode != 405 || body != "Method Not Allowed" || !resp.Close {
				t.Fatalf("got %d close=%v %q", resp.StatusCode, resp.Close, body)
			}
			if got := resp.Header.Get("Allow"); got != "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH" {
				t.Errorf("Allow %q", got)
			}
			if got := resp.Header.Get("Content-Type"); got != "text/plain; charset=utf-8" {
				t.Errorf("Content-Type %q", got)
			}
		})
	}
	if n := len(e.up.requests()); n != 0 {
		t.Errorf("upstream got %d requests", n)
	}
}

// §8 item 9 and §5.5.
func TestAggregateStatusEndpoint(t *testing.T) {
	e := newEnv(t, nil)
	cases := []struct {
		name string
		rec  *identity.Record
		hdr  []string
		want int
	}{
		{"direct with Metadata", nil, []string{"Metadata: true"}, 403},
		{"direct without Metadata", nil, nil, 400},
		{"redirected root", rootRec(wsDest), []string{"Metadata: true"}, 200},
		{"redirected root without Metadata", rootRec(wsDest), nil, 400},
		{"redirected non-root", userRec(wsDest), []string{"Metadata: true"}, 403},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := e.connect(tc.rec)
			resp, body := c.do(req("GET", "/gpa-aggregated-status", tc.hdr...))
			if resp.StatusCode != tc.want {
				t.Fatalf("got %d, want %d", resp.StatusCode, tc.want)
			}
			if tc.want != 200 {
				if !resp.Close || body != "" {
					t.Errorf("error response close=%v body %q", resp.Close, body)
				}
				return
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
				t.Errorf("Content-Type %q", ct)
			}
			if !json.Valid([]byte(body)) || !strings.Contains(body, "SUCCESS") {
				t.Errorf("body %q", body)
			}
		})
	}
	if n := len(e.up.requests()); n != 0 {
		t.Errorf("local endpoint forwarded %d requests", n)
	}
	// Recorded, and marked as the agent's own answers, which the summary
	// tables leave out as upstream's do.
	for _, ev := range e.rec.wait(t, len(cases)) {
		if !ev.Local || ev.HTTPID == 0 {
			t.Errorf("event %s %d: Local %v, HTTPID %d", ev.Target, ev.Status, ev.Local, ev.HTTPID)
		}
	}
}

// §5.4: /provision parses the time tick and notify, and answers JSON.
func TestProvisionEndpoint(t *testing.T) {
	e := newEnv(t, nil)
	cases := []struct {
		name   string
		target string
		hdr    []string
		want   int
		call   *provisionCall
		body   string
	}{
		{"no Metadata", "/provision", nil, 400, nil, ""},
		{"no tick", "/provision", []string{"Metadata: true"}, 200, &provisionCall{0, false},
			`{"finished":true,"errorMessage":"keyLatchStatus - \"x\" <y>"}`},
		{"tick and notify", "/provision?", []string{"Metadata: true", "x-ms-azure-time-tick: 5000", "x-ms-azure-notify: true"},
			200, &provisionCall{5000, true}, `{"finished":false,"errorMessage":"keyLatchStatus - \"x\" <y>"}`},
		{"invalid tick", "/provision", []string{"Metadata: true", "x-ms-azure-time-tick: soon"}, 200, &provisionCall{0, false}, ""},
		{"huge tick", "/provision", []string{"Metadata: true", "x-ms-azure-time-tick: 170141183460469231731687303715884105727"},
			200, &provisionCall{1<<63 - 1, false}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e.local.mu.Lock()
			e.local.calls = nil
			e.local.mu.Unlock()
			c := e.connect(nil)
			resp, body := c.do(req("GET", tc.target, tc.hdr...))
			if resp.StatusCode != tc.want {
				t.Fatalf("got %d, want %d", resp.StatusCode, tc.want)
			}
			e.local.mu.Lock()
			calls := e.local.calls
			e.local.mu.Unlock()
			if tc.call == nil {
				if len(calls) != 0 || !resp.Close {
					t.Errorf("calls %v close=%v", calls, resp.Close)
				}
				return
			}
			if len(calls) != 1 || calls[0] != *tc.call {
				t.Errorf("calls %v, want %v", calls, *tc.call)
			}
			if tc.body != "" && body != tc.body {
				t.Errorf("body %s, want %s", body, tc.body)
			}
		})
	}
	// A real query or an absolute-form target is not the local endpoint.
	c := e.connect(nil)
	if resp, _ := c.do(req("GET", "/provision?x=1", "Metadata: true")); resp.StatusCode != 421 {
		t.Errorf("/provision?x=1 got %d, want 421 (not local, direct)", resp.StatusCode)
	}
	for _, ev := range e.rec.wait(t, len(cases)+1) {
		if local := ev.Target != "/provision?x=1"; ev.Local != local {
			t.Errorf("event %s %d: Local %v, want %v", ev.Target, ev.Status, ev.Local, local)
		}
	}
}

// §8 item 22 and §2.7: marker on forwarded responses, nothing else added.
func TestResponseMarker(t *testing.T) {
	e := newEnv(t, nil)
	e.up.setHandler(func(r seenRequest) upReply {
		switch r.target {
		case "/bare":
			return upReply{status: 200, body: "<html>sniff me</html>"}
		case "/forged":
			return upReply{status: 404, headers: []string{"x-ms-azure-host-authorization: forged", "Date: Wed, 23 Apr 2025 12:00:00 GMT"}, body: "nf"}
		case "/chunked":
			return upReply{status: 200, headers: []string{"Content-Type: application/json"}, body: `{"a":1}`, chunked: true}
		}
		return upReply{status: 500}
	})
	c := e.connect(userRec(imdsDest))
	resp, body := c.do(req("GET", "/bare"))
	if resp.StatusCode != 200 || body != "<html>sniff me</html>" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	if got := resp.Header.Values(msp.HeaderAuthorization); len(got) != 1 || got[0] != msp.ResponseMarker {
		t.Errorf("marker %q", got)
	}
	if _, ok := resp.Header["Date"]; ok {
		t.Error("proxy added a Date header the host did not send")
	}
	if _, ok := resp.Header["Content-Type"]; ok {
		t.Error("proxy added a sniffed Content-Type")
	}

	resp, body = c.do(req("GET", "/forged"))
	if resp.StatusCode != 404 || body != "nf" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	if got := resp.Header.Values(msp.HeaderAuthorization); len(got) != 1 || got[0] != msp.ResponseMarker {
		t.Errorf("marker %q, want only %q", got, msp.ResponseMarker)
	}
	if resp.Header.Get("Date") != "Wed, 23 Apr 2025 12:00:00 GMT" {
		t.Errorf("host Date not relayed: %q", resp.Header.Get("Date"))
	}

	resp, body = c.do(req("GET", "/chunked"))
	if resp.StatusCode != 200 || body != `{"a":1}` || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("chunked relay: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if resp.Header.Get(msp.HeaderAuthorization) != msp.ResponseMarker {
		t.Error("no marker on chunked response")
	}

	resp, body = c.do(req("HEAD", "/forged"))
	if resp.StatusCode != 404 || body != "" || resp.ContentLength != 2 {
		t.Errorf("HEAD: %d %q length %d", resp.StatusCode, body, resp.ContentLength)
	}
}

// Forged protocol headers and forwarding headers never reach the host,
// with or without a key, signed or exempt (quirk 12 deliberately fixed).
func TestForgedHeadersNeverReachUpstream(t *testing.T) {
	forged := []string{
		"x-ms-azure-host-authorization: Azure-HMAC-SHA256 " + testKeyGUID + " deadbeef",
		"X-MS-AZURE-HOST-CLAIMS: { \"isRoot\": \"true\"}",
		"x-ms-azure-host-date: Thu, 01 Jan 1970 00:00:00 GMT",
		"x-ms-azure-host-other: x",
		"X-Forwarded-For: 10.0.0.1",
		"x-forwarded-host: evil",
		"Forwarded: for=10.0.0.1",
		"X_Forwarded_For: 10.0.0.2",
		"x_ms_azure_host_authorization: Azure-HMAC-SHA256 " + testKeyGUID + " deadbeef",
		"Metadata: true",
	}
	for _, tc := range []struct {
		name   string
		method string
		target string
		noKey  bool
	}{
		{"signed", "GET", "/metadata/instance?api-version=2021-02-01", false},
		{"no key", "GET", "/metadata/instance", true},
		{"exempt", "PUT", "/vmAgentLog", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			if tc.noKey {
				e.keys.key.Store(nil)
			}
			c := e.connect(userRec(imdsDest))
			extra := forged
			if tc.method == "PUT" {
				extra = append(append([]string(nil), forged...), "Content-Length: 3")
			}
			raw := req(tc.method, tc.target, extra...)
			if tc.method == "PUT" {
				raw += "log"
			}
			resp, _ := c.do(raw)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			got := e.up.requests()
			if len(got) != 1 {
				t.Fatalf("upstream got %d requests", len(got))
			}
			r := got[0]
			for _, name := range []string{"x-ms-azure-host-other", "x-forwarded-for", "x-forwarded-host", "forwarded",
				"x_forwarded_for", "x_ms_azure_host_authorization"} {
				if v := r.values(name); len(v) != 0 {
					t.Errorf("%s reached upstream: %q", name, v)
				}
			}
			if v := r.values(msp.HeaderClaims); len(v) != 1 || v[0] != `{ "isRoot": "false"}` {
				t.Errorf("claims %q", v)
			}
			if v := r.values(msp.HeaderDate); len(v) != 1 || v[0] != "Wed, 23 Apr 2025 12:00:00 GMT" {
				t.Errorf("date %q", v)
			}
			auth := r.values(msp.HeaderAuthorization)
			signed := !tc.noKey && tc.method != "PUT"
			if signed {
				if len(auth) != 1 || !r.sigOK {
					t.Errorf("authorization %q verifies=%v", auth, r.sigOK)
				}
			} else if len(auth) != 0 {
				t.Errorf("forged authorization reached upstream: %q", auth)
			}
			if r.value("Metadata") != "true" {
				t.Error("ordinary client header lost")
			}
		})
	}
}

// Hop-by-hop processing happens before the proxy adds its headers, so
// Connection cannot strip them.
func TestConnectionHeaderCannotStripProxyHeaders(t *testing.T) {
	e := newEnv(t, nil)
	c := e.connect(rootRec(wsDest))
	resp, _ := c.do(req("GET", "/machine?comp=goalstate",
		"Connection: keep-alive, x-ms-azure-host-claims, X-MS-Azure-Host-Date, x-ms-azure-host-authorization, X-Custom, Host",
		"X-Custom: gone", "Keep-Alive: timeout=5", "Upgrade: h2c", "Proxy-Authorization: Basic eA==", "TE: trailers",
		"x-ms-version: 2012-11-30"))
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	r := e.up.requests()[0]
	for _, name := range []string{"Connection", "X-Custom", "Keep-Alive", "Upgrade", "Proxy-Authorization", "TE"} {
		if v := r.values(name); len(v) != 0 {
			t.Errorf("hop-by-hop %s forwarded: %q", name, v)
		}
	}
	if r.value(msp.HeaderClaims) != `{ "isRoot": "true"}` || r.value(msp.HeaderDate) == "" || !r.sigOK {
		t.Errorf("proxy headers stripped or signature invalid: %+v", r.fields)
	}
	if r.value("Host") != "168.63.129.16" || r.value("x-ms-version") != "2012-11-30" {
		t.Errorf("end-to-end headers lost: %+v", r.fields)
	}
}

// The signature verifies at the host over exactly the bytes it received,
// and matches the spec's worked example A.
func TestSignatureOverReceivedBytes(t *testing.T) {
	e := newEnv(t, nil)
	c := e.connect(rootRec(wsDest))
	health := "<Health/>"
	chunkBody := strings.Repeat("z", 3000)
	steps := []struct {
		name, raw, body string
	}{
		{"example A", req("GET", "/machine?comp=goalstate", "x-ms-version: 2012-11-30"), ""},
		{"query and duplicates", req("GET", "/machine/a%2Db?Comp=X&b=1&a=2", "X-Dup: 1", "x-dup: 2", "Metadata:  spaced  "), ""},
		{"post with body", req("POST", "/machine?comp=health", "Content-Type: text/xml; charset=utf-8",
			"Content-Length: 9", "x-ms-version: 2012-11-30") + health, health},
		{"post chunked", req("POST", "/machine?comp=health", "Transfer-Encoding: chunked") +
			fmt.Sprintf("%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n", 1000, chunkBody[:1000], 2000, chunkBody[1000:]), chunkBody},
		{"post empty with length", req("POST", "/machine?comp=x", "Content-Length: 0"), ""},
	}
	for i, st := range steps {
		resp, _ := c.do(st.raw)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: status %d", st.name, resp.StatusCode)
		}
		r := e.up.requests()[i]
		if !r.sigPresent || !r.sigOK {
			t.Errorf("%s: signature present=%v verifies=%v; fields %+v", st.name, r.sigPresent, r.sigOK, r.fields)
		}
		if string(r.body) != st.body {
			t.Errorf("%s: body %q", st.name, r.body)
		}
		if r.chunked || len(r.values("Content-Length")) > 1 {
			t.Errorf("%s: signed request framing chunked=%v CL=%q", st.name, r.chunked, r.values("Content-Length"))
		}
		if st.body != "" && r.value("Content-Length") != strconv.Itoa(len(st.body)) {
			t.Errorf("%s: Content-Length %q", st.name, r.value("Content-Length"))
		}
	}
	// Worked example A (protocol.md §2.8): same headers, same signature.
	want := "Azure-HMAC-SHA256 9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf 7c28efe8da50f19c9c38ab150b0cf9c71d09673f2bd6e061fd426044a5ca212c"
	if got := e.up.requests()[0].value(msp.HeaderAuthorization); got != want {
		t.Errorf("example A authorization\n got %s\nwant %s", got, want)
	}
	if e.up.requests()[0].values("Content-Length") != nil {
		t.Error("GET without body got a Content-Length")
	}
}

// Exempt uploads are streamed unsigned; chunked ones stay chunked.
func TestExemptStreamedUnsigned(t *testing.T) {
	e := newEnv(t, nil)
	c := e.connect(rootRec(wsDest))
	body := strings.Repeat("L", 150000)
	resp, _ := c.do(req("PUT", "/vmAgentLog", "Content-Length: "+strconv.Itoa(len(body))) + body)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	resp, _ = c.do(req("POST", "/machine/?comp=telemetrydata", "Transfer-Encoding: chunked") +
		fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(body), body))
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	got := e.up.requests()
	if len(got) != 2 {
		t.Fatalf("upstream got %d requests", len(got))
	}
	for i, r := range got {
		if r.sigPresent {
			t.Errorf("request %d: exempt request signed", i)
		}
		if string(r.body) != body {
			t.Errorf("request %d: body of %d bytes", i, len(r.body))
		}
		if r.value(msp.HeaderClaims) == "" || r.value(msp.HeaderDate) == "" {
			t.Errorf("request %d: claims/date missing", i)
		}
	}
	if got[0].chunked || !got[1].chunked {
		t.Errorf("framing: first chunked=%v second chunked=%v", got[0].chunked, got[1].chunked)
	}
}

// Absolute-form targets go to the kernel's destination, unchanged.
func TestAbsoluteFormTarget(t *testing.T) {
	e := newEnv(t, nil)
	c := e.connect(rootRec(wsDest))
	target := "http://168.63.129.16/machine?comp=goalstate"
	resp, _ := c.do("GET " + target + " HTTP/1.1\r\nHost: evil.example\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	r := e.up.requests()[0]
	if r.target != target || !r.sigOK {
		t.Errorf("target %q verifies=%v", r.target, r.sigOK)
	}
	// RFC 9112 §3.2.2: a proxy replaces Host with the target's authority.
	if hv := r.values("Host"); len(hv) != 1 || hv[0] != "168.63.129.16" {
		t.Errorf("Host %q", hv)
	}
	if az := e.az.requests(); len(az) != 1 || az[0].Target != target || az[0].Service != msp.WireServer {
		t.Errorf("authorizer saw %+v", az)
	}
}

// Denied requests: 403, empty, close, nothing forwarded, decision recorded.
func TestDenied(t *testing.T) {
	e := newEnv(t, nil)
	c := e.connect(userRec(imdsDest))
	resp, body := c.do(req("GET", "/metadata/deny"))
	if resp.StatusCode != 403 || body != "" || !resp.Close {
		t.Fatalf("got %d close=%v %q", resp.StatusCode, resp.Close, body)
	}
	if n := len(e.up.requests()); n != 0 {
		t.Errorf("forwarded %d", n)
	}
	ev := e.rec.wait(t, 1)[0]
	if !ev.Authorized || ev.Decision.Result != authz.Deny || ev.Decision.RuleID != "rules-1" || ev.Status != 403 ||
		!strings.HasPrefix(ev.Error, audit.BlockPrefix+"{") {
		t.Fatalf("audit event %+v", ev)
	}
	// The text reaches status.json and telemetry: upstream's claims only,
	// none of this project's additions (ancestors' command lines, groupId).
	var got map[string]any
	if err := json.Unmarshal([]byte(strings.TrimPrefix(ev.Error, audit.BlockPrefix)), &got); err != nil {
		t.Fatal(err)
	}
	want := []string{"clientIp", "clientPort", "processCmdLine", "processFullPath", "processId", "processName",
		"runAsElevated", "userGroups", "userId", "userName"}
	if keys := slices.Sorted(maps.Keys(got)); !slices.Equal(keys, want) || got["userId"] != float64(1000) {
		t.Errorf("claims in the block text: %v", got)
	}
}

// 502 when the upstream cannot be reached, for every request.
func TestUpstreamDown(t *testing.T) {
	dead := closedPortAddr(t)
	e := newEnv(t, func(o *Options) { o.Upstream = func(netip.AddrPort) string { return dead } })
	for i := 0; i < 2; i++ {
		c := e.connect(rootRec(wsDest))
		resp, body := c.do(req("GET", "/machine?comp=goalstate"))
		if resp.StatusCode != http.StatusBadGateway || body != "" || !resp.Close {
			t.Fatalf("got %d close=%v %q", resp.StatusCode, resp.Close, body)
		}
	}
	evs := e.rec.wait(t, 2)
	if evs[0].Status != 502 || evs[0].Error == "" || !evs[0].Authorized {
		t.Errorf("audit event %+v", evs[0])
	}
}

// A host that never answers: 503 after the response timeout.
func TestUpstreamTimeout(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	var held []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	}()
	e := newEnv(t, func(o *Options) {
		o.Upstream = func(netip.AddrPort) string { return ln.Addr().String() }
		o.ResponseTimeout = 100 * time.Millisecond
	})
	c := e.connect(rootRec(wsDest))
	resp, _ := c.do(req("GET", "/slow"))
	if resp.StatusCode != http.StatusServiceUnavailable || !resp.Close {
		t.Fatalf("got %d close=%v, want 503 close", resp.StatusCode, resp.Close)
	}
}

// Header values outside visible ASCII are refused, never forwarded, and the
// server keeps working.
func TestInvalidHeaderBytes(t *testing.T) {
	e := newEnv(t, nil)
	for _, raw := range []string{
		req("GET", "/metadata/instance", "X-Name: caf\xe9"),
		req("GET", "/metadata/instance", "X-Ctl: a\x01b"),
		req("GET", "/metadata/instance", "X-Del: a\x7fb"),
		"GET /metadata/instance HTTP/1.1\r\nHost: h\xff\r\n\r\n",
		"GET /metadata/\xe9 HTTP/1.1\r\nHost: h\r\n\r\n",
	} {
		c := e.connect(userRec(imdsDest))
		resp, _ := c.do(raw)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%q: got %d, want 400", raw, resp.StatusCode)
		}
	}
	if n := len(e.up.requests()); n != 0 {
		t.Errorf("forwarded %d", n)
	}
	c := e.connect(userRec(imdsDest))
	if resp, _ := c.do(req("GET", "/metadata/instance")); resp.StatusCode != 200 {
		t.Errorf("server broken after bad input: %d", resp.StatusCode)
	}
}

// Content-Length together with Transfer-Encoding cannot smuggle a request:
// the request is refused with 400 before the request flow, nothing reaches
// the host, and the connection closes, so the bytes after the head are
// never read as a request (threats-and-benchmarks.md: reject CL+TE).
func TestContentLengthAndTransferEncoding(t *testing.T) {
	e := newEnv(t, nil)
	smuggled := "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
	body := "0\r\n\r\n" + smuggled
	for _, fields := range [][]string{
		{"Content-Length: " + strconv.Itoa(len(body)), "Transfer-Encoding: chunked"},
		{"Transfer-Encoding: chunked", "content-length: " + strconv.Itoa(len(body))},
	} {
		c := e.connect(rootRec(wsDest))
		c.send(req("POST", "/machine?comp=health", fields...) + body)
		resp, _ := c.read("POST")
		if resp.StatusCode != http.StatusBadRequest || !resp.Close {
			t.Fatalf("%q: status %d, close %v", fields, resp.StatusCode, resp.Close)
		}
		if !c.closedByServer() {
			t.Fatalf("%q: connection kept after the refusal", fields)
		}
	}
	if got := e.up.requests(); len(got) != 0 {
		t.Fatalf("refused requests reached the host: %d", len(got))
	}
}

// TestMissingHostOrder: an HTTP/1.1 request without Host is refused only
// where it would be forwarded; the method, direct-connection and
// authorization answers come first, as upstream's (protocol.md §4.5).
func TestMissingHostOrder(t *testing.T) {
	e := newEnv(t, nil) // fakeAuthz denies targets containing "deny"
	for _, tc := range []struct {
		name, raw string
		rec       *identity.Record
		want      int
	}{
		{"TRACE", "TRACE / HTTP/1.1\r\n\r\n", rootRec(wsDest), http.StatusMethodNotAllowed},
		{"WIDGET", "WIDGET / HTTP/1.1\r\n\r\n", rootRec(wsDest), http.StatusMethodNotAllowed},
		{"direct", "GET / HTTP/1.1\r\n\r\n", nil, http.StatusMisdirectedRequest},
		{"denied", "GET /deny HTTP/1.1\r\n\r\n", rootRec(wsDest), http.StatusForbidden},
		{"forwarded", "GET /machine?comp=goalstate HTTP/1.1\r\n\r\n", rootRec(wsDest), http.StatusBadRequest},
	} {
		c := e.connect(tc.rec)
		resp, _ := c.do(tc.raw)
		if resp.StatusCode != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, resp.StatusCode, tc.want)
		}
	}
	evs := e.rec.wait(t, 5)
	if last := evs[len(evs)-1]; last.Status != http.StatusBadRequest || last.Error != "missing required Host header" {
		t.Errorf("audit of the Host-less request: %d %q", last.Status, last.Error)
	}
	if got := e.up.requests(); len(got) != 0 {
		t.Fatalf("a Host-less request reached the host: %+v", got[0].target)
	}
}

// Slowloris: a client that never finishes its headers is disconnected,
// on its first request and on a later one of a keep-alive connection
// (whose idle timeout is far longer), also after line ends tolerated
// after a POST body.
func TestHeaderReadTimeout(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.ReadHeaderTimeout = 200 * time.Millisecond; o.IdleTimeout = time.Hour })
	const slow = "GET /machine HTTP/1.1\r\nHost: 168.63.129.16\r\nX-Slow: "
	c := e.connect(rootRec(wsDest))
	c.send(slow)
	if !c.closedByServer() {
		t.Fatal("slow client still connected")
	}
	for _, first := range []string{req("GET", "/x"), req("POST", "/x", "Content-Length: 1") + "x\r\n\r\n"} {
		c = e.connect(rootRec(wsDest))
		if resp, _ := c.do(first); resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		c.send(slow)
		if !c.closedByServer() {
			t.Fatalf("slow second request after %q: still connected", first)
		}
	}
}

// Connections beyond MaxConns are closed at once; a slot frees on close.
func TestMaxConns(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxConns = 2 })
	a := e.connect(rootRec(wsDest))
	b := e.connect(rootRec(wsDest))
	for _, c := range []*client{a, b} {
		if resp, _ := c.do(req("GET", "/x")); resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	extra := e.connect(rootRec(wsDest))
	extra.c.Write([]byte(req("GET", "/x")))
	if !extra.closedByServer() {
		t.Fatal("connection over the limit was served")
	}
	a.c.Close()
	// The slot frees once the server has seen the close.
	testsupport.WaitFor(t, "a's slot to free", func() bool { return e.openClients() == 1 })
	c := e.connect(rootRec(wsDest))
	if resp, _ := c.do(req("GET", "/x")); resp.StatusCode != 200 {
		t.Errorf("connection after one closed: status %d", resp.StatusCode)
	}
}

// One caller (a user in a network namespace; all direct connections
// together) holds at most MaxConnsPerCaller connections, so it cannot take
// every slot: its next connection is closed unread while other callers,
// and root in the agent's namespace without limit, are served.
func TestMaxConnsPerCaller(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxConnsPerCaller = 2 })
	served := func(c *client) bool {
		resp, _ := c.do(req("GET", "/x"))
		return resp != nil && resp.StatusCode == 200
	}
	refused := func(c *client) bool {
		c.c.Write([]byte(req("GET", "/x")))
		return c.closedByServer()
	}
	user := func(uid uint32) *identity.Record { r := userRec(wsDest); r.UID = uid; return r }
	container := func(netns uint64) *identity.Record {
		return &identity.Record{PID: 300, UID: 0, Comm: "curl", OrigDst: imdsDest, Netns: netns, OtherNetns: true}
	}
	// uid 1000 takes its two slots; its third connection is closed.
	held := []*client{e.connect(user(1000)), e.connect(user(1000))}
	for _, c := range held {
		if !served(c) {
			t.Fatal("uid 1000 within its limit not served")
		}
	}
	if !refused(e.connect(user(1000))) {
		t.Fatal("uid 1000's third connection was served")
	}
	// Others are not affected: another user, root (any number), a
	// container's root.
	if !served(e.connect(user(1001))) {
		t.Error("uid 1001 locked out by uid 1000")
	}
	for i := range 4 {
		if !served(e.connect(rootRec(wsDest))) {
			t.Errorf("root's connection %d not served", i)
		}
	}
	if c1, c2 := e.connect(container(7)), e.connect(container(7)); !served(c1) || !served(c2) || !refused(e.connect(container(7))) {
		t.Error("a container's root is not limited like any caller")
	}
	if !served(e.connect(container(8))) {
		t.Error("another container locked out by the first")
	}
	// Direct (unidentified) connections count as one caller.
	d1, d2 := e.connect(nil), e.connect(nil)
	for _, c := range []*client{d1, d2} {
		if resp, _ := c.do(req("GET", "/x")); resp.StatusCode != http.StatusMisdirectedRequest {
			t.Fatalf("direct connection: %d", resp.StatusCode)
		}
	}
	// (a 421 closes the connection: the slots free again)
	testsupport.WaitFor(t, "direct connections' slots to free", func() bool {
		e.srv.callers.mu.Lock()
		defer e.srv.callers.mu.Unlock()
		return e.srv.callers.n[callerKey{unidentified: true}] == 0
	})
	idle := []*client{e.connect(nil), e.connect(nil)}
	for _, c := range idle {
		c.c.Write([]byte("GET")) // a request head in progress holds the slot
	}
	testsupport.WaitFor(t, "two direct connections held", func() bool {
		e.srv.callers.mu.Lock()
		defer e.srv.callers.mu.Unlock()
		return e.srv.callers.n[callerKey{unidentified: true}] == 2
	})
	if !refused(e.connect(nil)) {
		t.Error("a third direct connection was served")
	}
	// A direct connection the kernel recorded (no original destination)
	// counts under its user, not in that full shared bucket: root's
	// (azure-proxy-agent --status) and another user's are answered.
	for _, uid := range []uint32{0, 1002} {
		rec := &identity.Record{PID: 400, UID: uid, Comm: "azure-proxy-age"}
		if resp, _ := e.connect(rec).do(req("GET", "/x")); resp == nil || resp.StatusCode != http.StatusMisdirectedRequest {
			t.Errorf("uid %d's recorded direct connection with the shared bucket full: %v, want 421", uid, resp)
		}
	}
	// A slot frees when its connection closes.
	held[0].c.Close()
	testsupport.WaitFor(t, "uid 1000's slot to free", func() bool {
		e.srv.callers.mu.Lock()
		defer e.srv.callers.mu.Unlock()
		return e.srv.callers.n[callerKey{uid: 1000}] == 1
	})
	if !served(e.connect(user(1000))) {
		t.Error("uid 1000 not served after one of its connections closed")
	}
}

// Callers at their per-caller limit together cannot take the last slots:
// rootReserve of MaxConns stay for root in the agent's namespace; and the
// rest is shared half and half between the agent's namespace and the
// containers, so containers at their limits cannot lock out the host's
// users, nor these the containers.
func TestRootReserve(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxConns = 32; o.MaxConnsPerCaller = 8 })
	for n, want := range map[int]int{32: 2, 2: 1, 1: 0} {
		if r := rootReserve(n); r != want {
			t.Fatalf("rootReserve(%d) = %d, want %d", n, r, want)
		}
	}
	// The kernel is given the agent namespace's share: every slot not kept
	// for root less the containers' half, while the per-caller limit is on;
	// none when off.
	for _, tc := range []struct {
		maxConns, perCaller int
		split               bool
		own, containers     int
	}{
		{500, 64, true, 235, 234}, // 500 less root's 31, halved
		{500, 64, false, 469, 0},  // the kernel cannot tell namespaces apart: one pool
		{500, 0, true, 0, 0},      // no per-caller limit: no limit of all
		{3, 1, true, 1, 1},
		{2, 1, true, 1, 0}, // fewer than two slots left: one pool
		{1, 1, true, 1, 0},
	} {
		if own, containers := ConnShares(tc.maxConns, tc.perCaller, tc.split); own != tc.own || containers != tc.containers {
			t.Errorf("ConnShares(%d, %d, %v) = %d, %d; want %d, %d", tc.maxConns, tc.perCaller, tc.split, own, containers, tc.own, tc.containers)
		}
	}
	served := func(c *client) bool {
		resp, _ := c.do(req("GET", "/x"))
		return resp != nil && resp.StatusCode == 200
	}
	// Root's own connection does not take one of the others' 30 slots.
	rootHeld := e.connect(rootRec(wsDest))
	if !served(rootHeld) {
		t.Fatal("root's first connection refused")
	}
	// Four containers and four users of the agent's namespace, 8 each: of
	// the 30 slots not kept for root, 15 for each group.
	hold := func(rec func(i uint64) *identity.Record) int {
		var held []*client
		for i := uint64(1); i <= 4; i++ {
			for range 8 {
				c := e.connect(rec(i))
				c.c.Write([]byte(req("GET", "/x")))
				held = append(held, c)
			}
		}
		open := 0
		for _, c := range held {
			if _, err := c.br.Peek(1); err == nil {
				open++
			}
		}
		return open
	}
	if n := hold(func(ns uint64) *identity.Record {
		return &identity.Record{PID: 300, UID: 0, Comm: "curl", OrigDst: imdsDest, Netns: ns, OtherNetns: true}
	}); n != 15 {
		t.Fatalf("%d container connections served, want 15 (their half of 32 less the 2 kept for root)", n)
	}
	if n := hold(func(uid uint64) *identity.Record {
		return &identity.Record{PID: 300, UID: uint32(1000 + uid), Comm: "curl", OrigDst: imdsDest}
	}); n != 15 {
		t.Fatalf("%d connections of the host's users served with the containers' share full, want 15", n)
	}
	// Each group's 17 beyond its share count as full, not as over a
	// caller's own limit (each caller held just its 8).
	if perCaller, full := e.srv.Refused(); perCaller != 0 || full != 34 {
		t.Errorf("Refused() = %d per caller, %d full; want 0, 34", perCaller, full)
	}
	// The refused ones give their slots back after their clients saw them
	// closed.
	testsupport.WaitFor(t, "refused connections' slots to free", func() bool { return e.openClients() == 31 })
	if !served(e.connect(rootRec(wsDest))) {
		t.Errorf("root's second connection refused with the others' slots full")
	}
}

// One identity lookup and one upstream connection serve all requests of a
// keep-alive client connection, including pipelined ones.
func TestKeepAliveReuseAndPipelining(t *testing.T) {
	e := newEnv(t, nil)
	c := e.connect(rootRec(wsDest))
	for i := 0; i < 3; i++ {
		resp, body := c.do(req("GET", "/r"+strconv.Itoa(i)))
		if resp.StatusCode != 200 || body != "ok /r"+strconv.Itoa(i) {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	c.send(req("GET", "/p1") + req("POST", "/p2", "Content-Length: 2") + "hi" + req("GET", "/p3"))
	for _, want := range []string{"/p1", "/p2", "/p3"} {
		resp, body := c.read("GET")
		if resp.StatusCode != 200 || body != "ok "+want {
			t.Fatalf("pipelined %s: %d %q", want, resp.StatusCode, body)
		}
	}
	if n := e.up.conns.Load(); n != 1 {
		t.Errorf("upstream connections %d, want 1", n)
	}
	if n := e.ids.lookups.Load(); n != 1 {
		t.Errorf("identity lookups %d, want 1", n)
	}
	evs := e.rec.wait(t, 6)
	ids := map[uint64]bool{}
	for _, ev := range evs {
		if ev.TCPID != evs[0].TCPID || ids[ev.HTTPID] || ev.Status != 200 || !ev.Authorized {
			t.Errorf("event %+v", ev)
		}
		ids[ev.HTTPID] = true
	}
	if e.srv.RequestCount() != 6 {
		t.Errorf("RequestCount %d", e.srv.RequestCount())
	}
}

// When the host closes the kept-alive connection, the next request uses a
// new upstream connection instead of failing.
func TestUpstreamReconnect(t *testing.T) {
	e := newEnv(t, nil)
	e.up.setHandler(func(r seenRequest) upReply {
		return upReply{status: 200, body: "ok", closeAfter: r.target == "/close"}
	})
	c := e.connect(rootRec(wsDest))
	for _, target := range []string{"/close", "/after-close", "/again"} {
		if resp, _ := c.do(req("GET", target)); resp.StatusCode != 200 {
			t.Fatalf("%s: status %d", target, resp.StatusCode)
		}
	}
	if n := e.up.conns.Load(); n != 2 {
		t.Errorf("upstream connections %d, want 2", n)
	}
}

// A host that drops an idle kept-alive connection without saying so.
func TestUpstreamSilentCloseReconnect(t *testing.T) {
	// POST: not replayable, so the kept connection is peeked before use.
	// GET: replayable, sent without a peek; the closed connection fails it
	// and it is sent again on a new one.
	for _, method := range []string{"POST", "GET"} {
		t.Run(method, func(t *testing.T) { testUpstreamSilentClose(t, method) })
	}
}

func testUpstreamSilentClose(t *testing.T, method string) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns int
	var mu sync.Mutex
	closed := make(chan struct{}, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns++
			mu.Unlock()
			go func() {
				buf := make([]byte, 4096)
				c.Read(buf)
				c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
				// close after one response, without Connection: close
				c.Close()
				closed <- struct{}{}
			}()
		}
	}()
	e := newEnv(t, func(o *Options) { o.Upstream = func(netip.AddrPort) string { return ln.Addr().String() } })
	c := e.connect(rootRec(wsDest))
	for i := 0; i < 3; i++ {
		raw := req("POST", "/p", "Content-Length: 1") + "x"
		if method == "GET" {
			raw = req("GET", "/p")
		}
		resp, body := c.do(raw)
		if resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
		testsupport.Receive(t, "the host's close", closed)
	}
	mu.Lock()
	defer mu.Unlock()
	if conns != 3 {
		t.Errorf("upstream connections %d, want 3", conns)
	}
}

// Bytes a host sends unasked on a kept connection (a 408 before it closes
// an idle connection) are never taken for the next request's answer, not
// even for a GET the proxy could send again: the connection is peeked and
// replaced.
func TestUpstreamUnaskedBytesNotAnAnswer(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	answered, unasked := make(chan struct{}), make(chan struct{}, 1)
	go func() {
		for n := 0; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn, n int) {
				defer c.Close()
				br := bufio.NewReader(c)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				if n > 0 {
					c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond"))
					return
				}
				c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"))
				// Once the client has the answer, the proxy has read all of
				// it: the next bytes stay in the kernel, not in its buffer.
				// On loopback the write returns once they are queued there.
				<-answered
				c.Write([]byte("HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
				unasked <- struct{}{}
				br.ReadByte() // until the proxy closes the connection
			}(c, n)
		}
	}()
	e := newEnv(t, func(o *Options) { o.Upstream = func(netip.AddrPort) string { return ln.Addr().String() } })
	c := e.connect(rootRec(wsDest))
	if resp, body := c.do(req("GET", "/a")); resp.StatusCode != 200 || body != "first" {
		t.Fatalf("first request: %d %q", resp.StatusCode, body)
	}
	close(answered)
	testsupport.Receive(t, "the host's unasked 408", unasked)
	if resp, body := c.do(req("GET", "/b")); resp.StatusCode != 200 || body != "second" {
		t.Fatalf("second request: %d %q, want the new connection's 200", resp.StatusCode, body)
	}
}

// Every request yields exactly one audit event, whatever its outcome.
func TestOneAuditEventPerRequest(t *testing.T) {
	e := newEnv(t, nil)
	raws := []struct {
		rec *identity.Record
		raw string
	}{
		{nil, req("GET", "/")},
		{rootRec(wsDest), req("WIDGET", "/")},
		{rootRec(wsDest), req("GET", "/a/../b")},
		{userRec(imdsDest), req("GET", "/deny")},
		{userRec(imdsDest), req("GET", "/ok")},
		{nil, req("GET", "/provision", "Metadata: true")},
		{rootRec(wsDest), req("POST", "/x", "Content-Length: 999999")},
	}
	for _, r := range raws {
		c := e.connect(r.rec)
		c.do(r.raw)
		c.c.Close()
	}
	// Every handler has returned, and recorded its event, once the server
	// released the connections.
	e.waitClientsClosed()
	evs := e.rec.wait(t, 0)
	if n := len(evs); n != len(raws) {
		t.Errorf("%d events for %d requests", n, len(raws))
	}
	wantStatus := map[string]int{"GET /": 421, "WIDGET /": 405, "GET /a/../b": 403, "GET /deny": 403, "GET /ok": 200,
		"GET /provision": 200, "POST /x": 413}
	for _, ev := range evs {
		if want := wantStatus[ev.Method+" "+ev.Target]; ev.Status != want {
			t.Errorf("%s %s: status %d, want %d", ev.Method, ev.Target, ev.Status, want)
		}
		// A 413 comes before the request flow: no request id.
		if ev.Latency <= 0 || (ev.HTTPID == 0) != (ev.Status == 413) || ev.TCPID == 0 {
			t.Errorf("event %+v", ev)
		}
	}
}

// Listener status and bind retry on EADDRINUSE (§4.1).
func TestListenStatusAndRetry(t *testing.T) {
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := busy.Addr().String()
	var mu sync.Mutex
	var statuses []string
	opts := Options{Addr: addr, Identity: newGateSource(), Claims: fakeClaims{}, Authorizer: &fakeAuthz{},
		Keys: &fakeKeys{}, BindRetries: 2, BindRetryInterval: 20 * time.Millisecond,
		Logger: slogDiscard(), Start: time.Now().Add(-1500 * time.Millisecond),
		ListenerStatus: func(running bool, msg string) {
			mu.Lock()
			statuses = append(statuses, fmt.Sprintf("%v|%s", running, msg))
			mu.Unlock()
		}}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Listen()
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("Listen on a busy port: %v", err)
	}
	mu.Lock()
	if len(statuses) != 1 || !strings.HasPrefix(statuses[0], "false|") || !strings.Contains(statuses[0], "in use") {
		t.Errorf("statuses %q", statuses)
	}
	statuses = nil
	mu.Unlock()

	// Freed during the retries: the bind succeeds.
	s2, _ := New(Options{Addr: addr, Identity: newGateSource(), Claims: fakeClaims{}, Authorizer: &fakeAuthz{},
		Keys: &fakeKeys{}, BindRetries: 50, BindRetryInterval: 20 * time.Millisecond, Logger: slogDiscard(),
		Start: opts.Start, ListenerStatus: opts.ListenerStatus})
	time.AfterFunc(60*time.Millisecond, func() { busy.Close() })
	if err := s2.Listen(); err != nil {
		t.Fatalf("Listen after the port was freed: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s2.Serve() }()
	s2.Close()
	if err := <-done; err != nil {
		t.Errorf("Serve after Close: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(statuses) != 2 || !strings.HasPrefix(statuses[0], "true|Started proxy listener, ready to accept request - ") ||
		!strings.HasPrefix(statuses[1], "false|") {
		t.Fatalf("statuses %q", statuses)
	}
	ms, err := strconv.Atoi(strings.TrimPrefix(statuses[0], "true|Started proxy listener, ready to accept request - "))
	if err != nil || ms < 1500 {
		t.Errorf("elapsed ms %d (%v), want ≥ 1500", ms, err)
	}
}

func TestNewRequiresDependencies(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Error("New without dependencies succeeded")
	}
}

func TestLocalTargetRules(t *testing.T) {
	for _, tc := range []struct{ target, want string }{
		{"/provision", provision.Path}, {"/provision?", provision.Path}, {"/provision?a", ""},
		{"/gpa-aggregated-status", msp.AggregateStatusPath}, {"http://127.0.0.1:3080/provision", ""}, {"/Provision", ""},
	} {
		if got := localTarget(tc.target); got != tc.want {
			t.Errorf("localTarget(%q) = %q", tc.target, got)
		}
	}
}

// The body read bound covers the client's body only: a host slower than it
// still answers, and a client that stalls mid-body is disconnected.
func TestBodyReadTimeout(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.BodyReadTimeout = 100 * time.Millisecond })
	e.up.setHandler(func(r seenRequest) upReply {
		time.Sleep(300 * time.Millisecond)
		return upReply{status: 200, body: "slow"}
	})
	c := e.connect(rootRec(wsDest))
	for _, raw := range []string{
		req("POST", "/machine?comp=health", "Content-Length: 2") + "hi",
		req("PUT", "/vmAgentLog", "Content-Length: 2") + "hi",
		req("GET", "/machine?comp=goalstate"),
	} {
		if resp, body := c.do(raw); resp.StatusCode != 200 || body != "slow" {
			t.Fatalf("%q: got %d %q", raw, resp.StatusCode, body)
		}
	}

	stall := e.connect(rootRec(wsDest))
	stall.send(req("POST", "/machine?comp=health", "Content-Length: 10") + "12345")
	if !stall.closedByServer() {
		t.Fatal("client stalled mid-body still connected")
	}
}

// The upstream connection is opened at accept, before any request.
func TestEagerUpstreamDial(t *testing.T) {
	e := newEnv(t, nil)
	e.connect(rootRec(wsDest))
	testsupport.WaitFor(t, "an upstream connection opened at accept", func() bool { return e.up.conns.Load() == 1 })
	// Direct: no dial. The setup a connection gets at accept runs here in
	// the test's goroutine, so its outcome is known when it returns.
	direct := e.connect(nil)
	st := &connState{s: e.srv, client: addrPort(direct.c.LocalAddr())}
	e.ids.set(st.client, nil)
	st.setup(context.Background())
	if st.up != nil || st.dialErr != nil {
		t.Errorf("direct connection: upstream %v, dial error %v", st.up, st.dialErr)
	}
	direct.c.Close()
	testsupport.WaitFor(t, "the server to release the direct connection", func() bool { return e.openClients() == 1 })
	if n := e.up.conns.Load(); n != 1 {
		t.Errorf("upstream connections %d after a direct connection, want 1", n)
	}
}

// Expect: 100-continue is answered by the proxy; the host gets the body
// without the Expect header, signed.
func TestExpectContinue(t *testing.T) {
	e := newEnv(t, nil)
	c := e.connect(rootRec(wsDest))
	c.send(req("POST", "/machine?comp=health", "Content-Length: 4", "Expect: 100-continue"))
	interim, _ := c.read("POST")
	if interim.StatusCode != http.StatusContinue {
		t.Fatalf("got %d, want 100", interim.StatusCode)
	}
	c.send("body")
	resp, _ := c.read("POST")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	r := e.up.requests()[0]
	if string(r.body) != "body" || r.values("Expect") != nil || !r.sigOK {
		t.Errorf("upstream got body %q expect %q verifies=%v", r.body, r.values("Expect"), r.sigOK)
	}
}

// plainConn hides the socket so the proxy cannot peek at an idle upstream
// connection and must find a closed one by using it.
type plainConn struct{ net.Conn }

// A kept-alive upstream connection the host closed is found on use: an
// idempotent request is replayed once on a new connection, a POST gets 502.
func TestUpstreamClosedFoundOnUse(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	closed := make(chan struct{}, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				c.Read(make([]byte, 4096))
				c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
				c.Close()
				closed <- struct{}{}
			}()
		}
	}()
	e := newEnv(t, func(o *Options) {
		o.Upstream = func(netip.AddrPort) string { return ln.Addr().String() }
		o.DialUpstream = func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return plainConn{c}, nil
		}
	})
	c := e.connect(rootRec(wsDest))
	if resp, _ := c.do(req("GET", "/1")); resp.StatusCode != 200 {
		t.Fatalf("first: %d", resp.StatusCode)
	}
	testsupport.Receive(t, "the host's close", closed)
	if resp, body := c.do(req("GET", "/2")); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("idempotent request on a closed kept-alive connection: %d %q", resp.StatusCode, body)
	}
	testsupport.Receive(t, "the host's close", closed)
	resp, _ := c.do(req("POST", "/3", "Content-Length: 1") + "x")
	if resp.StatusCode != http.StatusBadGateway || !resp.Close {
		t.Fatalf("POST on a closed kept-alive connection: %d close=%v, want 502 close", resp.StatusCode, resp.Close)
	}
}

// "OPTIONS *" is authorized, forwarded and audited like any request, not
// answered by Go's built-in handler.
func TestOptionsAsterisk(t *testing.T) {
	e := newEnv(t, nil)
	c := e.connect(userRec(imdsDest))
	resp, _ := c.do(req("OPTIONS", "*"))
	if resp.StatusCode != 200 || resp.Header.Get(msp.HeaderAuthorization) != msp.ResponseMarker {
		t.Fatalf("got %d %v", resp.StatusCode, resp.Header)
	}
	if r := e.up.requests(); len(r) != 1 || r[0].target != "*" || !r[0].sigOK {
		t.Errorf("upstream got %+v", r)
	}
	if evs := e.rec.wait(t, 1); !evs[0].Authorized || evs[0].Target != "*" {
		t.Errorf("audit %+v", evs[0])
	}
}

// The eagerly opened connection counts as kept: if the host closed it
// before the first request, that request is sent on a new connection.
func TestEagerConnectionClosedBeforeFirstRequest(t *testing.T) {
	for _, peek := range []bool{true, false} {
		t.Run(fmt.Sprintf("peek=%v", peek), func(t *testing.T) {
			ln, err := net.Listen("tcp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			accepted := make(chan struct{}, 4)
			go func() {
				for n := 0; ; n++ {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					if n == 0 {
						c.Close() // the eager connection dies unused
						accepted <- struct{}{}
						continue
					}
					accepted <- struct{}{}
					go func() {
						defer c.Close()
						c.Read(make([]byte, 4096))
						c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
					}()
				}
			}()
			e := newEnv(t, func(o *Options) {
				o.Upstream = func(netip.AddrPort) string { return ln.Addr().String() }
				if !peek {
					o.DialUpstream = func(ctx context.Context, network, addr string) (net.Conn, error) {
						var d net.Dialer
						c, err := d.DialContext(ctx, network, addr)
						if err != nil {
							return nil, err
						}
						return plainConn{c}, nil
					}
				}
			})
			c := e.connect(rootRec(wsDest))
			testsupport.Receive(t, "the host to close the eager connection", accepted)
			if resp, body := c.do(req("GET", "/first")); resp.StatusCode != 200 || body != "ok" {
				t.Fatalf("got %d %q", resp.StatusCode, body)
			}
		})
	}
}
