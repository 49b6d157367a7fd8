package rawio

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// acceptDialled dials ln and returns the accepted and the dialled side.
func acceptDialled(t *testing.T, ln net.Listener) (accepted, dialled net.Conn) {
	t.Helper()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a := <-acc
	if a == nil {
		c.Close()
		t.Fatal("Accept failed")
	}
	return a, c
}

// tcpPair returns a raw-I/O connection and its peer: with accepted, the
// connection is the one listener accepts, else the dialling side
// wrapped by Wrap.
func tcpPair(t *testing.T, accepted bool) (*conn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if accepted {
		if ln, err = Listen(ln); err != nil {
			t.Fatal(err)
		}
	}
	defer ln.Close()
	a, c := acceptDialled(t, ln)
	var r net.Conn
	var peer net.Conn
	if accepted {
		r, peer = a, c
	} else {
		r, peer = Wrap(c), a
	}
	rr, ok := r.(*conn)
	if !ok {
		t.Fatalf("%T is not a raw-I/O connection", r)
	}
	t.Cleanup(func() { rr.Close(); peer.Close() })
	return rr, peer.(*net.TCPConn)
}

// The raw connection behaves as a *net.TCPConn where the proxy relies on
// it: whole writes past a full socket buffer, half-close, EOF, deadlines,
// resets, errors after Close; dialled and accepted alike.
func TestRawIOConn(t *testing.T) {
	for _, accepted := range []bool{false, true} {
		t.Run(map[bool]string{false: "dialled", true: "accepted"}[accepted], func(t *testing.T) {
			testRawIOConn(t, accepted)
		})
	}
}

func testRawIOConn(t *testing.T, accepted bool) {
	t.Run("large write and read", func(t *testing.T) {
		r, peer := tcpPair(t, accepted)
		want := bytes.Repeat([]byte("0123456789abcdef"), 1<<19) // 8 MiB: the socket buffer fills
		got := make(chan []byte, 1)
		go func() {
			b, _ := io.ReadAll(peer)
			got <- b
		}()
		if n, err := r.Write(want); n != len(want) || err != nil {
			t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(want))
		}
		r.CloseWrite()
		if b := <-got; !bytes.Equal(b, want) {
			t.Fatalf("peer read %d bytes, want the %d written", len(b), len(want))
		}
		go func() {
			peer.Write(want)
			peer.Close()
		}()
		b, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(b, want) {
			t.Fatalf("ReadAll = %d bytes, %v", len(b), err)
		}
		if n, err := r.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("Read after the peer's close = %d, %v; want io.EOF", n, err)
		}
	})
	t.Run("read deadline", func(t *testing.T) {
		r, _ := tcpPair(t, accepted)
		r.SetReadDeadline(time.Now().Add(-time.Second))
		_, err := r.Read(make([]byte, 1))
		var ne net.Error
		var oe *net.OpError
		if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() || !errors.As(err, &oe) || oe.Op != "read" {
			t.Fatalf("Read past the deadline: %v, want a timeout", err)
		}
	})
	t.Run("closed", func(t *testing.T) {
		r, _ := tcpPair(t, accepted)
		r.Close()
		if _, err := r.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read after Close: %v, want net.ErrClosed", err)
		}
		if _, err := r.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Write after Close: %v, want net.ErrClosed", err)
		}
	})
	if accepted {
		t.Run("closed by its owner", func(t *testing.T) {
			// The socket closes at once (the peer reads EOF); the
			// descriptor number stays taken, on /dev/null, until the
			// releaser gives it back.
			r, peer := tcpPair(t, accepted)
			var fd uintptr
			r.rc.Control(func(s uintptr) { fd = s })
			link := "/proc/self/fd/" + strconv.Itoa(int(fd))
			var rel Releaser
			CloseOwned(r, &rel)
			peer.SetReadDeadline(time.Now().Add(10 * time.Second))
			if n, err := peer.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Fatalf("peer Read after CloseOwned = %d, %v; want io.EOF", n, err)
			}
			if target, err := os.Readlink(link); err != nil || target != "/dev/null" {
				t.Fatalf("descriptor %d before the release: %q, %v; want /dev/null", fd, target, err)
			}
			rel.Flush()
			if target, err := os.Readlink(link); err == nil && target == "/dev/null" {
				t.Fatalf("descriptor %d still open after the release", fd)
			}
		})
	}
	t.Run("reset", func(t *testing.T) {
		r, peer := tcpPair(t, accepted)
		peer.SetLinger(0) // close with RST, delivered on loopback before Close returns
		peer.Close()
		_, rerr := r.Read(make([]byte, 1))
		_, err := r.Write([]byte("x"))
		if !errors.Is(rerr, syscall.ECONNRESET) {
			t.Fatalf("Read from a reset connection: %v, want ECONNRESET", rerr)
		}
		if !errors.Is(err, syscall.EPIPE) {
			t.Fatalf("Write to a reset connection: %v, want EPIPE", err)
		}
	})
}

// rawListen listens on the IPv4 address addr and wraps the listener.
func rawListen(t *testing.T, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	rl, err := Listen(ln)
	if err != nil {
		t.Fatal(err)
	}
	return rl
}

// listener's connections carry the addresses and options Go's accept
// gives them, and its errors are those of a *net.TCPListener.
func TestRawListener(t *testing.T) {
	// A wildcard listener's connections carry their own local address
	// (the kernel record is looked up by it), not 0.0.0.0.
	rw := rawListen(t, "0.0.0.0:0")
	a, c := acceptDialled(t, rw)
	if a.LocalAddr().String() != c.RemoteAddr().String() || a.LocalAddr().(*net.TCPAddr).IP.IsUnspecified() {
		t.Errorf("wildcard listener: accepted local %v, dialled to %v", a.LocalAddr(), c.RemoteAddr())
	}
	a.Close()
	c.Close()
	rw.Close()

	rl := rawListen(t, "127.0.0.1:0")
	defer rl.Close()
	for range 3 {
		a, c := acceptDialled(t, rl)
		if a.RemoteAddr().String() != c.LocalAddr().String() || a.LocalAddr().String() != c.RemoteAddr().String() {
			t.Errorf("accepted %v -> %v, dialled %v -> %v", a.RemoteAddr(), a.LocalAddr(), c.LocalAddr(), c.RemoteAddr())
		}
		// Responses written in pieces must not wait for ACKs (Nagle):
		// the accepted socket has TCP_NODELAY, inherited from the listener.
		rc, _ := a.(syscall.Conn).SyscallConn()
		nodelay := -1
		rc.Control(func(fd uintptr) { nodelay, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY) })
		if nodelay != 1 {
			t.Errorf("accepted socket's TCP_NODELAY = %d, want 1", nodelay)
		}
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 8)
		if n, err := a.Read(buf); err != nil || string(buf[:n]) != "ping" {
			t.Fatalf("Read = %q, %v", buf[:n], err)
		}
		c.Close()
		a.Close()
	}
	rl.Close()
	if _, err := rl.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
	}
}
