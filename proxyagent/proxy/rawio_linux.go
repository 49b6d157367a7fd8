package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawIOConn is a TCP connection whose reads and writes are issued as raw
// system calls from inside the runtime poller's callbacks
// (syscall.RawConn), instead of through the syscall package's blocking
// path. The sockets are non-blocking, so no call can block; what is saved
// is the runtime's system call bookkeeping: each blocking-path call from a
// process that was idle wakes the runtime's monitor thread, which then
// polls at 20 µs intervals, and a call it finds long hands the
// goroutine's processor to another thread. For a proxy whose every
// request is a handful of short socket calls separated by waits, that
// bookkeeping cost more CPU than the calls themselves (perf, issue 13).
// Deadlines, EAGAIN waits and Close work as on the wrapped connection.
type rawIOConn struct {
	*net.TCPConn
	rc syscall.RawConn

	// One read and one write may run at once; each has its own state,
	// set before and read after the callback, which is bound once.
	rbuf   []byte
	rn     int
	rerr   error
	readFn func(fd uintptr) bool

	wbuf    []byte
	wn      int
	werr    error
	writeFn func(fd uintptr) bool
}

// rawIO wraps c when it is a TCP connection; anything else is returned as
// it is.
func rawIO(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	r := &rawIOConn{TCPConn: tc, rc: rc}
	r.readFn = r.read
	r.writeFn = r.write
	return r
}

func (c *rawIOConn) read(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&c.rbuf[0])), uintptr(len(c.rbuf)))
		switch e {
		case 0:
			c.rn = int(n)
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // wait until readable
		default:
			c.rerr = e
			return true
		}
	}
}

func (c *rawIOConn) write(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		p := c.wbuf[c.wn:]
		n, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch e {
		case 0:
			c.wn += int(n)
		case unix.EINTR:
		case unix.EAGAIN:
			return false // wait until writable
		default:
			c.werr = e
			return true
		}
	}
	return true
}

// Read implements net.Conn: io.EOF at the peer's end, *net.OpError
// otherwise, as the wrapped connection.
func (c *rawIOConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rbuf, c.rn, c.rerr = p, 0, nil
	err := c.rc.Read(c.readFn)
	c.rbuf = nil
	switch {
	case err != nil:
		return 0, opError("read", c.TCPConn, err)
	case c.rerr != nil:
		return 0, opError("read", c.TCPConn, os.NewSyscallError("read", c.rerr))
	case c.rn == 0:
		return 0, io.EOF
	}
	return c.rn, nil
}

// Write implements net.Conn: all of p, or an error.
func (c *rawIOConn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.wbuf, c.wn, c.werr = p, 0, nil
	err := c.rc.Write(c.writeFn)
	c.wbuf = nil
	switch {
	case err != nil:
		return c.wn, opError("write", c.TCPConn, err)
	case c.werr != nil:
		return c.wn, opError("write", c.TCPConn, os.NewSyscallError("write", c.werr))
	}
	return c.wn, nil
}

// opError is the error the wrapped connection would return: the poller's
// own errors (deadline, closed) keep their cause under the plain
// operation name.
func opError(op string, c *net.TCPConn, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
