package redirector

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/opengpa/gpa/internal/testenv"
	"github.com/opengpa/gpa/proxyagent/hostconn"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// A burst of connections waiting to be accepted at once, as when the
// agent falls behind, keeps every caller's record until the agent takes
// it: none is evicted from the identity map, so none is refused (421).
func TestPendingRecordsKept(t *testing.T) {
	const n = 2000
	e := newEnv(t)
	r := e.loadRedirecting()
	l := e.listenBacklog(msp.ListenerAddr, n).(*net.TCPListener)
	got, err := capacityRound(e, r, l, worldExecutable(t), n)
	if err != nil {
		t.Fatal(err)
	}
	if got != (capacityTally{records: n, accepted: n, capacity: got.capacity}) || got.capacity < n {
		t.Errorf("%d connections waiting: %+v; want every one recorded, accepted and identified", n, got)
	}
}

// pendingHelper starts GPA_HELPER_N non-blocking connects to addr at once
// (none waits for its handshake), prints how many connect() refused, then
// holds every socket until stdin closes, and resets them (no TIME_WAIT
// keeps their ports).
func pendingHelper(addr string) int {
	n, _ := strconv.Atoi(os.Getenv("GPA_HELPER_N"))
	ap := netip.MustParseAddrPort(addr)
	sa := &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	fds := make([]int, 0, n)
	refused := 0
	for range n {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fds = append(fds, fd)
		if err := syscall.Connect(fd, sa); err != nil && err != syscall.EINPROGRESS {
			refused++
		}
	}
	fmt.Println(refused)
	io.Copy(io.Discard, os.Stdin)
	for _, fd := range fds {
		syscall.SetsockoptLinger(fd, syscall.SOL_SOCKET, syscall.SO_LINGER, &syscall.Linger{Onoff: 1})
		syscall.Close(fd)
	}
	return 0
}

// listenBacklog listens on addr inside e's namespace with a backlog (and
// the namespace's somaxconn) of n, so that n connections can wait
// unaccepted. Go's own listeners take the machine's somaxconn.
func (e *env) listenBacklog(addr netip.AddrPort, n int) net.Listener {
	e.t.Helper()
	var l net.Listener
	err := e.ns.Do(func() error {
		for _, p := range []string{"/proc/sys/net/core/somaxconn", "/proc/sys/net/ipv4/tcp_max_syn_backlog"} {
			if err := os.WriteFile(p, []byte(strconv.Itoa(n)), 0); err != nil {
				return err
			}
		}
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		f := os.NewFile(uintptr(fd), "listener")
		defer f.Close()
		if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_MARK, int(hostconn.Mark)); err != nil {
			return err
		}
		if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}); err != nil {
			return err
		}
		if err := syscall.Listen(fd, n); err != nil {
			return err
		}
		l, err = net.FileListener(f)
		return err
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { l.Close() })
	return l
}

// BenchmarkRecordCapacity is B-ebpf (b): N connections redirected at once
// and not yet accepted, as when the agent falls behind a burst or a flood;
// how many records the identity map (an LRU of 16,384 entries) holds for
// them, and how many the listener then misses as it accepts them (each a
// connection the agent refuses with 421). Root in the agent's namespace
// connects (the connection limits, on as in production, exempt it), to a
// listener whose backlog holds all N: the spec's counts, and one past the
// map's capacity. Figures per round: records held, %evicted (of N),
// %refused (of those accepted), accepted (all N unless connections were
// lost) and the map's capacity.
func BenchmarkRecordCapacity(b *testing.B) {
	const maxN = 18000
	e := newEnv(b)
	e.productionLimits()
	r := e.loadRedirecting()
	l := e.listenBacklog(msp.ListenerAddr, maxN).(*net.TCPListener)
	exe := worldExecutable(b)
	for _, n := range []int{100, 200, 1000, 16000, maxN} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			var rounds, records, accepted, missing, refused, capacity int
			for b.Loop() {
				h, err := capacityRound(e, r, l, exe, n)
				if err != nil {
					b.Fatal(err)
				}
				rounds++
				records += h.records
				accepted += h.accepted
				missing += h.missing
				refused += h.refused
				capacity = h.capacity
			}
			if refused > 0 {
				b.Fatalf("%d connects refused", refused)
			}
			b.ReportMetric(float64(records)/float64(rounds), "records")
			b.ReportMetric(100*float64(rounds*n-records)/float64(rounds*n), "%evicted")
			b.ReportMetric(100*float64(missing)/float64(max(accepted, 1)), "%refused")
			b.ReportMetric(float64(accepted)/float64(rounds), "accepted")
			b.ReportMetric(float64(capacity), "capacity")
		})
	}
}

// capacityTally is one round of BenchmarkRecordCapacity.
type capacityTally struct {
	records, accepted, missing, refused, capacity int
}

// capacityRound makes n connections wait on l at once, counts the records
// the map holds, then accepts them all, taking each one's record.
func capacityRound(e *env, r *Redirector, l *net.TCPListener, exe string, n int) (capacityTally, error) {
	var t capacityTally
	cmd, in, sc, err := startPiped(exe, testenv.Options{Netns: e.ns, Cgroup: e.cg,
		Env: []string{"GPA_REDIRECTOR_HELPER=pending", "GPA_HELPER_ADDR=" + msp.IMDSAddr.String(), "GPA_HELPER_N=" + strconv.Itoa(n)}})
	if err != nil {
		return t, err
	}
	defer func() {
		in.Close()
		cmd.Wait()
	}()
	if !sc.Scan() {
		return t, fmt.Errorf("pending helper gone: %v", sc.Err())
	}
	if t.refused, err = strconv.Atoi(sc.Text()); err != nil {
		return t, fmt.Errorf("pending helper said %q", sc.Text())
	}
	if t.records, t.capacity, err = r.IdentityMapUsage(); err != nil {
		return t, err
	}
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	// Connections arrive as their handshakes finish; a quiet second ends
	// the round (a lost one would be retried by the client's SYN timer).
	for t.accepted < n-t.refused {
		l.SetDeadline(time.Now().Add(time.Second))
		c, err := l.Accept()
		if err != nil {
			break
		}
		conns = append(conns, c)
		t.accepted++
		if _, ok := r.take(ends(c)); !ok {
			t.missing++
		}
	}
	return t, nil
}
