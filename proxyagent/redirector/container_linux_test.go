package redirector

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opengpa/gpa/bpf"
	"github.com/opengpa/gpa/internal/testenv"
	"github.com/opengpa/gpa/proxyagent/hostconn"
	"github.com/opengpa/gpa/proxyagent/identity"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// Connects from another network namespace go to the container listener,
// and their records say so. Two namespaces that use the same client
// address and port mark the pending record as a collision, and Lookup
// refuses it instead of handing one namespace's identity to the other.
// With the connection limits on (as in production) the kernel drops a
// counted connection's record when it fails: the one that collided must
// not take the other's record, mark and all, with it and then publish a
// clean one of its own in its place.
func TestContainerRecordsAndCollision(t *testing.T) {
	for _, limits := range []bool{false, true} {
		t.Run(fmt.Sprintf("limits=%v", limits), func(t *testing.T) { testContainerRecordsAndCollision(t, limits) })
	}
}

func testContainerRecordsAndCollision(t *testing.T, limits bool) {
	e := newEnv(t)
	ca := e.useContainerListener()
	if limits {
		e.productionLimits()
	}
	r := e.loadRedirecting()
	// The container listener accepts nothing: records stay pending in the
	// kernel until the test looks them up.
	e.listenAgent(ca)

	// Same container address in both; A's network is the more specific
	// route in the VM, so the VM answers A, never B: B's connects fail.
	a := testenv.NewContainer(t, e.ns, e.cg, "gpcA", netip.MustParsePrefix("169.254.232.1/30"), netip.MustParsePrefix("169.254.232.2/30"))
	b := testenv.NewContainer(t, e.ns, e.cg, "gpcB", netip.MustParsePrefix("169.254.232.5/29"), netip.MustParsePrefix("169.254.232.2/29"))
	cookie := func(k *testenv.Container) uint64 {
		var c uint64
		if err := k.Netns.Do(func() (err error) { c, err = NetnsCookie(); return err }); err != nil {
			t.Fatal(err)
		}
		return c
	}
	connect := func(k *testenv.Container, port string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// The answer does not matter (nothing accepts): the record is
		// written when the connect starts.
		_, _ = testenv.Run(ctx, testenv.Options{Netns: k.Netns, Cgroup: k.Cgroup}, "curl", "-s", "--noproxy", "*",
			"--connect-timeout", "1", "--max-time", "1", "--local-port", port, "http://169.254.169.254/")
	}
	peer := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(a.Addr, port) }
	pending := func(port uint16) bpf.RedirectConnRecord {
		t.Helper()
		var raw bpf.RedirectConnRecord
		key := bpf.RedirectConnKey{Addr: a.Addr.As4(), Port: port, DstAddr: ca.Addr().As4(), DstPort: ca.Port()}
		if err := r.objs.ConnRecords.Lookup(key, &raw); err != nil {
			t.Fatalf("no pending record for %s: %v", peer(port), err)
		}
		return raw
	}

	// One container alone: its record names its namespace, not the agent's.
	connect(a, "40001")
	rec, ok := r.Lookup(peer(40001), ca)
	if !ok || !rec.OtherNetns || rec.Netns != cookie(a) || rec.OrigDst != msp.IMDSAddr || rec.CgroupID != a.Cgroup.ID {
		t.Fatalf("container A's record %+v (found %v), want its netns, cgroup and IMDS", rec, ok)
	}

	// A, then B (whose connect fails), from the same address and port;
	// then B again. A's record stays, marked.
	connect(a, "40003")
	connect(b, "40003")
	connect(b, "40003")
	if raw := pending(40003); raw.Collision != 1 || raw.Netns != cookie(a) {
		t.Errorf("pending record collision=%d netns=%d, want A's record (netns %d) marked", raw.Collision, raw.Netns, cookie(a))
	}
	if rec, ok := r.Lookup(peer(40003), ca); ok {
		t.Errorf("A's connection was handed a record after B collided with it: %+v", rec)
	}

	// A namespace of a user's own with A's address (and the container
	// listener's, with a listener of its own that holds what it accepts)
	// connects first from A's port, so A's connect marks that record.
	// Resetting its connection and connecting again from the same port
	// must not clear the mark and leave a clean record of its own, which
	// the agent would then hand to A's connection.
	ownNs := testenv.NewNetns(t, a.Addr, ca.Addr())
	ownL, err := ownNs.Listen("tcp", ca.String())
	if err != nil {
		t.Fatal(err)
	}
	defer ownL.Close()
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ownL.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	attacker := startConns(t, worldExecutable(t), testenv.Options{Netns: ownNs, Cgroup: e.cg})
	from := "from " + msp.IMDSAddr.String() + " " + peer(40004).String()
	if got := attacker.do(from); got != "ok" {
		t.Fatalf("the own namespace's connect: %s", got)
	}
	connect(a, "40004")
	attacker.do("reset 0")
	if got := attacker.do(from); got != "ok" {
		t.Fatalf("the own namespace's second connect: %s", got)
	}
	if raw := pending(40004); raw.Collision != 1 {
		t.Errorf("the record under A's key after the other namespace reconnected: collision=%d netns=%d (A's %d)",
			raw.Collision, raw.Netns, cookie(a))
	}
	if rec, ok := r.Lookup(peer(40004), ca); ok {
		t.Errorf("A's connection was handed a record of the namespace that collided with it: %+v", rec)
	}

	// B, then A, from the same address and port.
	connect(b, "40002")
	connect(a, "40002")
	if !limits {
		// (With limits B's failed connect took its record with it, so A's
		// is the only one: nothing collided.)
		if raw := pending(40002); raw.Collision != 1 || raw.Netns != cookie(b) {
			t.Errorf("pending record collision=%d netns=%d, want B's record (netns %d) marked", raw.Collision, raw.Netns, cookie(b))
		}
		if rec, ok := r.Lookup(peer(40002), ca); ok {
			t.Errorf("a collided record was handed out: %+v", rec)
		}
	} else if rec, ok := r.Lookup(peer(40002), ca); !ok || rec.Netns != cookie(a) {
		t.Errorf("A's record after B's failed connect: %+v (found %v), want A's", rec, ok)
	}
	if _, ok := r.Lookup(peer(40002), ca); ok {
		t.Error("the record was not consumed")
	}
}

