package testenv

import (
	"testing"

	"golang.org/x/sys/unix"
)

// NewBPFFS mounts a private bpffs instance on a new temporary directory and
// returns the directory. When the test ends it is unmounted, which also
// drops every pin left in it (and so detaches pinned links).
func NewBPFFS(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		SkipOrFail(t, "mount bpffs on %s: %v", dir, err)
		return ""
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount bpffs %s: %v", dir, err)
		}
	})
	return dir
}
