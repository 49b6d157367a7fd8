package redirector

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// NetnsCookie returns the cookie of the calling thread's network namespace
// (SO_NETNS_COOKIE, Linux 5.14), the value bpf_get_netns_cookie reports
// for sockets in it.
func NetnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("netns cookie: socket: %w", err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("netns cookie: getsockopt SO_NETNS_COOKIE (Linux 5.14 or later): %w", err)
	}
	return c, nil
}

// AddLoopbackAddr adds a/32 to the loopback device of the calling thread's
// network namespace; an address already there is not an error.
func AddLoopbackAddr(a netip.Addr) error {
	err := loopbackAddr(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, a)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

// RemoveLoopbackAddr removes a/32 from the loopback device; an address
// that is not there is not an error.
func RemoveLoopbackAddr(a netip.Addr) error {
	err := loopbackAddr(unix.RTM_DELADDR, 0, a)
	if errors.Is(err, unix.EADDRNOTAVAIL) || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return err
}

// loopbackAddr sends one RTM_NEWADDR or RTM_DELADDR for a/32 on lo and
// waits for the kernel's acknowledgement.
func loopbackAddr(msgType uint16, flags uint16, a netip.Addr) error {
	if !a.Is4() {
		return fmt.Errorf("loopback address %s is not IPv4", a)
	}
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		return fmt.Errorf("loopback address %s: %w", a, err)
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("loopback address %s: netlink: %w", a, err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("loopback address %s: netlink bind: %w", a, err)
	}

	ip := a.As4()
	attr := func(typ uint16, v []byte) []byte {
		b := make([]byte, unix.SizeofRtAttr, unix.SizeofRtAttr+len(v))
		*(*unix.RtAttr)(unsafe.Pointer(&b[0])) = unix.RtAttr{Len: uint16(unix.SizeofRtAttr + len(v)), Type: typ}
		return append(b, v...) // 4-byte values need no padding
	}
	body := make([]byte, unix.SizeofIfAddrmsg)
	*(*unix.IfAddrmsg)(unsafe.Pointer(&body[0])) = unix.IfAddrmsg{Family: unix.AF_INET, Prefixlen: 32,
		Scope: unix.RT_SCOPE_UNIVERSE, Index: uint32(lo.Index)}
	body = append(body, attr(unix.IFA_LOCAL, ip[:])...)
	body = append(body, attr(unix.IFA_ADDRESS, ip[:])...)
	msg := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(body))
	*(*unix.NlMsghdr)(unsafe.Pointer(&msg[0])) = unix.NlMsghdr{Len: uint32(unix.SizeofNlMsghdr + len(body)),
		Type: msgType, Flags: unix.NLM_F_REQUEST | unix.NLM_F_ACK | flags, Seq: 1}
	msg = append(msg, body...)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("loopback address %s: netlink send: %w", a, err)
	}
	buf := make([]byte, 4096)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return fmt.Errorf("loopback address %s: netlink receive: %w", a, err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("loopback address %s: netlink parse: %w", a, err)
		}
		for _, m := range msgs {
			if m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
				continue
			}
			if errno := -*(*int32)(unsafe.Pointer(&m.Data[0])); errno != 0 {
				return fmt.Errorf("loopback address %s: %w", a, syscall.Errno(errno))
			}
			return nil
		}
	}
}
