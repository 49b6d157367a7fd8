package rawio

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// conn is a TCP connection whose reads and writes are issued as raw
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
type conn struct {
	net.Conn // a *net.TCPConn, or a fileConn from listener
	rc       syscall.RawConn

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

// Wrap wraps c when it is a TCP connection; anything else (including a
// connection already wrapped) is returned as it is.
func Wrap(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return newConn(tc, rc)
}

func newConn(c net.Conn, rc syscall.RawConn) *conn {
	r := &conn{Conn: c, rc: rc}
	r.readFn = r.read
	r.writeFn = r.write
	return r
}

// SyscallConn returns the socket's raw connection (e.g. for a peek).
func (c *conn) SyscallConn() (syscall.RawConn, error) { return c.rc, nil }

// CloseWrite shuts down the sending side (the peer reads EOF).
func (c *conn) CloseWrite() error {
	if tc, ok := c.Conn.(*net.TCPConn); ok {
		return tc.CloseWrite()
	}
	var serr error
	if err := c.rc.Control(func(fd uintptr) { serr = unix.Shutdown(int(fd), unix.SHUT_WR) }); err != nil {
		return opError("close", c, err)
	}
	if serr != nil {
		return opError("close", c, os.NewSyscallError("shutdown", serr))
	}
	return nil
}

func (c *conn) read(fd uintptr) bool {
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

func (c *conn) write(fd uintptr) bool {
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
func (c *conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rbuf, c.rn, c.rerr = p, 0, nil
	err := c.rc.Read(c.readFn)
	c.rbuf = nil
	switch {
	case err != nil:
		return 0, opError("read", c, err)
	case c.rerr != nil:
		return 0, opError("read", c, os.NewSyscallError("read", c.rerr))
	case c.rn == 0:
		return 0, io.EOF
	}
	return c.rn, nil
}

// Write implements net.Conn: all of p, or an error.
func (c *conn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.wbuf, c.wn, c.werr = p, 0, nil
	err := c.rc.Write(c.writeFn)
	c.wbuf = nil
	switch {
	case err != nil:
		return c.wn, opError("write", c, err)
	case c.werr != nil:
		return c.wn, opError("write", c, os.NewSyscallError("write", c.werr))
	}
	return c.wn, nil
}

// opError is the error a *net.TCPConn would return: the poller's own
// errors (deadline, closed) keep their cause under the plain operation
// name, and a closed fileConn reports net.ErrClosed as a TCPConn does (its
// poller says "use of closed file").
func opError(op string, c *conn, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		err = oe.Err
	}
	if fc, ok := c.Conn.(*fileConn); ok && fc.closed.Load() && !errors.Is(err, os.ErrDeadlineExceeded) {
		err = net.ErrClosed
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// listener is a TCP listener that accepts with a raw accept4 call inside
// the poller's callback and hands out connections over an *os.File
// registered with the poller. Go's own accept path makes three calls
// through the syscall package's blocking path per connection (accept4,
// getsockname, setsockopt TCP_NODELAY) plus the accept4 that finds the
// queue empty; each such call from an idle process wakes the runtime's
// monitor thread (conn). Here the peer address comes with accept4,
// the local address is the listener's, and TCP_NODELAY is set once on the
// listening socket, which accepted sockets inherit.
//
// The listening socket is held as an *os.File (a duplicate of the
// listener's, which is closed): a *net.TCPListener's raw connection does
// not offer Read.
type listener struct {
	f      *os.File
	rc     syscall.RawConn
	local  *net.TCPAddr
	closed atomic.Bool

	mu  sync.Mutex // one Accept at a time; guards the fields below
	nfd int
	sa  unix.RawSockaddrInet4
	err error
	fn  func(fd uintptr) bool
}

// Listen replaces an IPv4 TCP listener by a listener on the same
// socket; anything else is returned as it is. On error ln is closed.
func Listen(ln net.Listener) (net.Listener, error) {
	tl, ok := ln.(*net.TCPListener)
	local, _ := ln.Addr().(*net.TCPAddr)
	if !ok || local == nil || local.IP.To4() == nil {
		return ln, nil
	}
	f, err := tl.File()
	if err != nil {
		tl.Close()
		return nil, err
	}
	tl.Close() // the duplicate, f, keeps the socket listening
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	}); err != nil || serr != nil {
		f.Close()
		return nil, errors.Join(err, serr)
	}
	l := &listener{f: f, rc: rc, local: local}
	l.fn = l.accept
	return l, nil
}

// Addr implements net.Listener.
func (l *listener) Addr() net.Addr { return l.local }

// Close implements net.Listener; a pending Accept returns net.ErrClosed.
func (l *listener) Close() error {
	l.closed.Store(true)
	return l.f.Close()
}

func (l *listener) accept(fd uintptr) bool {
	for {
		salen := uint32(unsafe.Sizeof(l.sa))
		nfd, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, fd, uintptr(unsafe.Pointer(&l.sa)), uintptr(unsafe.Pointer(&salen)),
			unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
		switch e {
		case 0:
			l.nfd = int(nfd)
			return true
		case unix.EINTR, unix.ECONNABORTED:
			// ECONNABORTED: a connection closed while queued; as Go's
			// accept, take the next one.
			continue
		case unix.EAGAIN:
			return false // wait until a connection is queued
		default:
			l.err = os.NewSyscallError("accept4", e)
			return true
		}
	}
}

// Accept waits for the next connection. Errors are *net.OpError as from
// a *net.TCPListener (net.ErrClosed after Close).
func (l *listener) Accept() (net.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.nfd, l.err = -1, nil
	err := l.rc.Read(l.fn)
	if err == nil {
		err = l.err
	}
	if err != nil {
		if l.closed.Load() {
			err = net.ErrClosed
		}
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.local, Err: err}
	}
	// The descriptor is non-blocking: NewFile registers it with the poller
	// (its flag check is the runtime's own raw fcntl).
	f := os.NewFile(uintptr(l.nfd), "tcp")
	frc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.local, Err: err}
	}
	p := (*[2]byte)(unsafe.Pointer(&l.sa.Port)) // network byte order
	port := int(p[0])<<8 | int(p[1])
	remote := &net.TCPAddr{IP: net.IPv4(l.sa.Addr[0], l.sa.Addr[1], l.sa.Addr[2], l.sa.Addr[3]).To4(), Port: port}
	local := l.local
	if local.IP.IsUnspecified() {
		// A wildcard listener: the connection's own local address.
		if sa, err := syscall.Getsockname(l.nfd); err == nil {
			if sa4, ok := sa.(*syscall.SockaddrInet4); ok {
				local = &net.TCPAddr{IP: net.IPv4(sa4.Addr[0], sa4.Addr[1], sa4.Addr[2], sa4.Addr[3]).To4(), Port: sa4.Port}
			}
		}
	}
	return newConn(&fileConn{File: f, local: local, remote: remote}, frc), nil
}

