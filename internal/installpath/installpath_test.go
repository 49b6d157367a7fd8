package installpath

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/opengpa/gpa/internal/testenv"
)

func TestMap(t *testing.T) {
	for _, tc := range []struct {
		abs  string
		ro   bool
		want string
	}{
		{AgentBinary, false, AgentBinary},
		{AgentBinary, true, "/opt/bin/azure-proxy-agent"},
		{LibDir + "/ebpf_cgroup.o", true, "/opt/azure-proxy-agent/ebpf_cgroup.o"},
		{UnitDir + "/azure-proxy-agent.service", true, "/etc/systemd/system/azure-proxy-agent.service"},
		{ManDir + "/azure-proxy-agent.8", true, "/opt/azure-proxy-agent/man8/azure-proxy-agent.8"},
		{"/usr/lib/azure-proxy-agentx/y", true, "/usr/lib/azure-proxy-agentx/y"},
		{"/etc/azure/proxy-agent.json", true, "/etc/azure/proxy-agent.json"},
		{"/var/lib/waagent", true, "/var/lib/waagent"},
	} {
		if got := Map(tc.abs, tc.ro); got != tc.want {
			t.Errorf("Map(%q, %v) = %q, want %q", tc.abs, tc.ro, got, tc.want)
		}
	}
}

// TestUsrReadOnly mounts a read-only tmpfs as a root's usr, as Flatcar's
// /usr partition is.
func TestUsrReadOnly(t *testing.T) {
	root := t.TempDir()
	usr := filepath.Join(root, "usr")
	if err := os.Mkdir(usr, 0o755); err != nil {
		t.Fatal(err)
	}
	if UsrReadOnly(root) {
		t.Error("a writable usr reads as read-only")
	}
	if UsrReadOnly(filepath.Join(root, "none")) {
		t.Error("a missing usr reads as read-only")
	}
	if err := syscall.Mount("tmpfs", usr, "tmpfs", syscall.MS_RDONLY, "size=1m"); err != nil {
		testenv.SkipOrFail(t, "mount a read-only tmpfs: %v", err)
		return
	}
	t.Cleanup(func() { syscall.Unmount(usr, syscall.MNT_DETACH) })
	if !UsrReadOnly(root) {
		t.Error("a read-only usr reads as writable")
	}
}

// TestReadOnlyLayout: an installation stays where it is whatever /usr is
// now; with none, a read-only /usr decides.
func TestReadOnlyLayout(t *testing.T) {
	put := func(root, p string) {
		full := filepath.Join(root, p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	fresh := t.TempDir()
	os.Mkdir(filepath.Join(fresh, "usr"), 0o755)
	if ReadOnlyLayout(fresh) {
		t.Error("nothing installed, writable usr: read-only layout")
	}
	opt := t.TempDir()
	put(opt, "opt/bin/azure-proxy-agent")
	if !ReadOnlyLayout(opt) {
		t.Error("installed under /opt/bin: not the read-only layout")
	}
	unitOnly := t.TempDir()
	put(unitOnly, "etc/systemd/system/azure-proxy-agent.service")
	if !ReadOnlyLayout(unitOnly) {
		t.Error("unit in /etc/systemd/system: not the read-only layout")
	}
	// Installed in /usr/sbin, and /usr read-only since (bound read-only
	// onto itself).
	root := t.TempDir()
	put(root, "usr/sbin/azure-proxy-agent")
	usr := filepath.Join(root, "usr")
	if err := syscall.Mount(usr, usr, "", syscall.MS_BIND, ""); err != nil {
		testenv.SkipOrFail(t, "bind mount: %v", err)
		return
	}
	t.Cleanup(func() { syscall.Unmount(usr, syscall.MNT_DETACH) })
	if err := syscall.Mount("", usr, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	if !UsrReadOnly(root) {
		t.Fatal("the read-only bind mount does not read as read-only")
	}
	if ReadOnlyLayout(root) {
		t.Error("installed in /usr/sbin, /usr read-only since: read-only layout")
	}
}
