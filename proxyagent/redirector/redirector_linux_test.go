package redirector

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/opengpa/gpa/bpf"
	"github.com/opengpa/gpa/internal/testenv"
	"github.com/opengpa/gpa/proxyagent/config"
	"github.com/opengpa/gpa/proxyagent/hostconn"
	"github.com/opengpa/gpa/proxyagent/identity"
	"github.com/opengpa/gpa/proxyagent/msp"
	"github.com/opengpa/gpa/proxyagent/proxy"
)

// The test binary doubles as a client process: with GPA_REDIRECTOR_HELPER
// set it runs helperMain instead of the tests (see startHelper).
func TestMain(m *testing.M) {
	if mode := os.Getenv("GPA_REDIRECTOR_HELPER"); mode != "" {
		os.Exit(helperMain(mode))
	}
	os.Exit(m.Run())
}

// helperMain is the client side run inside the test's netns and cgroup.
//
//	dial:  connect to GPA_HELPER_ADDR with SO_MARK GPA_HELPER_MARK (0: none),
//	       send a request, print the response.
//	bench: connect to GPA_HELPER_ADDR GPA_HELPER_N times (RST on close, so
//	       no TIME_WAIT piles up) and print the elapsed nanoseconds.
//	conns: hold connections to GPA_HELPER_ADDR as told on stdin (connsHelper).
//	pending: start GPA_HELPER_N connects to GPA_HELPER_ADDR at once and hold
//	       them until stdin closes (pendingHelper).
//	squat: bind GPA_HELPER_ADDR with SO_REUSEADDR, listen when told
//	       (squatHelper).
//	errno: connect(2) to GPA_HELPER_ADDR (an AF_INET6 socket for a
//	       v4-mapped address) and print "ok" or the error's name
//	       (ECONNREFUSED, EPERM, ...).
func helperMain(mode string) int {
	addr := os.Getenv("GPA_HELPER_ADDR")
	switch mode {
	case "pidns-agent":
		return pidnsAgent()
	case "conns":
		return connsHelper(addr)
	case "pending":
		return pendingHelper(addr)
	case "squat":
		return squatHelper(addr)
	case "refused-seccomp", "refused-load":
		return refusedHelper(mode)
	case "memfd-exec":
		return memfdExec(addr)
	case "dial":
		mark, _ := strconv.ParseUint(os.Getenv("GPA_HELPER_MARK"), 0, 32)
		c, err := hostconn.Dialer(uint32(mark), 5*time.Second).Dial("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer c.Close()
		io.WriteString(c, "GET / HTTP/1.0\r\n\r\n")
		b, err := io.ReadAll(c)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		os.Stdout.Write(b)
		return 0
	case "bind":
		// bind(2) a TCP socket (UDP for a "udp:" prefix) to GPA_HELPER_ADDR
		// (AF_INET6 for a bracketed address, v4-mapped ones included); print
		// "ok", or the error and exit 3 for EPERM.
		sotype := syscall.SOCK_STREAM
		if a, ok := strings.CutPrefix(addr, "udp:"); ok {
			addr, sotype = a, syscall.SOCK_DGRAM
		}
		ap := netip.MustParseAddrPort(addr)
		var family int
		var sa syscall.Sockaddr
		if strings.HasPrefix(addr, "[") {
			family, sa = syscall.AF_INET6, &syscall.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
		} else {
			family, sa = syscall.AF_INET, &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
		}
		fd, err := syscall.Socket(family, sotype, 0)
		if err == nil {
			defer syscall.Close(fd)
			err = syscall.Bind(fd, sa)
		}
		if err != nil {
			fmt.Println(err)
			if errors.Is(err, syscall.EPERM) {
				return 3
			}
			return 1
		}
		fmt.Println("ok")
		return 0
	case "errno":
		ap := netip.MustParseAddrPort(addr)
		family, sa := syscall.AF_INET, syscall.Sockaddr(&syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()})
		if ap.Addr().Is4In6() {
			family, sa = syscall.AF_INET6, &syscall.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
		}
		fd, err := syscall.Socket(family, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err == nil {
			defer syscall.Close(fd)
			err = syscall.Connect(fd, sa)
		}
		switch {
		case err == nil:
			fmt.Println("ok")
		case errors.Is(err, syscall.ECONNREFUSED):
			fmt.Println("ECONNREFUSED")
		case errors.Is(err, syscall.EPERM):
			fmt.Println("EPERM")
		default:
			fmt.Println(err)
		}
		return 0
	case "peer":
		// Print the peer a Go dialer reports after connecting to
		// GPA_HELPER_ADDR (what the extension's monitor checks).
		c, err := net.Dial("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Print(c.RemoteAddr().String())
		c.Close()
		return 0
	case "bench":
		n, _ := strconv.Atoi(os.Getenv("GPA_HELPER_N"))
		start := time.Now()
		for range n {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}
		fmt.Println(time.Since(start).Nanoseconds())
		return 0
	}
	fmt.Fprintln(os.Stderr, "unknown helper mode", mode)
	return 2
}

var (
	imdsAddr = netip.MustParseAddr("169.254.169.254")
	wsAddr   = netip.MustParseAddr("168.63.129.16")
	dests    = msp.DefaultEndpoints()
)

// env is one test's world: a netns with the service addresses on its
// loopback, a "real" server on each destination inside it (answering
// "direct <addr>"), a cgroup with the programs attached, and a private
// bpffs for the pins. Everything is removed when the test ends.
type env struct {
	t      testing.TB
	ns     *testenv.Netns
	cg     *testenv.Cgroup
	cfg    Config
	direct atomic.Int64 // connections the real servers accepted
}

func newEnv(t testing.TB) *env {
	t.Helper()
	testenv.RequirePrivileged(t)
	e := &env{t: t}
	e.ns = testenv.NewNetns(t, imdsAddr, wsAddr)
	e.cg = testenv.NewCgroup(t)
	e.cfg = Config{
		CgroupPath: e.cg.Path,
		PinDir:     filepath.Join(testenv.NewBPFFS(t), "azure-proxy-agent"),
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	// The stand-in listener lives in e.ns: that is the agent's namespace.
	if err := e.ns.Do(func() (err error) { e.cfg.Netns, err = NetnsCookie(); return err }); err != nil {
		t.Fatal(err)
	}
	for _, d := range []netip.AddrPort{dests.WireServer, dests.IMDS, dests.HostGAPlugin} {
		l, err := e.ns.Listen("tcp", d.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go serve(l, func(c net.Conn) string {
			e.direct.Add(1)
			return "direct " + c.LocalAddr().String()
		})
	}
	return e
}

// listenAgent listens on addr in e's namespace as the agent does: with
// the agent's socket mark, without which the hooks refuse to send
// connects to a listener.
func (e *env) listenAgent(addr netip.AddrPort) net.Listener {
	e.t.Helper()
	var l net.Listener
	err := e.ns.Do(func() (err error) {
		l, err = markedListenConfig().Listen(context.Background(), "tcp", addr.String())
		return err
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { l.Close() })
	return l
}

// markedListenConfig listens with the agent's socket mark (hostconn.Mark,
// the redirector's default).
func markedListenConfig() *net.ListenConfig {
	return &net.ListenConfig{Control: hostconn.MarkControl(hostconn.Mark)}
}

// load loads the redirector into e (skipping, or failing under CI, if the
// kernel cannot run the programs) and removes it when the test ends.
func (e *env) load() *Redirector {
	e.t.Helper()
	r, err := Load(e.cfg)
	if errors.Is(err, ebpf.ErrNotSupported) {
		testenv.SkipOrFail(e.t, "kernel cannot run the redirector: %v", err)
	}
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		if err := r.Remove(); err != nil {
			e.t.Errorf("Remove: %v", err)
		}
	})
	return r
}

// loadRedirecting is load with all three services redirected.
func (e *env) loadRedirecting() *Redirector {
	e.t.Helper()
	r := e.load()
	if err := r.SetPolicy(true, true, true); err != nil {
		e.t.Fatal(err)
	}
	return r
}

// productionLimits sets the connection limits the agent loads with its
// default config: the per-caller limit and the share of the callers in its
// namespace together (proxy.ConnShares, namespaces told apart).
func (e *env) productionLimits() {
	d := config.Default()
	own, _ := proxy.ConnShares(d.MaxConnections, d.MaxConnectionsPerCaller, true)
	e.cfg.MaxConnsPerCaller, e.cfg.MaxLimitedConns = d.MaxConnectionsPerCaller, own
}

// useContainerListener puts the container listener's address on the
// namespace's loopback and in the config (before load) and returns it.
func (e *env) useContainerListener() netip.AddrPort {
	e.t.Helper()
	ca := msp.ContainerListenerAddr
	if err := e.ns.Do(func() error { return AddLoopbackAddr(ca.Addr()) }); err != nil {
		e.t.Fatal(err)
	}
	e.cfg.Endpoints.ContainerListener = ca
	return ca
}

// memfdExec copies the program at path into a memfd and executes it from
// there with a script that connects to IMDS and waits for a line.
func memfdExec(path string) int {
	data, err := os.ReadFile(path)
	if err == nil {
		var fd int
		if fd, err = unix.MemfdCreate("bash", 0); err == nil {
			if _, err = unix.Write(fd, data); err == nil {
				err = syscall.Exec("/proc/self/fd/"+strconv.Itoa(fd),
					[]string{"bash", "-c", `exec 3<>/dev/tcp/169.254.169.254/80 && read -r _`}, os.Environ())
			}
		}
	}
	fmt.Fprintln(os.Stderr, "memfd exec:", err)
	return 1
}

// exeFile returns the inode number and mount id of /proc/<pid>/exe (0, 0
// when it cannot be read).
func exeFile(pid uint32) (ino, mnt uint64) {
	var st unix.Statx_t
	if unix.Statx(unix.AT_FDCWD, "/proc/"+strconv.FormatUint(uint64(pid), 10)+"/exe", 0, unix.STATX_INO|unix.STATX_MNT_ID, &st) != nil {
		return 0, 0
	}
	return st.Ino, st.Mnt_id
}

// ends returns an accepted connection's peer and local address, the pair
// its kernel record is looked up by.
func ends(c net.Conn) (peer, local netip.AddrPort) {
	return c.RemoteAddr().(*net.TCPAddr).AddrPort(), c.LocalAddr().(*net.TCPAddr).AddrPort()
}

// serve answers each connection on l with an HTTP/1.0 response whose body
// is body(conn), after reading the request head.
func serve(l net.Listener, body func(net.Conn) string) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			b := body(c)
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			br := bufio.NewReader(c)
			for {
				line, err := br.ReadString('\n')
				if err != nil || line == "\r\n" {
					break
				}
			}
			fmt.Fprintf(c, "HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(b), b)
		}()
	}
}

// closeEach closes every connection l accepts, until l is closed.
func closeEach(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		c.Close()
	}
}

