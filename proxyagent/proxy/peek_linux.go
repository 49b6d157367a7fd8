package proxy

import (
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// peerOpen reports whether the peer of an idle connection has neither
// closed it nor sent unexpected bytes, by peeking without blocking.
// Connections that expose no file descriptor are assumed open.
func peerOpen(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	open := true
	var buf [1]byte
	err = rc.Read(func(fd uintptr) bool {
		// EAGAIN: nothing to read, still open. A result of 0 bytes is an
		// orderly close; any byte is data nobody asked for; other errors
		// (ECONNRESET) mean the connection is gone.
		// A raw call (it cannot block) spares the runtime's system call
		// bookkeeping, as rawIOConn does.
		_, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&buf[0])), 1,
			unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		open = errno == unix.EAGAIN || errno == unix.EINTR
		return true
	})
	return err == nil && open
}
