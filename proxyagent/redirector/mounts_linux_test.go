package redirector

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/opengpa/gpa/internal/testenv"
)

func TestEnsureBPFFS(t *testing.T) {
	// A directory outside DefaultBPFFS that is not on a bpffs is refused,
	// and nothing is created.
	dir := filepath.Join(t.TempDir(), "pins")
	err := ensureBPFFS(dir)
	if err == nil || !strings.Contains(err.Error(), "not on a bpffs") {
		t.Errorf("ensureBPFFS on tmp: %v, want not on a bpffs", err)
	}
	if _, serr := os.Stat(dir); !os.IsNotExist(serr) {
		t.Errorf("pin dir created despite error: %v", serr)
	}
	if err := ensureBPFFS("relative/pins"); err == nil {
		t.Error("relative pin dir accepted")
	}

	testenv.RequirePrivileged(t)
	dir = filepath.Join(testenv.NewBPFFS(t), "a", "b")
	if err := ensureBPFFS(dir); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		t.Errorf("pin dir not created: %v", err)
	}
}

func TestVerifierLogInError(t *testing.T) {
	testenv.RequirePrivileged(t)
	// A program that exits without setting R0 is rejected by the verifier.
	_, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.CGroupSockAddr,
		AttachType:   ebpf.AttachCGroupInet4Connect,
		Instructions: asm.Instructions{asm.Return()},
		License:      "GPL",
	})
	if err == nil {
		t.Fatal("verifier accepted a program that does not set R0")
	}
	got := withVerifierLog("load eBPF objects", err).Error()
	if !strings.Contains(got, "verifier log:") || !strings.Contains(got, "R0 !read_ok") {
		t.Errorf("error lacks the verifier log:\n%s", got)
	}
}