// accepted is what the test listener learned about one connection.
type accepted struct {
	peer      netip.AddrPort
	rec       bpf.RedirectConnRecord
	ok        bool
	again     bool   // a second lookup also found a record (must not)
	procStart uint64 // /proc/<rec.Pid>/stat field 22 at accept time
	procErr   error
	exeIno    uint64 // inode of /proc/<rec.Pid>/exe at accept time (0: unknown)
	exeMnt    uint64 // its mount id
}

// listener is the stand-in for the proxy: it listens on the default
// listener address inside the netns and reports each accepted connection.
type listener struct {
	l  net.Listener
	ch chan accepted
}

func (e *env) listen(r *Redirector) *listener {
	e.t.Helper()
	l := e.listenAgent(msp.ListenerAddr)
	tl := &listener{l: l, ch: make(chan accepted, 16)}
	e.t.Cleanup(tl.close)
	go serve(l, func(c net.Conn) string {
		a := accepted{peer: c.RemoteAddr().(*net.TCPAddr).AddrPort()}
		local := c.LocalAddr().(*net.TCPAddr).AddrPort()
		a.rec, a.ok = r.take(a.peer, local)
		_, a.again = r.Lookup(a.peer, local)
		if a.ok {
			a.procStart, a.procErr = procStartTime(a.rec.Pid)
			a.exeIno, a.exeMnt = exeFile(a.rec.Pid)
		}
		tl.ch <- a
		return "redirected"
	})
	return tl
}

