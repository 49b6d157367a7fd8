package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opengpa/gpa/internal/testenv"
	"github.com/opengpa/gpa/proxyagent/doctor"
)

// TestDoctorCommand: on a crafted machine with cgroup v1 only and nothing
// installed, doctor exits 1 and its JSON names the missing prerequisite
// with its fix; --config is honoured; a stray argument is a usage error.
func TestDoctorCommand(t *testing.T) {
	sys := testenv.Debian12
	sys.Mounts = testenv.MountsV1Only
	sysRoot := testenv.NewSystemRoot(t, sys)
	installRoot := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "agent.json")
	os.WriteFile(cfg, []byte(`{"listenAddress": "0.0.0.0:3080"}`), 0o644)

	code, out, errOut := run("--config", cfg, "doctor", "--json", "--root", installRoot, "--system-root", sysRoot)
	if code != 1 {
		t.Fatalf("exit %d, want 1; stderr %s", code, errOut)
	}
	var r doctor.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	got := map[string]doctor.Finding{}
	for _, f := range r.Findings {
		got[f.ID] = f
	}
	if f := got["prereq.cgroup2"]; f.Severity != doctor.Fail || !strings.Contains(f.Fix, "systemd.unified_cgroup_hierarchy=1") {
		t.Errorf("prereq.cgroup2 %+v", f)
	}
	if f := got["listener.loopback"]; f.Severity != doctor.Fail || !strings.Contains(f.Message, "not a loopback address") {
		t.Errorf("listener.loopback %+v (the --config file was not used?)", f)
	}
	if f := got["file.binary"]; f.Severity != doctor.Fail || !strings.Contains(f.Message, filepath.Join(installRoot, "usr/sbin/azure-proxy-agent")) {
		t.Errorf("file.binary %+v (--root not used?)", f)
	}

	code, out, _ = run("doctor", "--root", installRoot, "--system-root", sysRoot)
	if code != 1 || !strings.Contains(out, "FAIL    prereq.cgroup2") || !strings.Contains(out, "fix: boot with systemd.unified_cgroup_hierarchy=1") {
		t.Errorf("text: exit %d\n%s", code, out)
	}
	if code, _, errOut := run("doctor", "extra"); code != 2 || !strings.Contains(errOut, "extra") {
		t.Errorf("stray argument: exit %d %q", code, errOut)
	}
}
