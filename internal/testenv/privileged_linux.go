package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// RequirePrivileged returns only if the test can create network namespaces,
// cgroups and bpffs mounts: it needs root, a cgroup v2 mount and the ip(8)
// tool. Otherwise it skips (or fails under CI, see SkipOrFail). With -short
// it always skips: -short selects the tests that need neither root nor the
// kernel.
func RequirePrivileged(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("privileged test skipped in -short mode")
		return
	}
	if os.Geteuid() != 0 {
		SkipOrFail(t, "privileged test needs root (euid is %d)", os.Geteuid())
		return
	}
	if _, err := Cgroup2Mount(); err != nil {
		SkipOrFail(t, "privileged test needs cgroup v2: %v", err)
		return
	}
	if _, err := exec.LookPath("ip"); err != nil {
		SkipOrFail(t, "privileged test needs ip(8) from iproute2: %v", err)
		return
	}
}
