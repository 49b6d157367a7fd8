package syslog

import (
	"net"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsghdr is struct mmsghdr of sendmmsg(2): a message header and the
// bytes the kernel sent of it (padded to the header's alignment, as C).
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
}

// sendBatch sends msgs on c in order, as one datagram each, with as few
// system calls as the kernel allows: sendmmsg, issued raw inside the
// poller's callback (the socket is non-blocking; a full queue waits for
// it to drain within c's write deadline). It returns how many were sent
// and, when not all were, the error of the first one that was not. A
// datagram per record stays what the daemon receives; the batch spares
// the audit writer a system call per record, each of which from the
// syscall package's blocking path would also wake the runtime's monitor
// thread.
func sendBatch(c *net.UnixConn, msgs [][]byte) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	iovs := make([]unix.Iovec, len(msgs))
	hdrs := make([]mmsghdr, len(msgs))
	for i, m := range msgs {
		if len(m) > 0 {
			iovs[i].Base = &m[0]
		}
		iovs[i].SetLen(len(m))
		hdrs[i].hdr.Iov = &iovs[i]
		hdrs[i].hdr.SetIovlen(1)
	}
	sent := 0
	var serr unix.Errno
	werr := rc.Write(func(fd uintptr) bool {
		for sent < len(hdrs) {
			n, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&hdrs[sent])), uintptr(len(hdrs)-sent), 0, 0, 0)
			switch e {
			case 0:
				sent += int(n)
			case unix.EINTR:
			case unix.EAGAIN:
				return false // the daemon's queue is full: wait until writable
			default:
				serr = e
				return true
			}
		}
		return true
	})
	runtime.KeepAlive(msgs)
	runtime.KeepAlive(iovs)
	switch {
	case sent == len(msgs):
		return sent, nil
	case werr != nil:
		return sent, &net.OpError{Op: "write", Net: "unixgram", Addr: c.RemoteAddr(), Err: unwrapOp(werr)}
	}
	return sent, &net.OpError{Op: "write", Net: "unixgram", Addr: c.RemoteAddr(), Err: os.NewSyscallError("sendmmsg", serr)}
}

// unwrapOp returns the cause of a poller error (deadline, closed).
func unwrapOp(err error) error {
	if oe, ok := err.(*net.OpError); ok {
		return oe.Err
	}
	return err
}
