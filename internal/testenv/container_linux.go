package testenv

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
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

	vm   *Netns
	vmIf string
}

// CreateContainer creates a container below vm and parent: the VM end of
// the veth (named vmIf, unique in vm) gets gateway, the container end
// (eth0) gets addr, both with their prefix lengths, and the container's
// default route goes through gateway. The caller must Delete it.
func CreateContainer(vm *Netns, parent *Cgroup, vmIf string, gateway, addr netip.Prefix) (k *Container, err error) {
	mount, err := Cgroup2Mount()
	if err != nil {
		return nil, err
	}
	ns, err := CreateNetns(uniqueName("gpa-c"))
	if err != nil {
		return nil, err
	}
	k = &Container{Netns: ns, Addr: addr.Addr(), Gateway: gateway.Addr(), vm: vm, vmIf: vmIf}
	defer func() {
		if err != nil {
			_ = k.Delete()
		}
	}()
	if k.Cgroup, err = parent.CreateChild(uniqueName("container")); err != nil {
		return nil, err
	}
	k.CgroupPath = "/" + strings.TrimPrefix(strings.TrimPrefix(k.Cgroup.Path, mount), "/")
	for _, args := range [][]string{
		{"-n", vm.Name, "link", "add", vmIf, "type", "veth", "peer", "name", "eth0", "netns", ns.Name},
		{"-n", vm.Name, "addr", "add", gateway.String(), "dev", vmIf},
		{"-n", vm.Name, "link", "set", vmIf, "up"},
		{"-n", ns.Name, "addr", "add", addr.String(), "dev", "eth0"},
		{"-n", ns.Name, "link", "set", "eth0", "up"},
		{"-n", ns.Name, "route", "add", "default", "via", gateway.Addr().String()},
	} {
		if err := ipCmd(args...); err != nil {
			return nil, err
		}
	}
	return k, nil
}

// Delete kills the container's processes and removes its group, its veth
// pair and its namespace. Deleting twice is not an error.
func (k *Container) Delete() error {
	var errs []error
	if k.Cgroup != nil {
		errs = append(errs, k.Cgroup.Delete())
	}
	// Deleting one end deletes the pair (gone already if it was never made).
	_ = ipCmd("-n", k.vm.Name, "link", "del", k.vmIf)
	errs = append(errs, k.Netns.Delete())
	return errors.Join(errs...)
}

// NewContainer is CreateContainer for a test: it fails the test on error
// and deletes the container when the test ends.
func NewContainer(t testing.TB, vm *Netns, parent *Cgroup, vmIf string, gateway, addr netip.Prefix) *Container {
	t.Helper()
	k, err := CreateContainer(vm, parent, vmIf, gateway, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := k.Delete(); err != nil {
			t.Errorf("delete container: %v", err)
		}
	})
	return k
}

// CreateChild creates the group name below c. The caller must Delete it
// before c.
func (c *Cgroup) CreateChild(name string) (*Cgroup, error) {
	if name == "" || strings.ContainsRune(name, '/') || name == "." || name == ".." {
		return nil, fmt.Errorf("testenv: bad cgroup name %q", name)
	}
	return mkCgroup(filepath.Join(c.Path, name))
}
