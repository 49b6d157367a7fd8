package e2eenv

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opengpa/gpa/internal/testenv"
)

func TestCleanEnvDropsProxies(t *testing.T) {
	for _, k := range []string{"http_proxy", "HTTPS_PROXY", "all_proxy", "NO_PROXY"} {
		t.Setenv(k, "http://proxy.invalid:3128")
	}
	t.Setenv("GPA_E2EENV_KEEP", "1")
	env := cleanEnv()
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasSuffix(strings.ToLower(k), "_proxy") {
			t.Errorf("cleanEnv kept %s", kv)
		}
	}
	if !slices.Contains(env, "GPA_E2EENV_KEEP=1") {
		t.Errorf("cleanEnv dropped an unrelated variable")
	}
}

func TestModuleRoot(t *testing.T) {
	root, err := ModuleRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !strings.Contains(string(b), "module github.com/opengpa/gpa") {
		t.Errorf("ModuleRoot = %s, go.mod: %v", root, err)
	}
	if _, err := ModuleRoot("/"); err == nil {
		t.Errorf("ModuleRoot(/) found a go.mod")
	}
}

func TestSetupRequiresBinaries(t *testing.T) {
	if _, err := Setup(context.Background(), Config{}); err == nil {
		t.Fatal("Setup without binaries succeeded")
	}
}

// TestSetupServeClose starts the real environment, checks one redirected
// call, and checks that Close leaves nothing behind: no processes, group,
// bpffs mount, namespace or directory.
func TestSetupServeClose(t *testing.T) {
	testenv.RequirePrivileged(t)
	root, err := ModuleRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bin, err := Build(ctx, root, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e, err := Setup(ctx, Config{Bin: bin})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			e.Close()
		}
	})
	if code, out, err := e.WaitProvisioned(ctx, 30*time.Second); err != nil || code != 0 {
		t.Fatalf("WaitProvisioned: %d %v %s\n%s", code, err, out, e.LogTails(40))
	}
	r, err := e.Curl(ctx, Nobody, "http://169.254.169.254/metadata/instance?api-version=2021-02-01", "Metadata: true")
	if err != nil || r.Status != http.StatusOK || !r.Marked() {
		t.Fatalf("IMDS through the agent: %v status %d marked %v: %s", err, r.Status, r.Marked(), r.Stderr)
	}
	if r.PID <= 0 {
		t.Errorf("Curl reported pid %d", r.PID)
	}
	agentPID := e.AgentPID()
	if agentPID == 0 {
		t.Fatal("AgentPID = 0 while running")
	}

	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	if err := e.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := syscall.Kill(agentPID, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("agent pid %d still exists after Close: %v", agentPID, err)
	}
	for _, p := range []string{e.Netns.Path, e.Cgroup.Path, e.Dir} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists after Close: %v", p, err)
		}
	}
	mounts, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), e.BPFFS) {
		t.Errorf("bpffs %s still mounted after Close", e.BPFFS)
	}
	if err := e.StartAgent(); err == nil {
		t.Errorf("StartAgent after Close succeeded")
	}
}
