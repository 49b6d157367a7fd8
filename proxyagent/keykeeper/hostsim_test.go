package keykeeper

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/opengpa/gpa/hostsim"
	"github.com/opengpa/gpa/internal/simtest"
	"github.com/opengpa/gpa/internal/testsupport"
	"github.com/opengpa/gpa/proxyagent/msp"
	"github.com/opengpa/gpa/proxyagent/status"
)

func startSim(t *testing.T, version string) *hostsim.Sim {
	t.Helper()
	return simtest.Start(t, hostsim.Config{StatusVersion: version, IMDSRateLimit: -1})
}

func enforce(t *testing.T, sim *hostsim.Sim, ws, imds string) {
	t.Helper()
	on := true
	s := hostsim.ProxyAgentSettings{Enabled: &on, WireServer: &hostsim.HostEndpointSettings{Mode: ws}}
	if imds != "" {
		s.IMDS = &hostsim.HostEndpointSettings{Mode: imds}
	}
	if err := sim.SetSettings(s); err != nil {
		t.Fatal(err)
	}
}

func disable(t *testing.T, sim *hostsim.Sim) {
	t.Helper()
	off := false
	if err := sim.SetSettings(hostsim.ProxyAgentSettings{Enabled: &off}); err != nil {
		t.Fatal(err)
	}
}

// secureChannelCalls counts journal entries by kind.
func secureChannelCalls(sim *hostsim.Sim) (keys, attests []hostsim.Entry) {
	for _, e := range sim.Journal().Entries() {
		switch {
		case e.Method == "POST" && e.Target == msp.KeyPath:
			keys = append(keys, e)
		case e.Method == "POST" && strings.HasSuffix(e.Target, "/key-attestation"):
			attests = append(attests, e)
		}
	}
	return keys, attests
}

// latch runs a keeper against sim (already enforcing) until it latches.
func latch(t *testing.T, sim *hostsim.Sim, dir string) *harness {
	t.Helper()
	h := startKeeper(t, sim.Addrs().WireServer, dir, nil)
	testsupport.WaitFor(t, "key latched", func() bool {
		g, ok := sim.LatchedKeyGUID()
		return ok && h.kk.Key() != nil && h.kk.Key().GUID == g
	})
	return h
}

