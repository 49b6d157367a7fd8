package testenv

import (
	"os"
	"path/filepath"
	"testing"
)

// System describes a machine for NewSystemRoot. The zero value of a field
// leaves its file out.
type System struct {
	// OSRelease is the content of etc/os-release.
	OSRelease string
	// Kernel is proc/sys/kernel/osrelease (e.g. "6.1.0-18-amd64").
	Kernel string
	// Mounts is proc/mounts.
	Mounts string
	// BTF creates sys/kernel/btf/vmlinux.
	BTF bool
	// Lockdown is sys/kernel/security/lockdown (e.g. "none [integrity] confidentiality").
	Lockdown string
	// KernelConfig is boot/config-<Kernel>.
	KernelConfig string
	// NetTCP and NetTCP6 are proc/net/tcp and proc/net/tcp6.
	NetTCP, NetTCP6 string
}

// Mount lines for System.Mounts.
const (
	MountsUnified = "sysfs /sys sysfs rw 0 0\nproc /proc proc rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec 0 0\nbpf /sys/fs/bpf bpf rw,mode=700 0 0\n"
	MountsHybrid  = "sysfs /sys sysfs rw 0 0\ntmpfs /sys/fs/cgroup tmpfs ro 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\ncgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
	MountsV1Only  = "sysfs /sys sysfs rw 0 0\ntmpfs /sys/fs/cgroup tmpfs ro 0 0\ncgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\ncgroup /sys/fs/cgroup/systemd cgroup rw,name=systemd 0 0\n"
)

// Debian12 is a Debian 12 machine as Azure's image has it: kernel 6.1,
// cgroup v2, BTF, lockdown off.
var Debian12 = System{
	OSRelease: "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n",
	Kernel:    "6.1.0-18-cloud-amd64",
	Mounts:    MountsUnified,
	BTF:       true,
	Lockdown:  "[none] integrity confidentiality\n",
}

// NewSystemRoot writes the files of s under a new temporary directory
// (removed when the test ends) and returns it, for code that reads procfs,
// sysfs and os-release below a configurable root.
func NewSystemRoot(t testing.TB, s System) string {
	t.Helper()
	root := t.TempDir()
	write := func(rel, content string) {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if s.OSRelease != "" {
		write("etc/os-release", s.OSRelease)
	}
	if s.Kernel != "" {
		write("proc/sys/kernel/osrelease", s.Kernel+"\n")
	}
	if s.Mounts != "" {
		write("proc/mounts", s.Mounts)
	}
	if s.BTF {
		write("sys/kernel/btf/vmlinux", "\x9f\xeb\x01\x00")
	}
	if s.Lockdown != "" {
		write("sys/kernel/security/lockdown", s.Lockdown)
	}
	if s.KernelConfig != "" && s.Kernel != "" {
		write("boot/config-"+s.Kernel, s.KernelConfig)
	}
	if s.NetTCP != "" {
		write("proc/net/tcp", s.NetTCP)
	}
	if s.NetTCP6 != "" {
		write("proc/net/tcp6", s.NetTCP6)
	}
	return root
}
