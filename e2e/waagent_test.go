package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/handler"
	"github.com/opengpa/gpa/hostsim"
	"github.com/opengpa/gpa/internal/e2eenv"
	"github.com/opengpa/gpa/internal/testenv"
	"github.com/opengpa/gpa/proxyagent/status"
)

// Host settings for the real-waagent test: Audit first (the host serves
// waagent's unsigned requests until the agent has latched a key), then
// Enforce; Disabled as ARM sends it when the extension is removed.
const (
	waAuditSettings   = `{"enabled":true,"keyIncarnationId":1,"wireServer":{"mode":"Audit"},"imds":{"mode":"Audit"}}`
	waEnforceSettings = `{"enabled":true,"keyIncarnationId":1,"wireServer":{"mode":"Enforce"},"imds":{"mode":"Enforce"}}`
)

// vmModel is an ARM VM model with the ProxyAgent extension resource (nil
// settings: none) or, with version "", without it.
func vmModel(proxyAgentSettings string, version string, settings map[string]any) map[string]any {
	m := map[string]any{"properties": map[string]any{"securityProfile": map[string]any{
		"proxyAgentSettings": json.RawMessage(proxyAgentSettings)}}, "resources": []any{}}
	if version != "" {
		props := map[string]any{"publisher": "Microsoft.CPlat.ProxyAgent", "type": "ProxyAgentLinux",
			"typeHandlerVersion": version, "autoUpgradeMinorVersion": true}
		if settings != nil {
			props["settings"] = settings
		}
		m["resources"] = []any{map[string]any{"name": "ProxyAgentLinux", "type": hostsim.ExtensionResourceType, "properties": props}}
	}
	return m
}

// extView returns the ProxyAgent extension's instance view and handler
// status (ok false when either is missing).
func extView(iv hostsim.InstanceView) (hostsim.ExtensionInstanceView, hostsim.HandlerInstanceView, bool) {
	var ev hostsim.ExtensionInstanceView
	var hv hostsim.HandlerInstanceView
	okE, okH := false, false
	for _, x := range iv.Extensions {
		if x.Type == handler.HandlerName {
			ev, okE = x, true
		}
	}
	if iv.VMAgent != nil {
		for _, h := range iv.VMAgent.ExtensionHandlers {
			if h.Type == handler.HandlerName {
				hv, okH = h, true
			}
		}
	}
	return ev, hv, okE && okH
}

// healthyView is what a user must see for a healthy extension of version:
// extension status succeeded with code 0 and the success message, three
// substatuses with the agent reporting SUCCESS and keyLatch and eBPF
// RUNNING, and the handler Ready with code 0.
func healthyView(iv hostsim.InstanceView, version string) (status.AgentStatus, bool) {
	var as status.AgentStatus
	ev, hv, ok := extView(iv)
	if !ok || ev.TypeHandlerVersion != version || hv.TypeHandlerVersion != version || len(ev.Statuses) != 1 || len(ev.Substatuses) != 3 {
		return as, false
	}
	st := ev.Statuses[0]
	if st.Code != "ProvisioningState/succeeded" || st.Message != handler.SuccessMessage ||
		hv.Status.Code != "ProvisioningState/succeeded" || hv.Status.DisplayStatus != "Ready" {
		return as, false
	}
	if json.Unmarshal([]byte(ev.Substatuses[1].Message), &as) != nil {
		return as, false
	}
	return as, as.Version == version && as.Status == status.Success &&
		as.KeyLatchStatus.Status == status.Running && as.EbpfProgramStatus.Status == status.Running
}