func (tl *listener) close() { tl.l.Close() }

func (tl *listener) next(t testing.TB) accepted {
	t.Helper()
	select {
	case a := <-tl.ch:
		return a
	case <-time.After(5 * time.Second):
		t.Fatal("listener accepted nothing")
		return accepted{}
	}
}

// expectNone fails if the listener accepted a connection.
func (tl *listener) expectNone(t testing.TB) {
	t.Helper()
	select {
	case a := <-tl.ch:
		t.Errorf("listener accepted a connection from %s it should not have", a.peer)
	default:
	}
}

// procStartTime returns field 22 of /proc/<pid>/stat.
func procStartTime(pid uint32) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatStart(string(b))
}

func parseStatStart(stat string) (uint64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 20 {
		return 0, errors.New("short stat")
	}
	return strconv.ParseUint(f[19], 10, 64) // f[0] is field 3
}

// client is a process to run inside the netns.
type client struct {
	args   []string // argv; "" as args[0] means the test binary in dial mode
	env    []string
	cred   *syscall.Credential
	noCg   bool // run outside the attached cgroup
	exitOK bool // false: expect a failure exit
}

// run runs c and returns its pid and standard output.
func (e *env) run(c client) (int, string, error) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	args := c.args
	if args[0] == "" {
		exe, err := os.Executable()
		if err != nil {
			e.t.Fatal(err)
		}
		args = []string{exe}
	}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	o := testenv.Options{Netns: e.ns, Cgroup: e.cg, Credential: c.cred, Env: c.env}
	if c.noCg {
		o.Cgroup = nil
	}
	if err := testenv.Start(cmd, o); err != nil {
		e.t.Fatal(err)
	}
	err := cmd.Wait()
	if err != nil {
		err = fmt.Errorf("%v: %w: %s", args, err, stderr.String())
	}
	return cmd.Process.Pid, out.String(), err
}

func curl(url string, extra ...string) []string {
	return append([]string{"curl", "-sS", "--max-time", "5"}, append(extra, url)...)
}

func dialHelper(addr string, mark uint32) client {
	return client{args: []string{""}, env: []string{
		"GPA_REDIRECTOR_HELPER=dial", "GPA_HELPER_ADDR=" + addr, fmt.Sprintf("GPA_HELPER_MARK=%d", mark)}}
}

func testBinaryComm() string {
	exe, _ := os.Executable()
	c := filepath.Base(exe)
	if len(c) > 15 {
		c = c[:15]
	}
	return c
}

