package proxy

import (
	"bufio"
	"net"
	"net/http"
	"net/netip"
	"testing"

	"github.com/opengpa/gpa/proxyagent/identity"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// The container listener answers only redirected connections: without a
// kernel record every request gets 421, the local endpoints included; with
// one, requests are judged and forwarded as on the loopback listener, and
// the aggregate status stays the VM's own.
func TestContainerListener(t *testing.T) {
	free, err := net.Listen("tcp4", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	ca := free.Addr().(*net.TCPAddr).AddrPort()
	free.Close()
	e := newEnv(t, func(o *Options) { o.Endpoints.ContainerListener = ca })

	dial := func(rec *identity.Record) *client {
		t.Helper()
		c, err := net.Dial("tcp4", ca.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		e.ids.set(addrPort(c.LocalAddr()), rec)
		return &client{t: t, c: c, br: bufio.NewReader(c)}
	}
	for _, target := range []string{"/provision", "/gpa-aggregated-status", "/metadata/instance"} {
		resp, _ := dial(nil).do(req("GET", target, "Metadata: true"))
		if resp.StatusCode != http.StatusMisdirectedRequest {
			t.Errorf("%s without a record: %d, want 421", target, resp.StatusCode)
		}
	}
	if n := len(e.up.requests()); n != 0 {
		t.Fatalf("%d requests forwarded without a record", n)
	}

	container := &identity.Record{PID: 300, UID: 0, Comm: "curl", OrigDst: msp.IMDSAddr, OtherNetns: true}
	if resp, _ := dial(container).do(req("GET", "/gpa-aggregated-status", "Metadata: true")); resp.StatusCode != http.StatusForbidden {
		t.Errorf("aggregate status to a container's root: %d, want 403", resp.StatusCode)
	}
	rec := *container
	resp, body := dial(&rec).do(req("GET", "/metadata/instance"))
	if resp.StatusCode != http.StatusOK || body != "ok /metadata/instance" {
		t.Fatalf("redirected container request: %d %q", resp.StatusCode, body)
	}
	if az := e.az.requests(); len(az) != 1 || az[len(az)-1].Caller == nil || !az[len(az)-1].Caller.OtherNetns {
		t.Errorf("authorizer saw %+v, want the container caller", az)
	}
	// A record that does not say "other namespace" (a kernel without netns
	// cookies) is still a container's on the container listener: its root
	// is not the VM's.
	unknown := *container
	unknown.OtherNetns = false
	if resp, _ := dial(&unknown).do(req("GET", "/gpa-aggregated-status", "Metadata: true")); resp.StatusCode != http.StatusForbidden {
		t.Errorf("aggregate status to uid 0 on the container listener, namespace unknown: %d, want 403", resp.StatusCode)
	}
	// The container listener is the agent itself as a destination.
	if got := e.srv.opts.Endpoints.Classify(netip.AddrPortFrom(ca.Addr(), ca.Port())); got != msp.ProxyAgent {
		t.Errorf("container listener classified as %s", got)
	}
}