// Conformance item 15: disabled host ⇒ no key; enforce ⇒ exactly one 0600
// key file and a signed attestation the host verifies.
func TestDisabledThenEnforceLatchesOneKey(t *testing.T) {
	sim := startSim(t, hostsim.StatusV1)
	dir := filepath.Join(t.TempDir(), "keys")
	h := startKeeper(t, sim.Addrs().WireServer, dir, nil)

	testsupport.WaitFor(t, "disabled state", func() bool { return h.kk.State() == msp.StateDisabled })
	testsupport.WaitFor(t, "key_latched for disabled", func() bool { l, _, _ := h.prov.counts(); return l >= 1 })
	if h.kk.Key() != nil {
		t.Fatal("key in memory while disabled")
	}
	if files := keyFiles(t, dir); len(files) != 0 {
		t.Fatalf("key files while disabled: %v", files)
	}
	if !strings.HasPrefix(h.kk.Status().Message, "Customer has not enforce the secure channel state. - ") {
		t.Errorf("message %q", h.kk.Status().Message)
	}
	if m := fileMode(t, dir); m != 0o700 {
		t.Errorf("key dir mode %v, want 0700", m)
	}
	if fi, err := os.Stat(filepath.Join(filepath.Dir(dir), "rules")); err != nil || !fi.IsDir() {
		t.Errorf("rules dir not created: %v", err)
	}

	enforce(t, sim, "Enforce", "")
	testsupport.WaitFor(t, "key latched", func() bool {
		g, ok := sim.LatchedKeyGUID()
		return ok && h.kk.Key() != nil && h.kk.Key().GUID == g
	})
	testsupport.WaitFor(t, "state wireserver", func() bool { return h.kk.State() == "wireserver" })
	guid := h.kk.Key().GUID

	files := keyFiles(t, dir)
	if len(files) != 1 || filepath.Base(files[0]) != guid+".key" {
		t.Fatalf("key files %v, want exactly %s.key", files, guid)
	}
	if m := fileMode(t, files[0]); m != 0o600 {
		t.Errorf("key file mode %v, want 0600", m)
	}
	if tmp, _ := filepath.Glob(filepath.Join(dir, "*.tmp")); len(tmp) != 0 {
		t.Errorf("temporary files left: %v", tmp)
	}

	keys, attests := secureChannelCalls(sim)
	if len(keys) != 1 || len(attests) != 1 {
		t.Fatalf("host saw %d key requests and %d attestations, want 1 and 1", len(keys), len(attests))
	}
	a := attests[0]
	if a.Verdict != hostsim.VerdictValid || a.KeyGUID != guid || a.Status != 200 {
		t.Errorf("attestation verdict %s guid %s status %d", a.Verdict, a.KeyGUID, a.Status)
	}
	var names []string
	got := map[string]string{}
	for _, f := range a.Headers {
		n := strings.ToLower(f.Name)
		names = append(names, n)
		got[n] = f.Value
	}
	sort.Strings(names)
	want := []string{"content-length", "host", "metadata", msp.HeaderAuthorization, msp.HeaderClaims, msp.HeaderDate}
	sort.Strings(want)
	if strings.Join(names, ",") != strings.Join(want, ",") {
		t.Errorf("attestation headers %v, want exactly %v", names, want)
	}
	if got[msp.HeaderClaims] != `{ "isRoot": "true"}` || got["content-length"] != "0" ||
		strings.TrimSpace(got["metadata"]) != "True" || strings.Contains(got["host"], ":") {
		t.Errorf("attestation header values %v", got)
	}

	// The file is upstream's pretty JSON in field order and matches memory.
	data, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	order := []string{`"authorizationScheme"`, `"guid"`, `"issued"`, `"key"`}
	for i := 1; i < len(order); i++ {
		if strings.Index(text, order[i-1]) > strings.Index(text, order[i]) || !strings.Contains(text, "\n  ") {
			t.Fatalf("key file not pretty JSON in upstream order:\n%s", text)
		}
	}
	sk, err := msp.ParseIssuedKey(data)
	if err != nil || sk.GUID != guid {
		t.Fatalf("key file: %v", err)
	}

	st := h.kk.Status()
	if st.Status != status.Running || !strings.HasPrefix(st.Message, "Successfully attest the key and ready to use. - ") {
		t.Errorf("status %+v", st)
	}
	if st.States["keyGuid"] != guid || st.States["secureChannelState"] != "wireserver" {
		t.Errorf("states %v", st.States)
	}
	// v1 "wireserver": WS enforce, IMDS audit, HGAP enforce ⇒ all redirected.
	if p, _ := h.redir.last(); p != [3]bool{true, true, true} {
		t.Errorf("redirect policy %v", p)
	}
	// Once the host reports the GUID, no further key requests are made.
	n := len(sim.Journal().Entries())
	testsupport.WaitFor(t, "more polls", func() bool { return len(sim.Journal().Entries()) > n+5 })
	if keys, _ := secureChannelCalls(sim); len(keys) != 1 {
		t.Errorf("%d key requests after latch, want 1", len(keys))
	}
	// The key never appears in logs or status.
	if strings.Contains(strings.ToUpper(h.logs.String()), strings.ToUpper(sk.Key)) {
		t.Error("key hex in logs")
	}
	js, _ := json.Marshal(st)
	if strings.Contains(strings.ToUpper(string(js)), strings.ToUpper(sk.Key)) {
		t.Error("key hex in status")
	}
}

// Conformance item 16: a restart reloads the saved key without acquiring
// or attesting.
func TestRestartReloadsLocalKey(t *testing.T) {
	sim := startSim(t, hostsim.StatusV2)
	enforce(t, sim, "Enforce", "Enforce")
	dir := filepath.Join(t.TempDir(), "keys")
	h := latch(t, sim, dir)
	guid := h.kk.Key().GUID
	h.stop()
	keysBefore, attestsBefore := secureChannelCalls(sim)

	h2 := startKeeper(t, sim.Addrs().WireServer, dir, nil)
	testsupport.WaitFor(t, "key reloaded", func() bool { return h2.kk.Key() != nil })
	if h2.kk.Key().GUID != guid {
		t.Fatalf("reloaded %s, want %s", h2.kk.Key().GUID, guid)
	}
	if !strings.HasPrefix(h2.kk.Status().Message, "Found key details from local and ready to use. - ") {
		t.Errorf("message %q", h2.kk.Status().Message)
	}
	// The milestone also goes to the console (Options.Startup), once.
	if got := h2.startup.String(); strings.Count(got, "\n") != 1 || !strings.HasPrefix(got, "Found key details from local and ready to use. - ") {
		t.Errorf("start-up milestones %q", got)
	}
	if got := h.startup.String(); !strings.HasPrefix(got, "Successfully attest the key and ready to use. - ") {
		t.Errorf("first keeper's start-up milestones %q", got)
	}
	n := len(sim.Journal().Entries())
	testsupport.WaitFor(t, "more polls", func() bool { return len(sim.Journal().Entries()) > n+3 })
	keys, attests := secureChannelCalls(sim)
	if len(keys) != len(keysBefore) || len(attests) != len(attestsBefore) {
		t.Errorf("restart made %d key and %d attestation calls", len(keys)-len(keysBefore), len(attests)-len(attestsBefore))
	}
	if l, _, _ := h2.prov.counts(); l < 1 {
		t.Error("key_latched not called on reload")
	}
	if len(keyFiles(t, dir)) != 1 {
		t.Errorf("key files %v", keyFiles(t, dir))
	}
}

