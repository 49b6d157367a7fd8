package testenv

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Netns is a named network namespace (ip-netns(8) style, bound at
// /run/netns/<Name>).
type Netns struct {
	Name string
	Path string // /run/netns/<Name>, usable with nsenter --net=<Path>
}

// CreateNetns creates the namespace name with its loopback up and each of
// addrs assigned to lo (/32 for IPv4, /128 for IPv6), so a server inside
// the namespace can listen on, say, 169.254.169.254:80 and nothing sent
// there leaves the namespace. The caller must Delete it.
func CreateNetns(name string, addrs ...netip.Addr) (*Netns, error) {
	if name == "" || strings.ContainsAny(name, "/ ") {
		return nil, fmt.Errorf("testenv: bad netns name %q", name)
	}
	if err := ipCmd("netns", "add", name); err != nil {
		return nil, err
	}
	n := &Netns{Name: name, Path: filepath.Join("/run/netns", name)}
	if err := ipCmd("-n", name, "link", "set", "lo", "up"); err != nil {
		_ = n.Delete()
		return nil, err
	}
	for _, a := range addrs {
		if err := ipCmd("-n", name, "addr", "add", netip.PrefixFrom(a, a.BitLen()).String(), "dev", "lo"); err != nil {
			_ = n.Delete()
			return nil, err
		}
	}
	return n, nil
}

// NewNetns creates a uniquely named namespace as CreateNetns does and
// deletes it when the test ends.
func NewNetns(t testing.TB, addrs ...netip.Addr) *Netns {
	t.Helper()
	n, err := CreateNetns(uniqueName("gpa"), addrs...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Delete(); err != nil {
			t.Errorf("delete netns: %v", err)
		}
	})
	return n
}

// Delete removes the namespace's name. Sockets and processes still inside
// keep the namespace alive until they end. Deleting a namespace that is
// already gone is not an error.
func (n *Netns) Delete() error {
	if _, err := os.Stat(n.Path); os.IsNotExist(err) {
		return nil
	}
	return ipCmd("netns", "delete", n.Name)
}

// Do runs fn on a locked OS thread that has entered the namespace, and
// returns fn's error. Sockets fn creates belong to the namespace and stay
// usable from any goroutine after Do returns; processes fn starts begin
// inside it. The thread is discarded afterwards, so no other goroutine ever
// runs in the namespace by accident.
func (n *Netns) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// No UnlockOSThread: the runtime ends the thread with the goroutine.
		runtime.LockOSThread()
		f, err := os.Open(n.Path)
		if err != nil {
			errc <- fmt.Errorf("testenv: open netns: %w", err)
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("testenv: enter netns %s: %w", n.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Listen opens a listener inside the namespace (network and address as for
// net.Listen).
func (n *Netns) Listen(network, address string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() error {
		var err error
		l, err = net.Listen(network, address)
		return err
	})
	return l, err
}

// Dial connects from inside the namespace (network and address as for
// net.Dial). The connecting process is the test itself, which is in no
// cgroup the test created.
func (n *Netns) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var err error
		var d net.Dialer
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

func ipCmd(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("testenv: ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