func TestRedirect(t *testing.T) {
	e := newEnv(t)
	r := e.loadRedirecting()
	if s := r.Status(); s.State != Running || !strings.HasPrefix(s.Message, "Started Redirector with eBPF maps - ") {
		t.Errorf("status = %+v", s)
	}
	tl := e.listen(r)
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}

	tests := []struct {
		name     string
		c        client
		wantDst  netip.AddrPort
		wantUID  uint32
		wantComm string
		family   uint8
	}{
		{"wireserver", client{args: curl("http://168.63.129.16/")}, dests.WireServer, 0, "curl", syscall.AF_INET},
		{"imds as nobody", client{args: curl("http://169.254.169.254/"), cred: nobody}, dests.IMDS, 65534, "curl", syscall.AF_INET},
		{"hostgaplugin", client{args: curl("http://168.63.129.16:32526/")}, dests.HostGAPlugin, 0, "curl", syscall.AF_INET},
		{"v4-mapped over AF_INET6", client{args: curl("http://[::ffff:169.254.169.254]/")}, dests.IMDS, 0, "curl", syscall.AF_INET6},
		{"hex address", client{args: curl("http://0xa9fea9fe/")}, dests.IMDS, 0, "curl", syscall.AF_INET},
		{"decimal address", client{args: curl("http://2852039166/")}, dests.IMDS, 0, "curl", syscall.AF_INET},
		{"octal address", client{args: curl("http://0251.0376.0251.0376/")}, dests.IMDS, 0, "curl", syscall.AF_INET},
		{"v4-mapped WireServer", client{args: curl("http://[::ffff:168.63.129.16]/")}, dests.WireServer, 0, "curl", syscall.AF_INET6},
		{"bash /dev/tcp", client{args: []string{"bash", "-c", `exec 3<>/dev/tcp/168.63.129.16/32526; printf 'GET / HTTP/1.0\r\n\r\n' >&3; cat <&3`}}, dests.HostGAPlugin, 0, "bash", syscall.AF_INET},
		{"go dialer, no mark", dialHelper("169.254.169.254:80", 0), dests.IMDS, 0, testBinaryComm(), syscall.AF_INET},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			direct := e.direct.Load()
			pid, out, err := e.run(tc.c)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasSuffix(out, "redirected") {
				t.Errorf("client got %q, want the listener's answer", out)
			}
			if e.direct.Load() != direct {
				t.Error("a real server was reached")
			}
			a := tl.next(t)
			if !a.ok {
				t.Fatalf("no record for %s", a.peer)
			}
			if a.again {
				t.Error("record not consumed by the lookup")
			}
			got := toIdentity(a.rec, e.cfg.Netns)
			want := identity.Record{
				PID: uint32(pid), UID: tc.wantUID, GID: tc.wantUID,
				CgroupID: e.cg.ID, Netns: e.cfg.Netns, StartTime: a.procStart, ExeIno: a.exeIno, ExeMnt: a.exeMnt, ExeMntKnown: true, Comm: tc.wantComm, OrigDst: tc.wantDst,
			}
			if a.exeIno == 0 || a.exeMnt == 0 {
				t.Errorf("could not stat /proc/%d/exe at accept", pid)
			}
			if a.procErr != nil {
				t.Errorf("read /proc/%d/stat: %v", pid, a.procErr)
			}
			if got.ExecID == 0 {
				t.Error("exec count 0") // its value: TestRecordFollowsExec
			}
			want.ExecID = got.ExecID
			if got != want {
				t.Errorf("record\n got %+v\nwant %+v", got, want)
			}
			if a.rec.Family != tc.family {
				t.Errorf("socket family %d, want %d", a.rec.Family, tc.family)
			}
			if got.StartTime == 0 {
				t.Error("start time 0")
			}
		})
	}

	t.Run("MPTCP socket", func(t *testing.T) {
		if _, err := exec.LookPath("python3"); err != nil {
			t.Skip("needs python3 to open an MPTCP socket")
		}
		pid, out, err := e.run(client{args: []string{"python3", "-c", `
import socket, sys
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)  # IPPROTO_MPTCP
except OSError:
    print("no-mptcp", end=""); sys.exit(0)
s.connect(("169.254.169.254", 80))
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
print(s.recv(1000).decode().split("\r\n\r\n")[-1], end="")
`}})
		if err != nil {
			t.Fatal(err)
		}
		if out == "no-mptcp" {
			t.Skip("kernel has no MPTCP")
		}
		if out != "redirected" {
			t.Fatalf("client got %q, want redirected", out)
		}
		if a := tl.next(t); !a.ok || a.rec.Pid != uint32(pid) {
			t.Errorf("record %+v ok=%v, want pid %d", a.rec, a.ok, pid)
		}
	})

	notRedirected := []struct {
		name string
		c    client
		want string
	}{
		{"agent's marked socket", dialHelper("169.254.169.254:80", hostconn.Mark), "direct 169.254.169.254:80"},
		{"other mark", dialHelper("169.254.169.254:80", hostconn.Mark+1), "redirected"},
		{"outside the cgroup", client{args: curl("http://169.254.169.254/"), noCg: true}, "direct 169.254.169.254:80"},
		{"other port", client{args: []string{"bash", "-c", `exec 3<>/dev/tcp/169.254.169.254/81`}}, ""},
	}
	for _, tc := range notRedirected {
		t.Run(tc.name, func(t *testing.T) {
			_, out, err := e.run(tc.c)
			if tc.want == "" {
				// Nothing listens on :81 in the netns: refused, not redirected.
				if err == nil {
					t.Errorf("connect to an unlisted port succeeded: %q", out)
				}
				tl.expectNone(t)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasSuffix(out, tc.want) {
				t.Errorf("client got %q, want %q", out, tc.want)
			}
			if tc.want == "redirected" {
				tl.next(t)
			} else {
				tl.expectNone(t)
			}
		})
	}

	t.Run("policy off", func(t *testing.T) {
		if err := r.SetPolicy(true, false, true); err != nil {
			t.Fatal(err)
		}
		ws, imds, hgap, err := r.Policy()
		if err != nil || !ws || imds || !hgap {
			t.Fatalf("Policy() = %v %v %v %v, want true false true", ws, imds, hgap, err)
		}
		_, out, err := e.run(client{args: curl("http://169.254.169.254/")})
		if err != nil || out != "direct 169.254.169.254:80" {
			t.Errorf("IMDS with policy off: %q, %v; want the real server", out, err)
		}
		_, out, err = e.run(client{args: curl("http://168.63.129.16/")})
		if err != nil || out != "redirected" {
			t.Errorf("WireServer with policy on: %q, %v; want redirected", out, err)
		}
		tl.next(t)
		tl.expectNone(t)
		if err := r.SetPolicy(true, true, true); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("short-lived process", func(t *testing.T) {
		// The process connects, reports its own start time and exits before
		// the listener accepts.
		tl.close()
		raw := e.listenAgent(msp.ListenerAddr)
		pid, out, err := e.run(client{args: []string{"bash", "-c",
			`exec 3<>/dev/tcp/169.254.169.254/80 && cat /proc/$$/stat`}})
		if err != nil {
			t.Fatal(err)
		}
		start, err := parseStatStart(out)
		if err != nil {
			t.Fatalf("%v: %q", err, out)
		}
		c, err := raw.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			t.Errorf("process %d still exists", pid)
		}
		rec, ok := r.Lookup(ends(c))
		if !ok {
			t.Fatal("no record")
		}
		if rec.PID != uint32(pid) || rec.StartTime != start || rec.Comm != "bash" || rec.OrigDst != dests.IMDS {
			t.Errorf("record %+v, want pid %d start %d comm bash dst %s", rec, pid, start, dests.IMDS)
		}
	})
}

func TestLookup(t *testing.T) {
	e := newEnv(t)
	r := e.load()
	lst := msp.ListenerAddr
	for _, client := range []netip.AddrPort{
		netip.MustParseAddrPort("127.0.0.1:40000"),
		netip.MustParseAddrPort("[::ffff:127.0.0.1]:40000"),
		netip.MustParseAddrPort("[::1]:40000"),
		{},
	} {
		if _, ok := r.Lookup(client, lst); ok {
			t.Errorf("Lookup(%v) found a record for a connection never made", client)
		}
	}
	// A v4-mapped peer finds the record of its IPv4 form.
	key := bpf.RedirectConnKey{Addr: [4]byte{127, 0, 0, 1}, Port: 40001, DstAddr: lst.Addr().As4(), DstPort: lst.Port()}
	want := bpf.RedirectConnRecord{Pid: 7, Uid: 8, OrigAddr: imdsAddr.As4(), OrigPort: 80, Comm: [16]byte{'x'}}
	if err := r.objs.ConnRecords.Put(key, want); err != nil {
		t.Fatal(err)
	}
	// The same client address and port connected to another listener
	// (the container listener) is another connection: no record.
	if _, ok := r.Lookup(netip.MustParseAddrPort("127.0.0.1:40001"), msp.ContainerListenerAddr); ok {
		t.Error("a record found for the same client at another listener")
	}
	rec, ok := r.Lookup(netip.MustParseAddrPort("[::ffff:127.0.0.1]:40001"), netip.AddrPortFrom(netip.AddrFrom16(lst.Addr().As16()), lst.Port()))
	if !ok || rec.PID != 7 || rec.UID != 8 || rec.Comm != "x" || rec.OrigDst != dests.IMDS {
		t.Errorf("Lookup = %+v, %v", rec, ok)
	}
	if _, ok := r.Lookup(netip.MustParseAddrPort("127.0.0.1:40001"), lst); ok {
		t.Error("record found twice")
	}
	// Lookup's raw call (not the library's fallback) takes the whole
	// record and deletes it.
	key.Port = 40002
	want = bpf.RedirectConnRecord{CgroupId: 1, Netns: 2, StartTime: 3, ExecId: 4, ExeIno: 9, ExeMnt: 10, Pid: 5, Tid: 6, Uid: 7, Gid: 8,
		OrigAddr: [4]byte{168, 63, 129, 16}, OrigPort: 32526, Family: 2, Collision: 1, Comm: [16]byte{'a', 'b', 15: 'z'}}
	if err := r.objs.ConnRecords.Put(key, want); err != nil {
		t.Fatal(err)
	}
	var got bpf.RedirectConnRecord
	if res := takeRaw(r.objs.ConnRecords, &key, &got); res != rawTaken || got != want {
		t.Errorf("takeRaw = %d, %+v; want %d, %+v", res, got, rawTaken, want)
	}
	if res := takeRaw(r.objs.ConnRecords, &key, &got); res != rawMissing {
		t.Errorf("takeRaw of a taken record = %d, want %d (missing)", res, rawMissing)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Lookup(netip.MustParseAddrPort("127.0.0.1:40001"), lst); ok {
		t.Error("Lookup after Close found a record")
	}
	if err := r.SetPolicy(true, true, true); err == nil {
		t.Error("SetPolicy after Close succeeded")
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"ipv6 listener", Config{Endpoints: msp.Endpoints{Listener: netip.MustParseAddrPort("[::1]:3080")}}, "listener [::1]:3080 is not an IPv4"},
		{"ipv6 destination", Config{Endpoints: msp.Endpoints{IMDS: netip.MustParseAddrPort("[fd00:ec2::254]:80")}}, "not an IPv4"},
		{"same destinations", Config{Endpoints: msp.Endpoints{IMDS: dests.WireServer}}, "not distinct"},
		{"listener is a destination", Config{Endpoints: msp.Endpoints{Listener: dests.IMDS}}, "is the listener"},
		{"relative pin dir", Config{PinDir: "pins"}, "not absolute"},
		{"not a cgroup", Config{CgroupPath: "/proc"}, "not on a cgroup v2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Load error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// linkProgram returns the id of the program behind the pinned link name.
func linkProgram(t *testing.T, pinDir, name string) ebpf.ProgramID {
	t.Helper()
	l, err := link.LoadPinnedLink(filepath.Join(pinDir, name), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	return info.Program
}

// attached returns how many programs are attached to the cgroup for each
// hook the redirector uses.
func attached(t *testing.T, cgroup string) int {
	t.Helper()
	f, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	for _, h := range hooks {
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: h.attach})
		if err != nil {
			t.Fatal(err)
		}
		n += len(res.Programs)
	}
	return n
}

// recordKeys returns the keys in the pinned connection-record map.
func recordKeys(t *testing.T, pinDir string) map[bpf.RedirectConnKey]bool {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, bpf.RedirectMapConnRecords), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	keys := make(map[bpf.RedirectConnKey]bool)
	var k bpf.RedirectConnKey
	var v bpf.RedirectConnRecord
	it := m.Iterate()
	for it.Next(&k, &v) {
		keys[k] = true
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return keys
}

func TestPinnedLifecycle(t *testing.T) {
	e := newEnv(t)
	r := e.loadRedirecting()
	tl := e.listen(r)
	imdsURL := curl("http://169.254.169.254/")
	if _, out, err := e.run(client{args: imdsURL}); err != nil || out != "redirected" {
		t.Fatalf("before restart: %q %v", out, err)
	}
	tl.next(t)
	before := linkProgram(t, e.cfg.PinDir, "link_connect4")

	// Agent stops: the pinned programs keep redirecting.
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if s := r.Status(); s.State != Stopped {
		t.Errorf("status after Close = %+v", s)
	}
	if _, out, err := e.run(client{args: imdsURL}); err != nil || out != "redirected" {
		t.Errorf("after Close, listener up: %q %v; want redirected", out, err)
	}
	tl.next(t)

	// Listener gone too: redirected connects are refused at connect(),
	// never direct, and leave no record.
	tl.close()
	direct := e.direct.Load()
	// (The connection accepted above while r was closed left its record.)
	known := recordKeys(t, e.cfg.PinDir)
	newKeys := func() []bpf.RedirectConnKey {
		var keys []bpf.RedirectConnKey
		for k := range recordKeys(t, e.cfg.PinDir) {
			if !known[k] {
				keys = append(keys, k)
			}
		}
		return keys
	}
	_, out, err := e.run(client{args: imdsURL})
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Errorf("agent down: curl %q, %v; want connection refused (exit 7)", out, err)
	}
	if e.direct.Load() != direct {
		t.Error("agent down: connection reached the real IMDS")
	}
	if keys := newKeys(); len(keys) != 0 {
		t.Errorf("records left by the refused connect: %v, want none", keys)
	}
	// A connection the listener never accepted before it closed leaves its
	// record behind (nothing counts root's sockets); find its port.
	stuck := e.listenAgent(msp.ListenerAddr)
	_, _, _ = e.run(client{args: curl("http://169.254.169.254/", "--max-time", "1")})
	stuck.Close()
	stale := newKeys()
	if len(stale) != 1 {
		t.Fatalf("records left by the unaccepted connection: %v, want 1", stale)
	}

	// Agent restarts: takes over pinned maps (policy survives) and links.
	r2 := e.load()
	if ws, imds, hgap, err := r2.Policy(); err != nil || !ws || !imds || !hgap {
		t.Errorf("policy after restart = %v %v %v %v, want all on", ws, imds, hgap, err)
	}
	if after := linkProgram(t, e.cfg.PinDir, "link_connect4"); after == before {
		t.Errorf("pinned link still runs program %d after re-Load", before)
	}
	if n := attached(t, e.cg.Path); n != len(hooks) {
		t.Errorf("%d programs attached after re-Load, want %d", n, len(hooks))
	}
	tl2 := e.listen(r2)
	pid, out, err := e.run(client{args: imdsURL})
	if err != nil || out != "redirected" {
		t.Fatalf("after restart: %q %v", out, err)
	}
	if a := tl2.next(t); !a.ok || a.rec.Pid != uint32(pid) {
		t.Errorf("after restart: record %+v ok=%v, want pid %d", a.rec, a.ok, pid)
	}

	// A direct connection reusing the stale record's port gets its own
	// record (no original destination), never the stale one.
	port := strconv.Itoa(int(stale[0].Port))
	dpid, out, err := e.run(client{args: curl("http://127.0.0.1:3080/", "--local-port", port)})
	if err != nil || out != "redirected" {
		t.Fatalf("direct connect from port %s: %q %v", port, out, err)
	}
	if a := tl2.next(t); !a.ok || a.peer.Port() != stale[0].Port || a.rec.Pid != uint32(dpid) || a.rec.OrigPort != 0 {
		t.Errorf("direct connect from %s (pid %d): record %+v ok=%v, want its own with no original destination", a.peer, dpid, a.rec, a.ok)
	}

	// Uninstall: nothing attached, nothing pinned, traffic goes direct.
	if err := r2.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(e.cfg.PinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin dir after Remove: %v", err)
	}
	if n := attached(t, e.cg.Path); n != 0 {
		t.Errorf("%d programs still attached after Remove", n)
	}
	if _, out, err := e.run(client{args: imdsURL}); err != nil || out != "direct 169.254.169.254:80" {
		t.Errorf("after Remove: %q %v; want direct", out, err)
	}
	if err := RemovePinned(e.cfg.PinDir); err != nil {
		t.Errorf("RemovePinned on a removed dir: %v", err)
	}
}

func TestMoveCgroup(t *testing.T) {
	e := newEnv(t)
	r := e.loadRedirecting()
	r.Close()

	// The agent restarts configured for another cgroup: the links move.
	old := e.cg
	e.cg = testenv.NewCgroup(t)
	e.cfg.CgroupPath = e.cg.Path
	r2 := e.load()
	tl := e.listen(r2)
	if n := attached(t, old.Path); n != 0 {
		t.Errorf("%d programs left on the old cgroup", n)
	}
	if _, out, err := e.run(client{args: curl("http://169.254.169.254/")}); err != nil || out != "redirected" {
		t.Errorf("in the new cgroup: %q %v; want redirected", out, err)
	}
	tl.next(t)
	e.cg = old
	if _, out, err := e.run(client{args: curl("http://169.254.169.254/")}); err != nil || out != "direct 169.254.169.254:80" {
		t.Errorf("in the old cgroup: %q %v; want direct", out, err)
	}
}

// BenchmarkConnect measures connect()+close on loopback from inside the
// cgroup, with the programs detached and attached (to a non-policy address,
// and redirected to a listener that consumes each record). Figures are
// ns/connect, measured inside the client process. The client resets each
// connection at once, so for a counted caller (redirected-counted) the
// kernel drops the records of the connections reset before the listener
// took them: missing-records counts those.
func BenchmarkConnect(b *testing.B) {
	e := newEnv(b)
	target, err := e.ns.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { target.Close() })
	go closeEach(target)

	exe := worldExecutable(b)
	run := func(b *testing.B, addr string, cred ...*syscall.Credential) {
		c := client{args: []string{exe}, env: []string{
			"GPA_REDIRECTOR_HELPER=bench", "GPA_HELPER_ADDR=" + addr, "GPA_HELPER_N=" + strconv.Itoa(b.N)}}
		if len(cred) > 0 {
			c.cred = cred[0]
		}
		_, out, err := e.run(c)
		if err != nil {
			b.Fatal(err)
		}
		ns, err := strconv.ParseFloat(strings.TrimSpace(out), 64)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(ns/float64(b.N), "ns/connect")
	}
	b.Run("detached", func(b *testing.B) { run(b, target.Addr().String()) })

	// The limits are on, as in production; root in the agent's namespace
	// is exempt, nobody is counted.
	e.productionLimits()
	r := e.load()
	if err := r.SetPolicy(true, true, true); err != nil {
		b.Fatal(err)
	}
	b.Run("attached", func(b *testing.B) { run(b, target.Addr().String()) })

	l := e.listenAgent(msp.ListenerAddr)
	var missing atomic.Int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			if ta, ok := c.RemoteAddr().(*net.TCPAddr); !ok {
				missing.Add(1)
			} else if _, ok := r.Lookup(ta.AddrPort(), c.LocalAddr().(*net.TCPAddr).AddrPort()); !ok {
				missing.Add(1)
			}
			c.Close()
		}
	}()
	b.Run("redirected", func(b *testing.B) {
		missing.Store(0)
		run(b, dests.IMDS.String())
		b.ReportMetric(float64(missing.Load()), "missing-records")
	})
	b.Run("redirected-counted", func(b *testing.B) {
		missing.Store(0)
		run(b, dests.IMDS.String(), &syscall.Credential{Uid: 65534, Gid: 65534})
		b.ReportMetric(float64(missing.Load()), "missing-records")
	})
}