// Host-driven rotation: the host forgets the key, the keeper latches a new
// one; the old file stays.
func TestRotation(t *testing.T) {
	sim := startSim(t, hostsim.StatusV2)
	enforce(t, sim, "Enforce", "")
	dir := filepath.Join(t.TempDir(), "keys")
	h := latch(t, sim, dir)
	old := h.kk.Key().GUID

	sim.Rotate()
	testsupport.WaitFor(t, "new key latched", func() bool {
		g, ok := sim.LatchedKeyGUID()
		k := h.kk.Key()
		return ok && k != nil && k.GUID == g && g != old
	})
	files := keyFiles(t, dir)
	if len(files) != 2 {
		t.Fatalf("key files %v, want old and new", files)
	}
	for _, f := range files {
		if m := fileMode(t, f); m != 0o600 {
			t.Errorf("%s mode %v", f, m)
		}
	}
	if h.kk.Status().States["keyIncarnationId"] != "1" {
		t.Errorf("keyIncarnationId %q, want 1", h.kk.Status().States["keyIncarnationId"])
	}
}

// Entering disabled clears the key from memory but keeps files.
func TestDisabledClearsKeyKeepsFiles(t *testing.T) {
	sim := startSim(t, hostsim.StatusV2)
	enforce(t, sim, "Enforce", "Audit")
	dir := filepath.Join(t.TempDir(), "keys")
	h := latch(t, sim, dir)
	files := keyFiles(t, dir)

	disable(t, sim)
	testsupport.WaitFor(t, "key cleared", func() bool { return h.kk.Key() == nil && h.kk.State() == msp.StateDisabled })
	if got := keyFiles(t, dir); len(got) != 1 || got[0] != files[0] {
		t.Errorf("key files after disable %v, want %v", got, files)
	}
	st := h.kk.Status()
	if !strings.HasPrefix(st.Message, "Customer has not enforce the secure channel state. - ") {
		t.Errorf("message %q", st.Message)
	}
	if _, ok := st.States["keyGuid"]; ok {
		t.Errorf("keyGuid still reported: %v", st.States)
	}
	if p, _ := h.redir.last(); p != [3]bool{false, false, false} {
		t.Errorf("redirect policy %v after disable", p)
	}
}

// Conformance item 14 through the keeper: v2 state string, modes, raw rule
// ids with HostGA mirroring WireServer.
func TestV2StateAndRuleIDs(t *testing.T) {
	sim := startSim(t, hostsim.StatusV2)
	enforce(t, sim, "Enforce", "Enforce")
	dir := filepath.Join(t.TempDir(), "keys")
	h := latch(t, sim, dir)
	const want = "WireServer Enforce -  IMDS Enforce - HostGA Enforce"
	testsupport.WaitFor(t, "v2 state", func() bool { return h.kk.State() == want })
	m := h.kk.Modes()
	if m.WireServer != msp.ModeEnforce || m.IMDS != msp.ModeEnforce || m.HostGA != msp.ModeEnforce {
		t.Errorf("modes %+v", m)
	}
	hs := sim.Status()
	st := h.kk.Status().States
	if st["wireServerRuleId"] != hs.AuthorizationRules.WireServer.ID || st["imdsRuleId"] != hs.AuthorizationRules.IMDS.ID {
		t.Errorf("rule ids %v, host %s/%s", st, hs.AuthorizationRules.WireServer.ID, hs.AuthorizationRules.IMDS.ID)
	}
	if st["hostGARuleId"] != st["wireServerRuleId"] || st["hostGARuleId"] == hs.AuthorizationRules.HostGA.ID {
		t.Errorf("hostGARuleId %q must mirror the wireserver id, not the hostga item's %q", st["hostGARuleId"], hs.AuthorizationRules.HostGA.ID)
	}
	rules, n := h.rules.lastCall()
	if n == 0 || rules == nil || rules.WireServer.ID != hs.AuthorizationRules.WireServer.ID {
		t.Errorf("rules applier got %+v (%d calls)", rules, n)
	}
	if p, _ := h.redir.last(); p != [3]bool{true, true, true} {
		t.Errorf("redirect policy %v", p)
	}
	// A mode change shows in the state string at once.
	enforce(t, sim, "Audit", "Disabled")
	testsupport.WaitFor(t, "audit state", func() bool {
		return h.kk.State() == "WireServer Audit -  IMDS Disabled - HostGA Audit"
	})
	testsupport.WaitFor(t, "redirect updated", func() bool { p, _ := h.redir.last(); return p == [3]bool{true, false, true} })
}
