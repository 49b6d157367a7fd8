package insight

import (
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/proxyagent/authz"
)

const aliceOnlyIMDS = `{"defaultAccess": "deny", "rules": {
	"privileges": [{"name": "instance", "path": "/metadata/instance", "queryParameters": {"api-version": "2021-02-01"}}],
	"roles": [{"name": "reader", "privileges": ["instance"]}],
	"identities": [{"name": "curl", "exePath": "/usr/bin/curl", "userName": "alice"}],
	"roleAssignments": [{"role": "reader", "identities": ["curl"]}]}}`

func TestRulesTestReportsChanges(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, fixture, 0)
	rules := putFile(t, t.TempDir(), "candidate.json", aliceOnlyIMDS)
	code, out, errs := run(RunRules, "test", rules, "--dir", dir, "--service", "imds", "--json")
	if code != ExitFindings {
		t.Fatalf("exit %d, want %d (newly denied): %s", code, ExitFindings, errs)
	}
	res := decodeJSON[ReplayResult](t, out)
	if res.Format != FormatLocal || len(res.Services) != 1 || res.Services[0] != "IMDS" {
		t.Errorf("format %q services %v", res.Format, res.Services)
	}
	// IMDS: alice 3 allowed (unchanged), bob 2 audit-deny→deny, carol 1 allow→deny.
	if res.Replayed != 6 || res.Unchanged != 3 || res.Changed != 3 || res.NewlyDenied != 3 || res.NewlyAllowed != 0 ||
		res.NotCovered != 5 || res.NotAuthorized != 1 {
		t.Errorf("counts %+v", res)
	}
	if len(res.Changes) != 2 {
		t.Fatalf("changes %+v", res.Changes)
	}
	b := res.Changes[0]
	if b.Caller.User != "bob" || b.Old != "audit-deny" || b.New != "deny" || !b.NewlyDenied || b.Count != 2 ||
		!b.FirstSeen.Equal(t0.Add(30*time.Minute)) || !b.LastSeen.Equal(t0.Add(3*time.Hour)) ||
		!strings.HasPrefix(b.Target, "/metadata/identity/oauth2/token?") || b.Service != "IMDS" ||
		!strings.Contains(b.Reason, "default access deny") || !strings.HasSuffix(b.FirstAt, "ProxyAgent.Audit.jsonl:4") {
		t.Errorf("bob's change %+v", b)
	}
	c := res.Changes[1]
	if c.Caller.User != "carol" || c.Old != "allow" || c.New != "deny" || c.Count != 1 {
		t.Errorf("carol's change %+v", c)
	}

	// Text output names caller, target and both decisions.
	code, out, _ = run(RunRules, "test", "--dir", dir, "--service", "imds", rules)
	for _, want := range []string{"NEWLY DENIED: audit-deny -> deny  x2  IMDS GET /metadata/identity/oauth2/token",
		"caller: user=bob(1001) exe=/usr/bin/python3", "3 newly denied"} {
		if !strings.Contains(out, want) {
			t.Errorf("text lacks %q:\n%s", want, out)
		}
	}
	if code != ExitFindings {
		t.Errorf("exit %d", code)
	}
}

func TestRulesTestModes(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, fixture, 0)
	rules := putFile(t, t.TempDir(), "candidate.json", aliceOnlyIMDS)
	// In audit mode nothing is denied: bob stays audit-deny, carol becomes audit-deny.
	code, out, errs := run(RunRules, "test", rules, "--dir", dir, "--service", "imds", "--mode", "audit", "--json")
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	res := decodeJSON[ReplayResult](t, out)
	if res.Changed != 1 || res.NewlyDenied != 0 || res.Changes[0].New != "audit-deny" {
		t.Errorf("audit replay %+v", res)
	}
	// An authorization item keeps its own mode with --mode document.
	item := putFile(t, t.TempDir(), "item.json", `{"mode": "Audit", "id": "x", `+strings.TrimPrefix(aliceOnlyIMDS, "{"))
	_, out, _ = run(RunRules, "test", item, "--dir", dir, "--service", "imds", "--mode", "document", "--json")
	if res := decodeJSON[ReplayResult](t, out); res.Format != FormatItem || res.NewlyDenied != 0 || res.Changed != 1 {
		t.Errorf("item replay %+v", res)
	}
}

func TestRulesTestAuthorizationRules(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, fixture, 0)
	// The WireServer allows everything for root; the agent's root check
	// still denies mallory, as recorded: nothing changes there.
	doc := `{"secureChannelEnabled": true, "authorizationRules": {
		"wireserver": {"defaultAccess": "allow", "mode": "enforce", "id": "ws"},
		"imds": {"defaultAccess": "allow", "mode": "enforce", "id": "imds"}}}`
	rules := putFile(t, t.TempDir(), "status.json", doc)
	code, out, errs := run(RunRules, "test", rules, "--dir", dir, "--json")
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	res := decodeJSON[ReplayResult](t, out)
	if res.Format != FormatAuthorizationRules || res.NotCovered != 1 /* HostGA */ || res.NewlyAllowed != 2 || res.Changed != 2 {
		t.Errorf("replay %+v", res)
	}
}

func TestRequestOfUsesRecordedService(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, fixture, 0)
	snap := authz.NewSnapshot(nil, nil, nil)
	_, err := Scan(Source{Dir: dir}, func(e Entry) error {
		if !replayable(&e.Record) {
			return nil
		}
		d := snap.Authorize(RequestOf(&e.Record))
		if string(d.Service) != e.Record.Destination.Service {
			t.Errorf("%s:%d replayed as %s, recorded %s", e.File, e.Line, d.Service, e.Record.Destination.Service)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
