package redirector

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opengpa/gpa/bpf"
	"github.com/opengpa/gpa/internal/testenv"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// connsHelper holds connections to addr as told, one command per line on
// stdin, answering each with one line on stdout:
//
//	dial   connect (to the address given, else addr); "ok", "EPERM" or
//	       "err <error>"
//	close  i: end connection i (shut down writing, read until the server
//	       closes, close); "closed"
//	reset  i: close connection i with a reset (SO_LINGER 0); "reset"
//	half   i: ask the server to keep connection i open after its end, and
//	       shut down writing (half-close); "half"
//	wait   i: read connection i until the server closes it; "eof <nil>"
//	tfo    n: connect n sockets with TCP Fast Open (each SYN waits for the
//	       first write), write "ping" on each, read each answer, then end
//	       them as close does; per socket "served" (the server
//	       answered), "dropped" (it closed without answering) or "EPERM"
//	bye    i: ask the server to close connection i and read to its end,
//	       keeping the socket open (CLOSE_WAIT); "eof"
//	from   TO SRC: as dial, to TO from the bound address SRC (with
//	       SO_REUSEADDR, so another socket may use SRC for another
//	       destination)
func connsHelper(addr string) int {
	var conns []net.Conn
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		cmd, arg, _ := strings.Cut(in.Text(), " ")
		i, _ := strconv.Atoi(arg)
		switch {
		case cmd == "dial":
			to := addr
			if arg != "" {
				to = arg
			}
			c, err := net.DialTimeout("tcp", to, 5*time.Second)
			switch {
			case err == nil:
				conns = append(conns, c)
				fmt.Println("ok")
			case errors.Is(err, syscall.EPERM):
				fmt.Println("EPERM")
			default:
				fmt.Println("err", err)
			}
		case cmd == "close" && i < len(conns):
			end(conns[i])
			fmt.Println("closed")
		case cmd == "half" && i < len(conns):
			io.WriteString(conns[i], "keep\n")
			conns[i].(*net.TCPConn).CloseWrite()
			fmt.Println("half")
		case cmd == "wait" && i < len(conns):
			conns[i].SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err := io.Copy(io.Discard, conns[i])
			fmt.Println("eof", err)
		case cmd == "from":
			to, src, _ := strings.Cut(arg, " ")
			d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src)),
				Control: func(_, _ string, rc syscall.RawConn) error {
					var serr error
					err := rc.Control(func(fd uintptr) {
						serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
					})
					return errors.Join(err, serr)
				}}
			c, err := d.Dial("tcp", to)
			if err != nil {
				fmt.Println("err", err)
				break
			}
			conns = append(conns, c)
			fmt.Println("ok")
		case cmd == "reset" && i < len(conns):
			conns[i].(*net.TCPConn).SetLinger(0)
			conns[i].Close()
			fmt.Println("reset")
		case cmd == "tfo":
			fmt.Println(fastOpen(addr, i))
		case cmd == "bye" && i < len(conns):
			io.WriteString(conns[i], "bye\n")
			conns[i].SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err := io.Copy(io.Discard, conns[i])
			fmt.Println("eof", err)
		default:
			fmt.Println("bad command", in.Text())
		}
	}
	// At the end of input every connection is ended as "close" does, so
	// when the helper has exited, each has been closed on both sides.
	for _, c := range conns {
		end(c)
	}
	return 0
}

// end ends c from the client's side and waits for the server to close
// its side, then closes c; an ended c is closed again harmlessly.
func end(c net.Conn) {
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	io.Copy(io.Discard, c)
	c.Close()
}

