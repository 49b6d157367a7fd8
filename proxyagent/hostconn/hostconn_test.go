package hostconn

import (
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func markOf(t *testing.T, c net.Conn) int {
	t.Helper()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var mark int
	var gerr error
	raw.Control(func(fd uintptr) { mark, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
	if gerr != nil {
		t.Fatal(gerr)
	}
	return mark
}

func TestDialerMarksSockets(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := Dialer(0, time.Second).Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if m := markOf(t, c); m != 0 {
		t.Fatalf("mark 0 dialer set mark %#x", m)
	}
	marked, err := Dialer(Mark, time.Second).Dial("tcp", l.Addr().String())
	if os.Geteuid() != 0 {
		// Without CAP_NET_ADMIN the mark cannot be set: the dial must fail
		// rather than produce an unmarked socket.
		if err == nil {
			marked.Close()
			t.Fatal("dial succeeded without permission to set the mark")
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	defer marked.Close()
	if m := markOf(t, marked); uint32(m) != Mark {
		t.Fatalf("socket mark %#x, want %#x", m, Mark)
	}
}
