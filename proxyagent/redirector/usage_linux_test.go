package redirector

import (
	"net/netip"
	"testing"

	"github.com/opengpa/gpa/bpf"
	"github.com/opengpa/gpa/proxyagent/msp"
)

func TestIdentityMapUsage(t *testing.T) {
	e := newEnv(t)
	r := e.load()
	n, capacity, err := r.IdentityMapUsage()
	if err != nil || n != 0 || capacity != 16384 {
		t.Fatalf("empty map: %d of %d, %v; want 0 of 16384", n, capacity, err)
	}
	for port := uint16(41000); port < 41005; port++ {
		key := bpf.RedirectConnKey{Addr: [4]byte{127, 0, 0, 1}, Port: port, DstAddr: msp.ListenerAddr.Addr().As4(), DstPort: msp.ListenerAddr.Port()}
		if err := r.objs.ConnRecords.Put(key, bpf.RedirectConnRecord{Pid: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if n, _, err := r.IdentityMapUsage(); err != nil || n != 5 {
		t.Errorf("after 5 records: %d, %v", n, err)
	}
	// The agent takes a record when it accepts the connection.
	if _, ok := r.Lookup(netip.MustParseAddrPort("127.0.0.1:41000"), msp.ListenerAddr); !ok {
		t.Fatal("record not found")
	}
	if n, _, err := r.IdentityMapUsage(); err != nil || n != 4 {
		t.Errorf("after one lookup: %d, %v", n, err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.IdentityMapUsage(); err == nil {
		t.Error("usage after Close: no error")
	}
}