// fastOpen connects n sockets to addr with TCP_FASTOPEN_CONNECT (connect
// returns at once; the SYN goes with the first write), then on each asks
// "ping" and reports whether the server answered.
func fastOpen(addr string, n int) string {
	ap := netip.MustParseAddrPort(addr)
	const (
		tcpFastOpenConnect  = 30 // TCP_FASTOPEN_CONNECT, Linux 4.11
		tcpFastOpenNoCookie = 34 // TCP_FASTOPEN_NO_COOKIE, Linux 4.15: defer even without a cookie
	)
	got := make([]string, n)
	conns := make([]net.Conn, n)
	for i := range n {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
		if err == nil {
			err = syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, tcpFastOpenConnect, 1)
		}
		if err == nil {
			err = syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, tcpFastOpenNoCookie, 1)
		}
		if err == nil {
			err = syscall.Connect(fd, &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()})
		}
		if err == nil {
			conns[i], err = net.FileConn(os.NewFile(uintptr(fd), "tfo"))
		}
		switch {
		case errors.Is(err, syscall.EPERM):
			got[i] = "EPERM"
		case err != nil:
			got[i] = "err " + err.Error()
		}
	}
	for _, c := range conns {
		if c != nil {
			io.WriteString(c, "ping\n")
		}
	}
	for i, c := range conns {
		if c == nil {
			continue
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if line, err := bufio.NewReader(c).ReadString('\n'); err == nil && line == "pong\n" {
			got[i] = "served"
		} else {
			got[i] = "dropped"
		}
	}
	for _, c := range conns {
		if c != nil {
			end(c)
		}
	}
	return strings.Join(got, " ")
}

// connsProc drives a connsHelper process.
type connsProc struct {
	t    *testing.T
	in   io.WriteCloser
	out  *bufio.Scanner
	cmd  *exec.Cmd
	once sync.Once
}

// startPiped starts a helper from exe (a copy of the test binary every
// user may run) as o says, with pipes to its standard input and output.
func startPiped(exe string, o testenv.Options) (cmd *exec.Cmd, in io.WriteCloser, out *bufio.Scanner, err error) {
	cmd = exec.Command(exe)
	if in, err = cmd.StdinPipe(); err != nil {
		return nil, nil, nil, err
	}
	r, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, nil, err
	}
	cmd.Stderr = os.Stderr
	if err := testenv.Start(cmd, o); err != nil {
		return nil, nil, nil, err
	}
	return cmd, in, bufio.NewScanner(r), nil
}

// startConns starts a connsHelper from exe (a copy of the test binary
// every user may run) as o says.
func startConns(t *testing.T, exe string, o testenv.Options) *connsProc {
	t.Helper()
	o.Env = append(o.Env, "GPA_REDIRECTOR_HELPER=conns", "GPA_HELPER_ADDR="+msp.IMDSAddr.String())
	cmd, in, out, err := startPiped(exe, o)
	if err != nil {
		t.Fatal(err)
	}
	p := &connsProc{t: t, in: in, out: out, cmd: cmd}
	t.Cleanup(p.stop)
	return p
}

// do sends one command and returns the answer.
func (p *connsProc) do(cmd string) string {
	p.t.Helper()
	if _, err := io.WriteString(p.in, cmd+"\n"); err != nil {
		p.t.Fatalf("%s: %v", cmd, err)
	}
	if !p.out.Scan() {
		p.t.Fatalf("%s: helper gone: %v", cmd, p.out.Err())
	}
	return p.out.Text()
}

// dials dials n times and returns the answers.
func (p *connsProc) dials(n int) string {
	p.t.Helper()
	var got []string
	for range n {
		got = append(got, p.do("dial"))
	}
	return strings.Join(got, " ")
}

// stop ends the helper and waits for it to exit: every connection it
// held is closed when stop returns.
func (p *connsProc) stop() {
	p.once.Do(func() {
		p.in.Close()
		p.cmd.Wait()
	})
}

// holdServer accepts connections on l, consumes their records and holds
// them until the client says "bye" or ends its side (then closes, as the
// agent does) or the test ends. A connection with a record that says
// "ping" is answered "pong"; one without a record is closed at once, as the
// agent refuses to serve it. One that says "keep" is kept open after the
// client's end; closeKept waits for the next such end and closes it.
func holdServer(t *testing.T, r *Redirector, l net.Listener) (closeKept func()) {
	var mu sync.Mutex
	var conns []net.Conn
	kept := make(chan net.Conn, 16)
	closeKept = func() {
		select {
		case c := <-kept:
			c.Close()
		case <-time.After(5 * time.Second):
			t.Error("no connection kept after its client's end")
		}
	}
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, recorded := r.take(ends(c))
			if !recorded {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go func() {
				br := bufio.NewReader(c)
				keep := false
				for {
					line, err := br.ReadString('\n')
					switch {
					case line == "ping\n":
						io.WriteString(c, "pong\n")
						continue
					case line == "keep\n":
						keep = true
						continue
					case err != nil && keep:
						kept <- c
						return
					case err != nil || line == "bye\n":
						c.Close()
						return
					}
				}
			}()
		}
	}()
	return closeKept
}