// The agent's socket mark does not exempt a socket of another network
// namespace: a container's root, which may set any mark with CAP_NET_RAW
// (Linux 5.17 and later), is redirected like any container — here refused,
// as no container listener is configured — and never reaches the host
// directly.
func TestForgedMarkFromContainer(t *testing.T) {
	e := newEnv(t)
	e.loadRedirecting()
	k := testenv.NewContainer(t, e.ns, e.cg, "gpcM", netip.MustParsePrefix("169.254.233.1/30"), netip.MustParsePrefix("169.254.233.2/30"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	out, err := testenv.Run(ctx, testenv.Options{Netns: k.Netns, Cgroup: k.Cgroup, Env: []string{"GPA_REDIRECTOR_HELPER=dial",
		"GPA_HELPER_ADDR=169.254.169.254:80", fmt.Sprintf("GPA_HELPER_MARK=%d", hostconn.Mark)}}, exe)
	if err == nil || strings.Contains(string(out), "direct") {
		t.Fatalf("a container's socket with the agent's mark: %q %v, want the connect refused", out, err)
	}
	if got := e.direct.Load(); got != 0 {
		t.Errorf("%d connections reached the real IMDS", got)
	}
}

// A namespace of a user's own (unprivileged user namespaces) can listen on
// the container listener's address and keep its redirected connections
// itself. Those never reach the agent: a connect from a loopback address
// there must leave no record under a key the agent's namespace uses
// (127.0.0.1:port), where it would collide with a record of root's.
func TestOwnNamespaceLoopbackLeavesNoRecord(t *testing.T) {
	e := newEnv(t)
	ca := msp.ContainerListenerAddr
	e.cfg.Endpoints.ContainerListener = ca
	r := e.loadRedirecting()
	own := testenv.NewNetns(t, ca.Addr())
	l, err := own.Listen("tcp", ca.String())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go closeEach(l)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, port := range []string{"40101", "40102"} {
		_, _ = testenv.Run(ctx, testenv.Options{Netns: own, Cgroup: e.cg}, "curl", "-s", "--noproxy", "*",
			"--interface", "127.0.0.1", "--local-port", port, "--max-time", "2", "http://169.254.169.254/")
	}
	for key := range recordKeys(t, e.cfg.PinDir) {
		if key.Addr == [4]byte{127, 0, 0, 1} {
			t.Errorf("a connection of another namespace left a record under 127.0.0.1:%d", key.Port)
		}
	}
	// A connect from the namespace's own non-loopback address is recorded
	// as before (the container path).
	_, _ = testenv.Run(ctx, testenv.Options{Netns: own, Cgroup: e.cg}, "curl", "-s", "--noproxy", "*",
		"--local-port", "40103", "--max-time", "2", "http://169.254.169.254/")
	if rec, ok := r.Lookup(netip.AddrPortFrom(ca.Addr(), 40103), ca); !ok || !rec.OtherNetns {
		t.Errorf("the namespace's connect from %s: record %+v found %v, want one of another namespace", ca.Addr(), rec, ok)
	}
}

// A record whose connection the agent can no longer accept is dropped,
// with the connection limits on as in production: a connect that failed,
// or a connection its peer closed (the agent closes only after taking the
// record). Otherwise such records wait in the map for an accept that
// cannot come. A connection its client closed itself (curl giving up on a
// listener that accepts nothing) keeps its record: the agent may still
// accept and serve it.
func TestUnconsumedRecordsDropped(t *testing.T) {
	e := newEnv(t)
	ca := msp.ContainerListenerAddr
	e.cfg.Endpoints.ContainerListener = ca
	e.productionLimits()
	e.loadRedirecting()
	ownNs := testenv.NewNetns(t, ca.Addr())
	ownL, err := ownNs.Listen("tcp", ca.String())
	if err != nil {
		t.Fatal(err)
	}
	go closeEach(ownL)
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	curl := func(o testenv.Options, port string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		o.Cgroup = e.cg
		_, _ = testenv.Run(ctx, o, "curl", "-s", "--noproxy", "*", "--local-port", port, "--max-time", "1",
			"http://169.254.169.254/")
	}
	// Closed by the user's own listener, then refused once it is gone.
	curl(testenv.Options{Netns: ownNs}, "40201")
	ownL.Close()
	curl(testenv.Options{Netns: ownNs}, "40202")
	// nobody in the agent's namespace while no listener is up.
	curl(testenv.Options{Netns: e.ns, Credential: nobody}, "40203")
	// Closed by its client while waiting: a listener that accepts nothing.
	e.listenAgent(msp.ListenerAddr)
	curl(testenv.Options{Netns: e.ns, Credential: nobody}, "40204")

	ports := map[uint16]bool{}
	for key := range recordKeys(t, e.cfg.PinDir) {
		ports[key.Port] = true
	}
	for _, p := range []uint16{40201, 40202, 40203} {
		if ports[p] {
			t.Errorf("the record of the connection from port %d outlived it", p)
		}
	}
	if !ports[40204] {
		t.Errorf("the connection its client closed lost its record before the agent could accept it (records at ports %v)", ports)
	}
}

// One client address and port can be connected to both of the agent's
// listeners at once (a port is unique per 4-tuple). Each connection gets
// its own record: a user's direct connection to the container listener
// from the port of root's redirected connection must never be handed
// root's record (it was, when records were keyed by the client alone).
func TestSameClientPortTwoListeners(t *testing.T) {
	e := newEnv(t)
	ca := e.useContainerListener()
	r := e.loadRedirecting()
	type accepted struct {
		local netip.AddrPort
		rec   identity.Record
		ok    bool
	}
	got := make(chan accepted, 4)
	// Nothing is accepted before both connections are made, so both
	// records are pending at once (the kernel completes the handshakes).
	start := make(chan struct{})
	for _, a := range []netip.AddrPort{msp.ListenerAddr, ca} {
		l := e.listenAgent(a)
		go func() {
			<-start
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				peer, local := ends(c)
				rec, ok := r.Lookup(peer, local)
				got <- accepted{local, rec, ok}
				t.Cleanup(func() { c.Close() })
			}
		}()
	}
	in := testenv.Options{Netns: e.ns, Cgroup: e.cg}
	nobody := in
	nobody.Credential = &syscall.Credential{Uid: 65534, Gid: 65534}
	exe := worldExecutable(t)
	user, root := startConns(t, exe, nobody), startConns(t, exe, in)
	const src = "127.0.0.1:40500"
	checkAnswer(t, "nobody straight to the container listener", user.do("from "+ca.String()+" "+src), "ok")
	checkAnswer(t, "root to IMDS", root.do("from "+msp.IMDSAddr.String()+" "+src), "ok")
	close(start)
	for range 2 {
		var a accepted
		select {
		case a = <-got:
		case <-time.After(10 * time.Second):
			t.Fatal("connection not accepted")
		}
		switch a.local {
		case ca:
			if !a.ok || a.rec.UID != 65534 || a.rec.OrigDst.IsValid() {
				t.Errorf("nobody's connection to the container listener: record %+v (found %v), want nobody's, no destination", a.rec, a.ok)
			}
		case msp.ListenerAddr:
			if !a.ok || a.rec.UID != 0 || a.rec.OrigDst != msp.IMDSAddr {
				t.Errorf("root's redirected connection: record %+v (found %v), want root's to IMDS", a.rec, a.ok)
			}
		default:
			t.Errorf("accepted at %v", a.local)
		}
	}
}
