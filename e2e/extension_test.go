package e2e

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/extension"
	"github.com/opengpa/gpa/handler"
	"github.com/opengpa/gpa/hostsim"
	"github.com/opengpa/gpa/internal/e2eenv"
	"github.com/opengpa/gpa/internal/testenv"
	"github.com/opengpa/gpa/internal/testsupport"
	"github.com/opengpa/gpa/internal/waagentsim"
	"github.com/opengpa/gpa/proxyagent/msp"
	"github.com/opengpa/gpa/proxyagent/status"
)

// wsEnforceIMDSAudit is the host's proxyAgentSettings for issue 5:
// WireServer in Enforce, IMDS in Audit.
const wsEnforceIMDSAudit = `{"enabled":true,"keyIncarnationId":1,"wireServer":{"mode":"Enforce"},"imds":{"mode":"Audit"}}`

// TestExtensionEndToEnd is issue 5's flow with the whole real system: the
// extension zip built by packaging/package.sh, installed and enabled by
// waagent (played by internal/waagentsim) with the handler commands running
// inside the namespace and the attached group as root, the real agent
// installed by the monitor under the supervisor, the monitor's aggregate
// status call going to the production address (redirected to the agent),
// the status file reaching success as waagent's parser reads it, signed
// traffic for an unprivileged and a root client, and uninstall stopping
// and removing everything.
func TestExtensionEndToEnd(t *testing.T) {
	if buildErr != nil {
		testenv.RequirePrivileged(t)
		t.Fatalf("building the binaries: %v", buildErr)
	}
	testenv.RequirePrivileged(t)
	if err := waagentsim.Available(); err != nil {
		testenv.SkipOrFail(t, "%v", err)
	}
	if _, err := exec.LookPath("zip"); err != nil {
		testenv.SkipOrFail(t, "zip (used by packaging/package.sh) not installed: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	root, err := e2eenv.ModuleRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	build := t.TempDir()
	ext, err := e2eenv.BuildExtension(ctx, root, build)
	if err != nil {
		t.Fatal(err)
	}
	zip, err := e2eenv.PackageExtension(ctx, root, "1.0.0", bins.Agent, ext, build)
	if err != nil {
		t.Fatal(err)
	}

	e := e2eenv.New(t, e2eenv.Config{Bin: bins, Settings: wsEnforceIMDSAudit, NoAgent: true})
	x, err := e.InstallExtension(e2eenv.ExtensionConfig{Zip: zip, Version: "1.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("extension logs:\n%s", x.LogTails(40))
		}
	})

	// Fresh install + enable, as waagent runs them.
	fresh := map[string]string{extension.EnvUninstallExitCode: "NOT_RUN"}
	for _, verb := range []string{"install", "enable"} {
		res, err := x.Run(ctx, verb, 0, fresh)
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode != 0 {
			t.Fatalf("%s exit %d: %s", verb, res.ExitCode, res.Output)
		}
		t.Logf("%s: exit 0 in %v", verb, res.Elapsed.Round(time.Millisecond))
	}

	waitCtx, waitCancel := context.WithTimeout(ctx, 45*time.Second)
	st, err := x.WaitStatus(waitCtx, 0, "success", 3)
	waitCancel()
	if err != nil {
		t.Fatal(err)
	}
	if st.Code != 0 || st.Operation != handler.OperationEnable {
		t.Errorf("status code %d operation %q, want 0 %q", st.Code, st.Operation, handler.OperationEnable)
	}
	wantNames := []string{handler.SubConnectionSummary, handler.SubAgentStatus, handler.SubFailedAuthSummary}
	for i, s := range st.Substatus {
		if s.Name != wantNames[i] {
			t.Errorf("substatus[%d] is %q, want %q", i, s.Name, wantNames[i])
		}
	}
	as, err := e2eenv.AgentStatus(st)
	if err != nil {
		t.Fatal(err)
	}
	key := latchedKey(t, e)
	if as.Status != status.Success || as.KeyLatchStatus.Status != status.Running || as.EbpfProgramStatus.Status != status.Running {
		t.Errorf("agent reports overall %s, keyLatch %s, ebpf %s; want SUCCESS RUNNING RUNNING", as.Status, as.KeyLatchStatus.Status, as.EbpfProgramStatus.Status)
	}
	if got := as.KeyLatchStatus.States["keyGuid"]; got != key {
		t.Errorf("reported keyGuid %q, host latched %q", got, key)
	}

	// The agent, supervisor and monitor all run from the VM root, inside
	// the attached group (so the monitor's call to 168.63.129.16 reached
	// the agent with root's claims).
	procs := x.Processes()
	if len(procs) < 3 {
		t.Errorf("processes under the VM root: %+v, want monitor, supervisor and agent", procs)
	}
	inGroup, err := e.Cgroup.Procs()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		if !slices.Contains(inGroup, p.PID) {
			t.Errorf("%s (pid %d) runs outside the attached group", p.Exe, p.PID)
		}
	}

	t.Run("NobodyIMDSSigned", func(t *testing.T) {
		id := newID(t)
		r := curl(ctx, t, e, e2eenv.Nobody, imdsURL, metadataTrue, idHeader(id))
		if r.Status != http.StatusOK || !r.Marked() {
			t.Fatalf("nobody's IMDS call: status %d marker %v, want 200 through the agent: %s", r.Status, r.Marked(), r.Body)
		}
		en := oneEntry(t, e, id)
		if en.Verdict != hostsim.VerdictValid || en.KeyGUID != key || en.Service != hostsim.IMDS || en.Status != http.StatusOK {
			t.Errorf("journal: %s verdict %q key %q status %d, want imds valid %q 200", en.Service, en.Verdict, en.KeyGUID, en.Status, key)
		}
		if claims := headerValues(en.Headers, msp.HeaderClaims); len(claims) != 1 || claims[0] != msp.ClaimsValue(false) {
			t.Errorf("claims %q, want [%q]", claims, msp.ClaimsValue(false))
		}
	})

	t.Run("RootWireServerSigned", func(t *testing.T) {
		id := newID(t)
		r := curl(ctx, t, e, e2eenv.Root, goalStateURL, wsVersion, idHeader(id))
		if r.Status != http.StatusOK || !r.Marked() {
			t.Fatalf("root's WireServer call: status %d marker %v, want 200 through the agent: %s", r.Status, r.Marked(), r.Body)
		}
		checkSigned(t, e, oneEntry(t, e, id), true)
	})

	loAddrs := func() string {
		out, err := e.Run(ctx, e2eenv.Root.Outside(), "ip", "-o", "addr", "show", "dev", "lo")
		if err != nil {
			t.Fatal(err)
		}
		return string(out.Stdout)
	}
	ca := msp.ContainerListenerAddr.Addr().String() + "/"
	if !strings.Contains(loAddrs(), ca) {
		t.Errorf("the running agent has not added its container listener address %s to lo", ca)
	}

	// Uninstall as waagent does it when the extension is removed.
	for _, verb := range []string{"disable", "uninstall"} {
		res, err := x.Run(ctx, verb, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode != 0 {
			t.Fatalf("%s exit %d: %s", verb, res.ExitCode, res.Output)
		}
	}
	testsupport.WaitFor(t, "every extension process to end after uninstall", func() bool { return len(x.Processes()) == 0 })
	if left, _ := e.Cgroup.Procs(); len(left) > 0 {
		t.Errorf("processes left in the attached group after uninstall: %v", left)
	}
	sup := &handler.Supervisor{Layout: x.Layout}
	if sup.Active() || sup.Enabled() {
		t.Errorf("service active=%v enabled=%v after uninstall", sup.Active(), sup.Enabled())
	}
	if _, err := os.Stat(x.Layout.UnitFile()); err == nil {
		t.Error("unit file left after uninstall")
	}

	// Uninstall also removes the pinned eBPF redirect, so the group's
	// connections go straight to the host again (where Enforce answers an
	// unsigned request 401) instead of being refused forever.
	if pins := x.Pins(); len(pins) != 0 {
		t.Fatalf("uninstall left pinned eBPF objects: %v", pins)
	}
	// ... and the container listener's address on lo.
	if lo := loAddrs(); strings.Contains(lo, ca) {
		t.Errorf("uninstall left the container listener address %s on lo: %s", ca, lo)
	}
	id := newID(t)
	r, err := e.Curl(ctx, e2eenv.Root, goalStateURL, wsVersion, idHeader(id))
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != 401 || r.Marked() {
		t.Errorf("after uninstall, root's WireServer call got HTTP %d (marked %v), want 401 from the host", r.Status, r.Marked())
	}
	if got := entriesWithID(t, e, id); len(got) != 1 || got[0].Verdict != hostsim.VerdictUnsigned {
		t.Errorf("after uninstall, journal for the direct request: %+v", got)
	}
}
