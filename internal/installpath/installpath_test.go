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
