// Package hostconn opens the agent's own connections to the host
// (WireServer, IMDS, HostGAPlugin). Every such socket carries Mark, the
// socket mark the eBPF connect hooks recognise as the agent's, so the
// agent's traffic is never redirected back to itself. Exempting by mark
// rather than by PID means a recycled PID never inherits the exemption.
package hostconn

import (
	"context"
	"fmt"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Mark is the SO_MARK value of the agent's own sockets ("gpa" in ASCII).
const Mark uint32 = 0x00677061

// Dialer returns a dialer whose sockets carry mark (0 leaves sockets
// unmarked, for tests that run without the eBPF hooks). Setting a mark
// needs CAP_NET_ADMIN; when it fails the dial fails, so an unmarked socket
// can never loop back into the redirect.
func Dialer(mark uint32, timeout time.Duration) *net.Dialer {
	d := &net.Dialer{Timeout: timeout}
	if mark != 0 {
		d.Control = MarkControl(mark)
	}
	return d
}

// MarkControl returns a net.Dialer or net.ListenConfig Control function
// that sets SO_MARK mark on the socket before it connects or binds; an
// error (no CAP_NET_ADMIN) fails the dial or listen.
func MarkControl(mark uint32) func(network, address string, c syscall.RawConn) error {
	return func(_, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
		})
		if err == nil {
			err = serr
		}
		if err != nil {
			return fmt.Errorf("hostconn: set SO_MARK on socket %s: %w", address, err)
		}
		return nil
	}
}

// DialContext is Dialer(mark, timeout).DialContext, for http.Transport.
func DialContext(mark uint32, timeout time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return Dialer(mark, timeout).DialContext
}
