package proxy

import (
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// peeker checks an idle connection with a non-blocking peek; made once per
// connection so a check allocates nothing.
type peeker struct {
	rc   syscall.RawConn
	buf  [1]byte
	open bool
	fn   func(fd uintptr) bool
}

// newPeeker returns a peeker for c, or nil when c exposes no socket.
func newPeeker(c net.Conn) *peeker {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	p := &peeker{rc: rc}
	p.fn = p.peek
	return p
}

func (p *peeker) peek(fd uintptr) bool {
	// EAGAIN: nothing to read, still open. A result of 0 bytes is an
	// orderly close; any byte is data nobody asked for; other errors
	// (ECONNRESET) mean the connection is gone. A raw call (it cannot
	// block) spares the runtime's system call bookkeeping, as package rawio
	// does.
	_, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&p.buf[0])), 1,
		unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
	p.open = errno == unix.EAGAIN || errno == unix.EINTR
	return true
}

// peerOpen reports whether the peer of an idle connection has neither
// closed it nor sent unexpected bytes. Without a socket (nil) the
// connection is assumed open; a closed one is then found by the request's
// failure.
func (p *peeker) peerOpen() bool {
	if p == nil {
		return true
	}
	p.open = false
	err := p.rc.Read(p.fn)
	return err == nil && p.open
}