// fileConn is an accepted socket held as an *os.File (poller-registered,
// with deadlines) that conn reads and writes.
type fileConn struct {
	*os.File
	local, remote net.Addr
	closed        atomic.Bool
}

func (c *fileConn) LocalAddr() net.Addr  { return c.local }
func (c *fileConn) RemoteAddr() net.Addr { return c.remote }

func (c *fileConn) Close() error {
	c.closed.Store(true)
	return c.File.Close()
}

// devNull is a descriptor on /dev/null for CloseOwned, opened once; -1
// if it cannot be opened.
var devNull = sync.OnceValue(func() int {
	fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1
	}
	return fd
})

// CloseOwned closes c for the goroutine that owns it, when no other goroutine
// can be using it (a finished connection; a Read or Write still running
// elsewhere would see the descriptor change under it). An accepted
// connection's socket is closed with one raw dup3 that puts /dev/null on
// its descriptor: the socket's last reference goes (FIN, or RST over
// unread data, exactly as close), the kernel drops its poller
// registration, and the number stays taken, so it cannot be reused while
// the os.File still names it, until r closes the file. Anything else, or
// when that fails, is closed at once.
func CloseOwned(c net.Conn, r *Releaser) {
	rc, ok := c.(*conn)
	if !ok {
		c.Close()
		return
	}
	fc, ok := rc.Conn.(*fileConn)
	null := devNull()
	if !ok || null < 0 {
		c.Close()
		return
	}
	var e syscall.Errno
	err := rc.rc.Control(func(fd uintptr) {
		_, _, e = unix.RawSyscall(unix.SYS_DUP3, uintptr(null), fd, unix.O_CLOEXEC)
	})
	if err != nil || e != 0 {
		c.Close()
		return
	}
	fc.closed.Store(true)
	r.add(fc.File)
}
