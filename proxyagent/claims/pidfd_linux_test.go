package claims

import (
	"fmt"
	"os"
	"os/exec"
	"testing"

	"github.com/opengpa/gpa/internal/testsupport"
	"github.com/opengpa/gpa/proxyagent/identity"
)

// On the real /proc a cached image is pinned by a pidfd: served while its
// process lives, dropped (and the descriptor closed) once it has exited,
// and an exited process gets no cached identity.
func TestImageCachePinnedByPidfd(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	// Start returns during the exec, before the kernel has set the new
	// command line; a process that connects is always past that point.
	testsupport.WaitFor(t, "sleep's command line", func() bool {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", cmd.Process.Pid))
		return len(b) > 0
	})
	var r Resolver
	pid := uint32(cmd.Process.Pid)
	st, err := r.readStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	rec := identity.Record{PID: pid, UID: uint32(os.Getuid()), StartTime: st.StartTime, ExecID: 1, Comm: "sleep"}
	c, err := r.Resolve(rec, client)
	if err != nil || c.ProcessName != "sleep" || c.ProcessCmdLine != "sleep 60" {
		t.Fatalf("first resolve: %+v, %v", c, err)
	}
	img := r.images.get(mustKey(t, rec))
	if img == nil || img.pidfd < 0 {
		t.Fatalf("no pidfd for the cached image (pidfd_open is in every kernel the agent supports): %+v", img)
	}
	if c, _ := r.Resolve(rec, client); c.ProcessName != "sleep" {
		t.Fatalf("live process, cached: %+v", c)
	}

	cmd.Process.Kill()
	cmd.Wait() // reaped: the pidfd now says gone
	c, err = r.Resolve(rec, client)
	if err != nil || c.ProcessFullPath != "" || c.ProcessCmdLine != Undefined || c.ProcessName != "" {
		t.Fatalf("exited process: %+v, %v; want no /proc data (no cached identity)", c, err)
	}
	if n := r.images.len(); n != 0 {
		t.Errorf("%d images cached after the process exited, want 0", n)
	}
	if link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", img.pidfd)); err == nil && link == "anon_inode:[pidfd]" {
		t.Error("the dropped image's pidfd is still open")
	}
}

func mustKey(t *testing.T, rec identity.Record) imageKey {
	t.Helper()
	k, ok := imageKeyOf(rec)
	if !ok {
		t.Fatal("record not cacheable")
	}
	return k
}