// limitEnv is a redirector with connection limits, the listener and the
// container listener served by holdServer (closeKept: the listener's), and
// a connsHelper each as nobody, as uid 1000 and as root in the agent's
// namespace, and as root in a container.
type limitEnv struct {
	e                 *env
	r                 *Redirector
	n, u, root, kroot *connsProc
	closeKept         func()
}

func limitSetup(t *testing.T, perCaller, all int) *limitEnv {
	e := newEnv(t)
	ca := e.useContainerListener()
	e.cfg.MaxConnsPerCaller, e.cfg.MaxLimitedConns = perCaller, all
	r := e.loadRedirecting()
	le := &limitEnv{e: e, r: r}
	for _, a := range []netip.AddrPort{ca, msp.ListenerAddr} {
		le.closeKept = holdServer(t, r, e.listenAgent(a))
	}
	k := testenv.NewContainer(t, e.ns, e.cg, "gpcL", netip.MustParsePrefix("169.254.234.1/30"), netip.MustParsePrefix("169.254.234.2/30"))

	in := testenv.Options{Netns: e.ns, Cgroup: e.cg}
	nobody := in
	nobody.Credential = &syscall.Credential{Uid: 65534, Gid: 65534}
	user := in
	user.Credential = &syscall.Credential{Uid: 1000, Gid: 1000}
	exe := worldExecutable(t)
	le.n, le.u, le.root = startConns(t, exe, nobody), startConns(t, exe, user), startConns(t, exe, in)
	le.kroot = startConns(t, exe, testenv.Options{Netns: k.Netns, Cgroup: k.Cgroup})
	return le
}

// checkAnswer fails the test at once if got is not want.
func checkAnswer(t *testing.T, what, got, want string) {
	t.Helper()
	if got != want {
		t.Fatalf("%s: %q, want %q", what, got, want)
	}
}