// TestRealWaagent drives the extension with the real, unmodified Azure
// Linux Agent (Debian's waagent, `waagent -run-exthandlers`) against the
// host simulator's fabric: ARM adds the extension, waagent downloads,
// installs and enables it, and the instance view shows success without a
// heartbeat error at any time; then a settings change, an upgrade
// 0.1.0 → 0.1.1 through a new goal state, a waagent restart, and removal
// (with proxyAgentSettings disabled) that leaves nothing running.
func TestRealWaagent(t *testing.T) {
	testenv.RequirePrivileged(t)
	if buildErr != nil {
		t.Fatalf("building the binaries: %v", buildErr)
	}
	if err := e2eenv.WaagentAvailable(); err != nil {
		testenv.SkipOrFail(t, "%v", err)
	}
	waVersion, err := e2eenv.WaagentVersion()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("waagent %s (%s)", waVersion, e2eenv.WaagentScript)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	root, err := e2eenv.ModuleRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	build := t.TempDir()
	zips := map[string]string{}
	for _, v := range []string{"0.1.0", "0.1.1"} {
		agent, ext, err := e2eenv.BuildVersion(ctx, root, build, v)
		if err != nil {
			t.Fatal(err)
		}
		if zips[v], err = e2eenv.PackageExtension(ctx, root, v, agent, ext, filepath.Join(build, v)); err != nil {
			t.Fatal(err)
		}
	}

	e := e2eenv.New(t, e2eenv.Config{Bin: bins, Settings: waAuditSettings, NoAgent: true})
	w, err := e.NewWaagent(e2eenv.WaagentConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("waagent:\n%s", w.LogTail(80))
			for _, p := range []string{filepath.Join(w.ExtLogDir, handler.HandlerName, handler.HandlerLogName),
				filepath.Join(w.ExtLogDir, handler.HandlerName, handler.MonitorLogName)} {
				b, _ := os.ReadFile(p)
				lines := strings.Split(string(b), "\n")
				if len(lines) > 30 {
					lines = lines[len(lines)-30:]
				}
				t.Logf("--- %s\n%s", p, strings.Join(lines, "\n"))
			}
		}
		w.Stop()
	})
	if err := e.PublishPackage(ctx, "0.1.0", zips["0.1.0"]); err != nil {
		t.Fatal(err)
	}

	// A healthy extension never shows a handler error (waagent keeps one
	// until the next enable, so polling sees it).
	var handlerErrors []string
	noHandlerError := func(iv hostsim.InstanceView) {
		if _, hv, ok := extView(iv); ok && (hv.Status.Code != "ProvisioningState/succeeded" || strings.Contains(hv.Status.Message, "heart")) {
			handlerErrors = append(handlerErrors, hv.Status.Code+": "+hv.Status.Message)
		}
	}
	waitHealthy := func(t *testing.T, what, version string, extra func(hostsim.InstanceView) bool) status.AgentStatus {
		t.Helper()
		wctx, wcancel := context.WithTimeout(ctx, 90*time.Second)
		defer wcancel()
		start := time.Now()
		var as status.AgentStatus
		_, err := w.WaitInstanceView(wctx, func(iv hostsim.InstanceView) bool {
			noHandlerError(iv)
			var ok bool
			as, ok = healthyView(iv, version)
			return ok && (extra == nil || extra(iv))
		})
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		t.Logf("%s: instance view healthy after %v", what, time.Since(start).Round(100*time.Millisecond))
		return as
	}

	// 1. ARM adds the extension; waagent installs and enables it.
	if _, err := e.SetVM(ctx, vmModel(waAuditSettings, "0.1", nil)); err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	as := waitHealthy(t, "install", "0.1.0", nil)
	if got := as.KeyLatchStatus.States["secureChannelState"]; !strings.Contains(got, "WireServer Audit") {
		t.Errorf("secureChannelState %q", got)
	}
	log := w.Log()
	for _, want := range []string{"[" + handler.HandlerName + "-0.1.0]", "install.sh", "enable.sh"} {
		if !strings.Contains(log, want) {
			t.Errorf("waagent's log does not mention %q", want)
		}
	}

	// 2. The host switches to Enforce: waagent keeps working, signed.
	if err := e.SetSettings(ctx, waEnforceSettings); err != nil {
		t.Fatal(err)
	}
	since, err := e.LastSeq(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// 3. A settings change: a new sequence number, enabled again.
	if _, err := e.SetVM(ctx, vmModel(waEnforceSettings, "0.1", map[string]any{"note": "settings change"})); err != nil {
		t.Fatal(err)
	}
	waitHealthy(t, "settings change", "0.1.0", func(hostsim.InstanceView) bool {
		_, err := os.Stat(filepath.Join(w.HandlerDir("0.1.0"), "status", "1.status"))
		return err == nil
	})
	checkAllSigned(t, e, since, false)

	// 4. An upgrade 0.1.0 → 0.1.1 through a new goal state.
	if err := e.PublishPackage(ctx, "0.1.1", zips["0.1.1"]); err != nil {
		t.Fatal(err)
	}
	if _, err := e.SetVM(ctx, vmModel(waEnforceSettings, "0.1", map[string]any{"note": "settings change"})); err != nil {
		t.Fatal(err)
	}
	waitHealthy(t, "upgrade", "0.1.1", func(hostsim.InstanceView) bool {
		for _, p := range w.Processes() {
			if strings.HasPrefix(p.Exe, w.HandlerDir("0.1.0")+"/") {
				return false // the old monitor still runs
			}
		}
		return true
	})

	// 5. waagent restarts; the extension stays healthy through new uploads.
	iv, err := e.InstanceView(ctx)
	if err != nil {
		t.Fatal(err)
	}
	uploads := iv.StatusUploads
	if err := w.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	waitHealthy(t, "waagent restart", "0.1.1", func(iv hostsim.InstanceView) bool { return iv.StatusUploads >= uploads+2 })
	checkAllSigned(t, e, since, true)

	// 6. ARM removes the extension and disables the proxy agent settings.
	if _, err := e.SetVM(ctx, vmModel(`{"enabled":false}`, "", nil)); err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(ctx, 90*time.Second)
	defer rcancel()
	if _, err := w.WaitInstanceView(rctx, func(iv hostsim.InstanceView) bool {
		_, _, present := extView(iv)
		_, err := os.Stat(w.HandlerDir("0.1.1"))
		return !present && os.IsNotExist(err) && len(w.Processes()) == 0 && len(w.Pins()) == 0
	}); err != nil {
		t.Fatalf("removal: %v; still running: %+v; pinned: %q", err, w.Processes(), w.Pins())
	}
	if len(handlerErrors) > 0 {
		t.Errorf("the instance view showed handler errors for a healthy extension: %q", handlerErrors)
	}

	// The monitor never asked the WireServer address for the aggregate
	// status while the agent had no WireServer redirect — before the first
	// key latch, and at removal, when the agent drops the redirect before
	// status.json says so (the monitor asks the kernel's pinned policy
	// right before each call): nothing of it reached the host.
	all, err := e.Journal(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range all {
		if strings.Contains(en.Target, "gpa-aggregated-status") {
			t.Errorf("journal: %s %s reached the host (verdict %s, mode %s)", en.Method, en.Target, en.Verdict, en.Mode)
		}
	}
}

// checkAllSigned fails when the host served or refused an unsigned or
// badly signed request since journal entry since (the host is in Enforce,
// so everything waagent and the extension sent went through the agent),
// and, with wantUpload, when no signed status upload arrived.
func checkAllSigned(t *testing.T, e *e2eenv.Env, since uint64, wantUpload bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	entries, err := e.Journal(ctx, since)
	if err != nil {
		t.Fatal(err)
	}
	n, statusPuts := 0, 0
	for _, en := range entries {
		if en.Service == hostsim.HostGA && en.Method == http.MethodPut && en.Target == "/status" && en.Verdict == hostsim.VerdictValid {
			statusPuts++
		}
		switch en.Verdict {
		case hostsim.VerdictValid:
			n++
		case hostsim.VerdictExempt, hostsim.VerdictNotRequired:
		default:
			t.Errorf("journal: %s %s %s verdict %s status %d", en.Service, en.Method, en.Target, en.Verdict, en.Status)
		}
		if en.Status == http.StatusUnauthorized {
			t.Errorf("journal: %s %s %s refused", en.Service, en.Method, en.Target)
		}
	}
	if n == 0 || wantUpload && statusPuts == 0 {
		t.Errorf("%d signed requests, %d signed status uploads (HostGAPlugin PUT /status) reached the host", n, statusPuts)
	}
	t.Logf("%d requests since the switch to Enforce, %d signed, %d of them status uploads", len(entries), n, statusPuts)
}
