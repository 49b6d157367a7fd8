package redirector

import (
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/opengpa/gpa/proxyagent/msp"
)

// Redirects reads the pinned policy as the kernel has it: no pins, then
// redirected, then not.
func TestRedirectsReadsPinnedPolicy(t *testing.T) {
	e := newEnv(t)
	ws := msp.WireServerAddr
	if ok, err := Redirects(e.cfg.PinDir, ws); ok || err != nil {
		t.Fatalf("before load: %v %v, want false", ok, err)
	}
	if ok, err := Redirects(filepath.Join(t.TempDir(), "none"), ws); ok || err != nil {
		t.Fatalf("missing pin dir: %v %v, want false", ok, err)
	}
	r := e.load()
	if err := r.SetPolicy(true, false, true); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		dst  string
		want bool
	}{{ws.String(), true}, {msp.IMDSAddr.String(), false}, {msp.HostGAPluginAddr.String(), true}} {
		d := msp.DefaultEndpoints().Classify(netip.MustParseAddrPort(c.dst))
		if ok, err := Redirects(e.cfg.PinDir, netip.MustParseAddrPort(c.dst)); ok != c.want || err != nil {
			t.Errorf("%s (%s): %v %v, want %v", c.dst, d, ok, err, c.want)
		}
	}
	if err := r.SetPolicy(false, false, false); err != nil {
		t.Fatal(err)
	}
	if ok, err := Redirects(e.cfg.PinDir, ws); ok || err != nil {
		t.Errorf("after removing the redirect: %v %v, want false", ok, err)
	}
}