// The kernel holds each caller (a user in a network namespace) to
// MaxConnsPerCaller redirected connections: the next connect fails with
// EPERM before any packet is sent, and a connection counts until the
// client closes it or the agent does. Other users, and root in a
// container, have their own counts; root in the agent's namespace has
// none. A reload (the agent restarts) counts afresh with its new limit:
// counts are not pinned, so they can never drift and lock callers out.
func TestCallerLimit(t *testing.T) {
	le := limitSetup(t, 3, 0)
	e, r, n, u, root, kroot := le.e, le.r, le.n, le.u, le.root, le.kroot
	check := func(what, got, want string) { t.Helper(); checkAnswer(t, what, got, want) }
	// TCP Fast Open defers the SYN to the first write, past the connect
	// hook's check: the fourth socket is refused service at its SYN.
	check("another user's four fast-open sockets", u.do("tfo 4"), "served served served dropped")
	check("nobody's first three and a fourth", n.dials(4), "ok ok ok EPERM")
	check("another user meanwhile", u.dials(1), "ok")
	// Connects straight to the listener count and are limited alike.
	listener := "dial " + msp.ListenerAddr.String()
	wildcard := "dial " + netip.AddrPortFrom(netip.IPv4Unspecified(), msp.ListenerAddr.Port()).String()
	check("nobody straight to the listener", n.do(listener)+" "+n.do(wildcard), "EPERM EPERM")
	check("the other user straight to the listener, then IMDS",
		u.do(listener)+" "+u.do(wildcard)+" "+u.dials(1), "ok ok EPERM")
	check("root straight to the listener", root.do(listener), "ok")
	// A half-closed connection the agent still holds stays counted until
	// the agent closes it.
	check("the other user half-closes one", u.do("half 0"), "half")
	check("then dials", u.dials(1), "EPERM")
	le.closeKept()
	check("the agent closes it", u.do("wait 0"), "eof <nil>")
	check("then the other user dials", u.dials(1), "ok")
	check("root in the agent's namespace", root.dials(5), "ok ok ok ok ok")
	check("root in a container", kroot.dials(4), "ok ok ok EPERM")
	// The container's own 127.0.0.1:3080 is not the agent's: not limited,
	// not recorded (nothing listens there).
	if got := kroot.do("dial " + msp.ListenerAddr.String()); !strings.Contains(got, "connection refused") {
		t.Fatalf("a container at its limit dialling its own loopback: %q, want connection refused", got)
	}
	check("the container straight to the container listener", kroot.do("dial "+msp.ContainerListenerAddr.String()), "EPERM")

	check("nobody closes one", n.do("close 0"), "closed")
	check("then dials", n.dials(2), "ok EPERM")
	check("the agent closes one of nobody's", n.do("bye 1"), "eof <nil>")
	check("then nobody dials", n.dials(2), "ok EPERM")
	if got, all, err := r.LimitRefusals(); err != nil || got != 10 || all != 0 {
		t.Errorf("LimitRefusals = %d, %d, %v; want 10 for the per-caller limit", got, all, err)
	}
	if got := e.direct.Load(); got != 0 {
		t.Errorf("%d connections reached the real IMDS", got)
	}

	// The agent restarts with a higher limit: nobody's 3 open connections
	// are not counted by the new programs.
	cfg := e.cfg
	cfg.MaxConnsPerCaller = 5
	r2, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	check("nobody after a restart with limit 5", n.dials(6), "ok ok ok ok ok EPERM")
	if got, _, err := r2.LimitRefusals(); err != nil || got != 1 {
		t.Errorf("LimitRefusals after the restart = %d, %v; want 1 (counted since load)", got, err)
	}

	// Every helper gone, its connections closed: no caller holds any.
	for _, p := range []*connsProc{n, u, root, kroot} {
		p.stop()
	}
	var key bpf.RedirectCallerKey
	var held int64
	counted := 0
	for it := r2.objs.CallerConns.Iterate(); it.Next(&key, &held); counted++ {
		if held != 0 {
			t.Errorf("uid %d (netns %d) still holds %d connections", key.Uid, key.Netns, held)
		}
	}
	if counted != 1 {
		t.Errorf("%d callers counted since the restart, want 1 (nobody)", counted)
	}
}

// All callers but root in the agent's namespace together hold at most
// MaxLimitedConns redirected connections (the agent's slots not kept for
// root), so many users or containers at their per-caller limit cannot
// flood the agent either; root in the agent's namespace is never refused.
func TestLimitedConnsTogether(t *testing.T) {
	le := limitSetup(t, 3, 4)
	r, n, u, root, kroot := le.r, le.n, le.u, le.root, le.kroot
	check := func(what, got, want string) { t.Helper(); checkAnswer(t, what, got, want) }

	check("nobody at its own limit", n.dials(4), "ok ok ok EPERM")
	check("another user: one left of four", u.dials(2), "ok EPERM")
	check("root in the agent's namespace", root.dials(2), "ok ok")
	// Other namespaces are held to their own limit only: a namespace can
	// hold its connections itself, and must not lock out everyone else.
	check("root in a container, own limit only", kroot.dials(4), "ok ok ok EPERM")
	check("nobody closes one", n.do("close 0"), "closed")
	check("the other user takes it", u.dials(2), "ok EPERM")
	if per, all, err := r.LimitRefusals(); err != nil || per != 2 || all != 2 {
		t.Errorf("LimitRefusals = %d per caller, %d all, %v; want 2 and 2", per, all, err)
	}

	for _, p := range []*connsProc{n, u, root, kroot} {
		p.stop()
	}
	var held int64
	if err := r.objs.LimitedConns.Lookup(uint32(0), &held); err != nil || held != 0 {
		t.Errorf("limited callers still hold %d connections (%v), want 0", held, err)
	}
}
