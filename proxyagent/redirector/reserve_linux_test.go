package redirector

import (
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/opengpa/gpa/internal/testenv"
)

// A listen() without a bind takes an ephemeral port, and no bind hook sees
// it: where the ephemeral range covers the listener's port, a user could
// be given that port while the agent restarts. ReservePorts keeps what the
// namespace reserved and adds the listener's port, which listen() is then
// never given.
func TestReservePorts(t *testing.T) {
	testenv.RequirePrivileged(t)
	ns := testenv.NewNetns(t)
	autobind := func() (int, error) {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			return 0, err
		}
		defer syscall.Close(fd)
		if err := syscall.Listen(fd, 1); err != nil {
			return 0, err
		}
		sa, err := syscall.Getsockname(fd)
		if err != nil {
			return 0, err
		}
		return sa.(*syscall.SockaddrInet4).Port, nil
	}
	err := ns.Do(func() error {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte("3080 3080"), 0); err != nil {
			return err
		}
		if err := os.WriteFile(reservedPortsPath, []byte("8000-8010"), 0); err != nil {
			return err
		}
		if port, err := autobind(); err != nil || port != 3080 {
			t.Fatalf("listen() without bind before: port %d, %v; want 3080 (the only ephemeral port)", port, err)
		}
		for range 2 {
			if err := ReservePorts(3080, 3080, 8005); err != nil {
				return err
			}
		}
		b, err := os.ReadFile(reservedPortsPath)
		if err != nil {
			return err
		}
		if got := strings.TrimSpace(string(b)); got != "3080,8000-8010" {
			t.Errorf("reserved ports %q, want 3080,8000-8010", got)
		}
		if port, err := autobind(); err == nil {
			t.Errorf("listen() without bind after: given port %d, want no port", port)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
