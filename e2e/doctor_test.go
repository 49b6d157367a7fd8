package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opengpa/gpa/proxyagent/status"

	"github.com/opengpa/gpa/internal/e2eenv"
	"github.com/opengpa/gpa/internal/testsupport"
	"github.com/opengpa/gpa/proxyagent/doctor"
)

// TestDoctorRunningAgent runs `azure-proxy-agent doctor --json` inside the
// namespace of a real, provisioned agent: the redirect is pinned and
// attached to the agent's cgroup, the listener is on loopback only, the
// key is latched and the status fresh, and nothing fails. With the agent
// stopped the listener check fails (exit 1) while the redirect stays
// pinned, as the agent promises.
func TestDoctorRunningAgent(t *testing.T) {
	e := newEnv(t, "")
	// An installation root with the binary and unit as the extension
	// installs them.
	root := t.TempDir()
	for _, f := range []struct {
		src, dst string
		mode     os.FileMode
	}{{bins.Agent, "usr/sbin/azure-proxy-agent", 0o755}, {"../packaging/azure-proxy-agent.service", "usr/lib/systemd/system/azure-proxy-agent.service", 0o644}} {
		data, err := os.ReadFile(f.src)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(root, f.dst)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, f.mode); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	run := func() (int, map[string]doctor.Finding) {
		t.Helper()
		res, err := e.Run(ctx, e2eenv.Root, bins.Agent, "--config", e.AgentConfigPath, "doctor", "--json", "--root", root)
		if err != nil {
			t.Fatal(err)
		}
		var r doctor.Report
		if err := json.Unmarshal(res.Stdout, &r); err != nil {
			t.Fatalf("%v: %s %s", err, res.Stdout, res.Stderr)
		}
		m := map[string]doctor.Finding{}
		for _, f := range r.Findings {
			if old, ok := m[f.ID]; !ok || old.Severity == doctor.OK {
				m[f.ID] = f
			}
		}
		t.Logf("doctor exit %d: %s", res.ExitCode, res.Stdout)
		return res.ExitCode, m
	}

	// status.json follows the agent's state a moment after provisioning.
	testsupport.WaitForCtx(t, ctx, "status.json to show SUCCESS", func() bool {
		st, err := e.StatusFile()
		return err == nil && st.ProxyAgentStatus.Status == status.Success
	})
	code, got := run()
	if code != 0 {
		t.Errorf("doctor exit %d with a running agent", code)
	}
	for _, id := range []string{"prereq.kernel", "prereq.cgroup2", "prereq.btf", "config", "file.binary", "file.unit", "file.keys", "file.key",
		"redirect.pinned", "redirect.attached", "listener.loopback", "status.fresh", "status.agent", "key.latched", "logs.writable"} {
		if f := got[id]; f.Severity != doctor.OK {
			t.Errorf("%s: %+v, want ok", id, f)
		}
	}
	for id, f := range got {
		if f.Severity == doctor.Fail {
			t.Errorf("failure %s: %+v", id, f)
		}
	}

	if err := e.StopAgent(); err != nil {
		t.Fatal(err)
	}
	code, got = run()
	if code != 1 || got["listener.loopback"].Severity != doctor.Fail {
		t.Errorf("agent stopped: exit %d, listener %+v", code, got["listener.loopback"])
	}
	for _, id := range []string{"redirect.pinned", "redirect.attached"} {
		if got[id].Severity != doctor.OK {
			t.Errorf("agent stopped: %s %+v, want the redirect still pinned and attached", id, got[id])
		}
	}
}
