package testenv

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Container is a network namespace wired to a VM's namespace as Docker's
// bridge network wires a container: a veth pair with one end in each, an
// address on each end and the container's default route through the VM's
// end. Its processes run in its own cgroup, a child of the VM's group.
type Container struct {
	Netns  *Netns
	Cgroup *Cgroup
	// Addr is the container's address; Gateway the VM end's.
	Addr, Gateway netip.Addr
	// CgroupPath is Cgroup's path relative to the cgroup v2 mount, as
	// /proc/<pid>/cgroup shows it.
	CgroupPath string
}

// NewContainer creates a container below vm and parent: the VM end of the
// veth (named vmIf, unique in vm) gets gateway, the container end (eth0)
// gets addr, both with addr's prefix length. Everything is removed when
// the test ends.
func NewContainer(t testing.TB, vm *Netns, parent *Cgroup, vmIf string, gateway, addr netip.Prefix) *Container {
	t.Helper()
	ns := NewNetns(t)
	cg := parent.NewChild(t, uniqueName("container"))
	steps := [][]string{
		{"-n", vm.Name, "link", "add", vmIf, "type", "veth", "peer", "name", "eth0", "netns", ns.Name},
		{"-n", vm.Name, "addr", "add", gateway.String(), "dev", vmIf},
		{"-n", vm.Name, "link", "set", vmIf, "up"},
		{"-n", ns.Name, "addr", "add", addr.String(), "dev", "eth0"},
		{"-n", ns.Name, "link", "set", "eth0", "up"},
		{"-n", ns.Name, "route", "add", "default", "via", gateway.Addr().String()},
	}
	for _, args := range steps {
		if err := ipCmd(args...); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		// Deleting one end deletes the pair; the container's namespace
		// may already be gone, which takes the pair with it.
		_ = ipCmd("-n", vm.Name, "link", "del", vmIf)
	})
	mount, err := Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	return &Container{Netns: ns, Cgroup: cg, Addr: addr.Addr(), Gateway: gateway.Addr(),
		CgroupPath: "/" + strings.TrimPrefix(strings.TrimPrefix(cg.Path, mount), "/")}
}

// NewChild creates a uniquely named group below c and deletes it (killing
// anything left in it) when the test ends, before c itself.
func (c *Cgroup) NewChild(t testing.TB, name string) *Cgroup {
	t.Helper()
	if name == "" || strings.ContainsRune(name, '/') || name == "." || name == ".." {
		t.Fatalf("testenv: bad cgroup name %q", name)
	}
	p := filepath.Join(c.Path, name)
	if err := os.Mkdir(p, 0o755); err != nil {
		t.Fatal(fmt.Errorf("testenv: create cgroup: %w", err))
	}
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		_ = os.Remove(p)
		t.Fatal(fmt.Errorf("testenv: stat cgroup: %w", err))
	}
	child := &Cgroup{Path: p, ID: st.Ino}
	t.Cleanup(func() {
		if err := child.Delete(); err != nil {
			t.Errorf("delete cgroup: %v", err)
		}
	})
	return child
}
