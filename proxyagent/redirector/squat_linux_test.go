package redirector

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/opengpa/gpa/internal/testenv"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// squatHelper binds addr with SO_REUSEADDR and says "bound"; on "listen"
// on stdin it listens, says "listening", and answers whatever connects
// with "hijacked" until stdin closes.
func squatHelper(addr string) int {
	ap := netip.MustParseAddrPort(addr)
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err == nil {
		err = syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
	}
	if err == nil {
		err = syscall.Bind(fd, &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()})
	}
	if err != nil {
		fmt.Println("err", err)
		return 1
	}
	fmt.Println("bound")
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() || in.Text() != "listen" {
		return 0
	}
	if err := syscall.Listen(fd, 8); err != nil {
		fmt.Println("err", err)
		return 1
	}
	l, err := net.FileListener(os.NewFile(uintptr(fd), "squat"))
	if err != nil {
		fmt.Println("err", err)
		return 1
	}
	fmt.Println("listening")
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.0 200 OK\r\n\r\nhijacked")
			c.Close()
		}
	}()
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// A user's socket bound to the listener's address with SO_REUSEADDR before
// the bind guard was first loaded (a user on a running VM when the
// extension is installed) sits beside the agent's listener unseen. Once
// the agent's listener closes (a restart) it can listen there; the hooks
// must refuse root's redirected connects, and direct ones, rather than send
// them to it, since its socket lacks the agent's mark.
func TestSquatterNeverServed(t *testing.T) {
	e := newEnv(t)
	cmd, in, said, err := startPiped(worldExecutable(t), testenv.Options{Netns: e.ns,
		Credential: &syscall.Credential{Uid: 65534, Gid: 65534},
		Env:        []string{"GPA_REDIRECTOR_HELPER=squat", "GPA_HELPER_ADDR=" + msp.ListenerAddr.String()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(); cmd.Wait() })
	expect := func(want string) {
		t.Helper()
		if !said.Scan() || said.Text() != want {
			t.Fatalf("squatter said %q (%v), want %q", said.Text(), said.Err(), want)
		}
	}
	expect("bound")

	r := e.loadRedirecting()
	tl := e.listen(r)
	imds := curl("http://169.254.169.254/", "--max-time", "2")
	if _, got, err := e.run(client{args: imds}); err != nil || got != "redirected" {
		t.Fatalf("root with the agent listening: %q %v; want redirected", got, err)
	}
	tl.next(t)

	tl.close()
	// With nobody listening (the agent down) a connect fails as one to a
	// closed port does, before any packet; with a stranger listening it is
	// refused by policy (EPERM).
	errno := func(addr string) string {
		_, got, err := e.run(client{args: []string{""}, env: []string{"GPA_REDIRECTOR_HELPER=errno", "GPA_HELPER_ADDR=" + addr}})
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(got)
	}
	mapped := netip.AddrPortFrom(netip.AddrFrom16(msp.IMDSAddr.Addr().As16()), msp.IMDSAddr.Port()).String() // connect6
	for _, addr := range []string{msp.IMDSAddr.String(), mapped, msp.ListenerAddr.String()} {
		if got := errno(addr); got != "ECONNREFUSED" {
			t.Errorf("connect to %s with nobody listening: %s, want ECONNREFUSED", addr, got)
		}
	}
	io.WriteString(in, "listen\n")
	expect("listening")
	for _, addr := range []string{msp.IMDSAddr.String(), mapped, msp.ListenerAddr.String()} {
		if got := errno(addr); got != "EPERM" {
			t.Errorf("connect to %s with a stranger listening: %s, want EPERM", addr, got)
		}
	}
	for _, c := range []struct {
		who  string
		args []string
	}{
		{"root's IMDS request", imds},
		{"a direct connect to the listener", curl("http://127.0.0.1:3080/", "--max-time", "2")},
	} {
		_, got, err := e.run(client{args: c.args})
		if got == "hijacked" || err == nil {
			t.Errorf("%s with a stranger listening on the agent's port: %q %v; want it refused", c.who, got, err)
		}
	}
}

// Where the kernel does not let the connect hooks choose the error (before
// Linux 6.1), the same object loads with the call dropped, and a connect
// nobody listens for is refused with EPERM, still before any packet.
func TestUnservedConnectWithoutSetRetval(t *testing.T) {
	saved := canSetRetval
	canSetRetval = func() bool { return false }
	t.Cleanup(func() { canSetRetval = saved })
	e := newEnv(t)
	e.loadRedirecting()
	_, got, err := e.run(client{args: []string{""}, env: []string{"GPA_REDIRECTOR_HELPER=errno", "GPA_HELPER_ADDR=" + msp.IMDSAddr.String()}})
	if err != nil {
		t.Fatal(err)
	}
	if got = strings.TrimSpace(got); got != "EPERM" {
		t.Errorf("connect with nobody listening, without bpf_set_retval: %s, want EPERM", got)
	}
	if before := e.direct.Load(); before != 0 {
		t.Errorf("%d connections reached the real IMDS", before)
	}
}