// BenchmarkLoad measures Load (load, attach, pin) on a fresh pin dir and
// the takeover of pinned objects by a restarted agent.
func BenchmarkLoad(b *testing.B) {
	e := newEnv(b)
	b.Run("fresh", func(b *testing.B) {
		for b.Loop() {
			r, err := Load(e.cfg)
			if err != nil {
				b.Fatal(err)
			}
			if err := r.Remove(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("takeover", func(b *testing.B) {
		r := e.load()
		r.Close()
		for b.Loop() {
			r, err := Load(e.cfg)
			if err != nil {
				b.Fatal(err)
			}
			r.Close()
		}
	})
}

func TestIncompatiblePinnedMapsAreReplaced(t *testing.T) {
	e := newEnv(t)
	// An older version pinned a policy map of another layout.
	if err := os.MkdirAll(e.cfg.PinDir, 0o700); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 12, ValueSize: 12, MaxEntries: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.Pin(filepath.Join(e.cfg.PinDir, bpf.RedirectMapPolicyMap)); err != nil {
		t.Fatal(err)
	}
	r := e.load()
	// Until the agent sets the policy, everything is redirected.
	if ws, imds, hgap, err := r.Policy(); err != nil || !ws || !imds || !hgap {
		t.Errorf("policy after migration = %v %v %v %v, want all on", ws, imds, hgap, err)
	}
	tl := e.listen(r)
	if _, out, err := e.run(client{args: curl("http://168.63.129.16:32526/")}); err != nil || out != "redirected" {
		t.Errorf("after migration: %q %v; want redirected", out, err)
	}
	if a := tl.next(t); !a.ok {
		t.Error("no record after migration")
	}
}

// The listener guard: while the programs are attached (and pinned, also
// with the agent down) a non-root process in the agent's namespace cannot
// listen where redirected connections go — the listener's and the
// container listener's addresses, the wildcard, and their IPv6 forms —
// while root, other ports and other namespaces (a container's own
// loopback) are unaffected.
func TestBindGuard(t *testing.T) {
	e := newEnv(t)
	e.cfg.Endpoints = msp.Endpoints{Listener: netip.MustParseAddrPort("127.0.0.1:3080"),
		ContainerListener: netip.MustParseAddrPort("169.254.100.254:3080")}
	r := e.load()
	other := testenv.NewNetns(t)
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	exe := worldExecutable(t)
	bind := func(addr string, cred *syscall.Credential, ns *testenv.Netns) (code int, out string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, exe)
		var stdout bytes.Buffer
		cmd.Stdout = &stdout
		o := testenv.Options{Netns: ns, Cgroup: e.cg, Credential: cred,
			Env: []string{"GPA_REDIRECTOR_HELPER=bind", "GPA_HELPER_ADDR=" + addr}}
		if err := testenv.Start(cmd, o); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()
		return cmd.ProcessState.ExitCode(), strings.TrimSpace(stdout.String())
	}
	for _, tc := range []struct {
		name, addr string
		cred       *syscall.Credential
		ns         *testenv.Netns
		want       int // 0 bound, 3 EPERM
	}{
		{"nobody on the listener", "127.0.0.1:3080", nobody, e.ns, 3},
		{"nobody on the wildcard", "0.0.0.0:3080", nobody, e.ns, 3},
		{"nobody on the container listener", "169.254.100.254:3080", nobody, e.ns, 3},
		{"nobody on the IPv6 wildcard", "[::]:3080", nobody, e.ns, 3},
		{"nobody on the v4-mapped listener", "[::ffff:127.0.0.1]:3080", nobody, e.ns, 3},
		{"nobody on another port", "127.0.0.1:3081", nobody, e.ns, 0},
		{"nobody on another address", "168.63.129.16:3080", nobody, e.ns, 0},
		{"nobody in another namespace", "127.0.0.1:3080", nobody, other, 0},
		{"root on the listener", "127.0.0.1:3080", nil, e.ns, 0},
		{"nobody, UDP on the listener", "udp:127.0.0.1:3080", nobody, e.ns, 0},
	} {
		if code, out := bind(tc.addr, tc.cred, tc.ns); code != tc.want {
			t.Errorf("%s (%s): exit %d %q, want %d", tc.name, tc.addr, code, out, tc.want)
		}
	}
	// The guard stays with the pinned programs after the agent's handles
	// are closed (the agent down).
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if code, out := bind("127.0.0.1:3080", nobody, e.ns); code != 3 {
		t.Errorf("with the agent down: exit %d %q, want EPERM", code, out)
	}
}

// worldExecutable copies the test binary where any user may run it (the
// build directory is the builder's alone) and returns its path.
func worldExecutable(t testing.TB) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "gpa-redirector-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "redirector.test")
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// After a redirected connect the socket's peer is the listener, not the
// address asked for: the extension's monitor relies on it to send the
// aggregate-status request only over a connection that reached the agent.
func TestRedirectedPeer(t *testing.T) {
	e := newEnv(t)
	r := e.loadRedirecting()
	e.listen(r)
	_, out, err := e.run(client{args: []string{""}, env: []string{"GPA_REDIRECTOR_HELPER=peer", "GPA_HELPER_ADDR=168.63.129.16:80"}})
	if err != nil {
		t.Fatal(err)
	}
	if out != msp.ListenerAddr.String() {
		t.Errorf("peer after a redirected connect: %q, want the listener %s", out, msp.ListenerAddr)
	}
	_, out, err = e.run(client{args: []string{""}, env: []string{"GPA_REDIRECTOR_HELPER=peer", "GPA_HELPER_ADDR=168.63.129.16:80"}, noCg: true})
	if err != nil || out != "168.63.129.16:80" {
		t.Errorf("peer of a connect outside the cgroup: %q %v, want the address itself", out, err)
	}
}
