package insight

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/opengpa/gpa/hostsim"
	"github.com/opengpa/gpa/proxyagent/authz"
	"github.com/opengpa/gpa/proxyagent/claims"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// suggestFrom runs a Suggester over the audit log in dir.
func suggestFrom(t *testing.T, dir string, opts SuggestOptions) *Suggestion {
	t.Helper()
	sg, err := NewSuggester(opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Scan(Source{Dir: dir}, func(e Entry) error { sg.Add(e); return nil }); err != nil {
		t.Fatal(err)
	}
	s, err := sg.Suggest()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// legitimate are the fixture's forwarded requests with an identity.
func legitimate(svcs ...msp.Service) []call {
	var out []call
	for _, c := range fixture {
		if c.who != nil && !c.unauthorized && c.result != authz.Deny && (len(svcs) == 0 || slicesContains(svcs, c.svc)) {
			out = append(out, c)
		}
	}
	return out
}

func slicesContains(s []msp.Service, v msp.Service) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func authorize(snap *authz.Snapshot, svc msp.Service, who *claims.Claims, method, target string) authz.Decision {
	return snap.Authorize(authz.Request{Service: svc, Method: method, Target: target, Caller: who})
}

func TestSuggestLocalIsLeastPrivilege(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, fixture, 0)
	dave := person("dave", 1005, "/usr/bin/wget", "dave")
	aliceWget := person("alice", 1000, "/usr/bin/wget", "alice", "users")
	daveCurl := person("dave", 1005, "/usr/bin/curl", "dave")
	tests := []struct {
		identity string
		query    string
		depth    int
		// denied are requests the suggestion must refuse.
		denied []call
	}{
		{ByExeUser, QueryNone, 0, []call{
			{svc: msp.IMDS, who: dave, method: "GET", target: "/metadata/instance"},      // unobserved exe and user
			{svc: msp.IMDS, who: aliceWget, method: "GET", target: "/metadata/instance"}, // observed user, unobserved exe
			{svc: msp.IMDS, who: daveCurl, method: "GET", target: "/metadata/instance"},  // observed exe, unobserved user
			{svc: msp.IMDS, who: alice, method: "GET", target: "/metadata/identity/oauth2/token?resource=x"},
			{svc: msp.IMDS, who: alice, method: "GET", target: "/metadata/scheduledevents"}, // unobserved path
		}},
		{ByExe, QueryNone, 0, []call{
			{svc: msp.IMDS, who: dave, method: "GET", target: "/metadata/instance"},
			{svc: msp.IMDS, who: aliceWget, method: "GET", target: "/metadata/instance"},
		}},
		{ByUser, QueryNone, 0, []call{
			{svc: msp.IMDS, who: daveCurl, method: "GET", target: "/metadata/instance"},
		}},
		{ByGroup, QueryNone, 0, []call{
			{svc: msp.IMDS, who: daveCurl, method: "GET", target: "/metadata/instance"},
		}},
		{ByExeUser, QueryObserved, 0, []call{
			{svc: msp.IMDS, who: alice, method: "GET", target: "/metadata/instance?api-version=2017-01-01"},
			{svc: msp.IMDS, who: alice, method: "GET", target: "/metadata/instance"},
		}},
		{ByExeUser, QueryNone, 2, []call{
			{svc: msp.IMDS, who: dave, method: "GET", target: "/metadata/instance/network"},
			{svc: msp.IMDS, who: alice, method: "GET", target: "/metadata/versions"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.identity+"/"+tt.query, func(t *testing.T) {
			s := suggestFrom(t, dir, SuggestOptions{Service: msp.IMDS, Identity: tt.identity, Query: tt.query, PathDepth: tt.depth})
			doc, err := s.LocalJSON()
			if err != nil {
				t.Fatal(err)
			}
			if err := authz.ValidateLocalRules(doc); err != nil {
				t.Fatalf("suggestion is not a valid local rules file: %v\n%s", err, doc)
			}
			rs, err := authz.CompileDocument(doc, msp.ModeEnforce)
			if err != nil {
				t.Fatal(err)
			}
			if rs.Privileges() == 0 {
				t.Fatalf("no privileges compiled:\n%s", doc)
			}
			snap := authz.NewSnapshot(nil, rs, nil)
			for _, c := range legitimate(msp.IMDS) {
				if d := authorize(snap, c.svc, c.who, c.method, c.target); d.Result != authz.Allow {
					t.Errorf("observed %s %s by %s denied: %s\n%s", c.method, c.target, c.who.UserName, d.Reason, doc)
				}
			}
			for _, c := range tt.denied {
				if d := authorize(snap, c.svc, c.who, c.method, c.target); d.Result != authz.Deny {
					t.Errorf("unobserved %s %s by %s %s allowed (%s)\n%s", c.method, c.target, c.who.UserName, c.who.ProcessFullPath, d.Reason, doc)
				}
			}
			if bad, err := s.Verify(); err != nil || len(bad) > 0 {
				t.Errorf("Verify: %v %v", bad, err)
			}
		})
	}
}

func TestSuggestWireServerProfile(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, fixture, 0)
	out := filepath.Join(t.TempDir(), "wireserver-profile.json")
	code, _, errs := run(RunRules, "suggest", "--dir", dir, "--service", "wireserver", "--format", "profile", "--mode", "enforce", "--out", out)
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if !strings.Contains(errs, "non-root") && !strings.Contains(errs, "denied requests left out") {
		t.Errorf("no note about mallory's denied request: %s", errs)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	p, err := hostsim.ParseProfile(data)
	if err != nil {
		t.Fatalf("hostsim rejects the profile: %v\n%s", err, data)
	}
	if p.Properties.Mode != "Enforce" || p.Properties.DefaultAccess != "Deny" || p.Properties.Rules == nil {
		t.Fatalf("profile %+v", p.Properties)
	}
	// The profile is what the host turns into the wireserver and hostga
	// items; compile it as the agent does.
	item := &msp.AuthorizationItem{DefaultAccess: strings.ToLower(p.Properties.DefaultAccess), Mode: "enforce", ID: "x", Rules: p.Properties.Rules}
	rs := authz.Compile(item)
	snap := authz.NewSnapshot(rs, nil, rs)
	for _, c := range legitimate(msp.WireServer, msp.HostGAPlugin) {
		if d := authorize(snap, c.svc, c.who, c.method, c.target); d.Result != authz.Allow {
			t.Errorf("observed %s %s %s denied: %s", c.svc, c.method, c.target, d.Reason)
		}
	}
	// root running another program is not allowed.
	other := person("root", 0, "/usr/bin/curl", "root")
	if d := authorize(snap, msp.WireServer, other, "GET", "/machine/?comp=goalstate"); d.Result != authz.Deny {
		t.Errorf("root curl allowed: %s", d.Reason)
	}
	var paths []string
	for _, pr := range p.Properties.Rules.Privileges {
		paths = append(paths, pr.Path)
	}
	if strings.Join(paths, " ") != "/machine/ /vmsettings" {
		t.Errorf("privilege paths %v, want /machine/ and /vmsettings", paths)
	}
	// Exempt uploads from root are always allowed and need no privilege.
	s := suggestFrom(t, dir, SuggestOptions{Service: msp.WireServer, Query: QueryObserved})
	for _, pr := range s.Rules.Privileges {
		if pr.QueryParameters["comp"] == "telemetrydata" {
			t.Errorf("privilege for an exempt upload: %+v", pr)
		}
	}
	// rules test reads the profile back.
	code, outText, errs := run(RunRules, "test", out, "--dir", dir, "--service", "wireserver")
	if code != ExitOK {
		t.Fatalf("rules test of the suggestion: exit %d\n%s%s", code, outText, errs)
	}
}

func TestSuggestLocalRoundTripsThroughRulesTest(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, fixture, 0)
	rulesDir := t.TempDir()
	out := filepath.Join(rulesDir, authz.IMDSRulesFile)
	if code, _, errs := run(RunRules, "suggest", "--dir", dir, "--service", "imds", "--out", out); code != ExitOK {
		t.Fatalf("suggest exit %d: %s", code, errs)
	}
	code, stdout, errs := run(RunRules, "test", out, "--dir", dir, "--json")
	if code != ExitOK {
		t.Fatalf("rules test exit %d: %s", code, errs)
	}
	res := decodeJSON[ReplayResult](t, stdout)
	// bob's two audit-deny requests become allowed; nothing is denied.
	if res.NewlyDenied != 0 || res.NewlyAllowed != 2 || res.Replayed != 6 || res.NotAuthorized != 1 {
		t.Errorf("replay %+v", res)
	}
}

func TestSuggestRejects(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, fixture[:1], 0) // one IMDS call only
	for _, args := range [][]string{
		{"suggest", "--dir", dir},                        // no service
		{"suggest", "--dir", dir, "--service", "hostga"}, // not a document service
		{"suggest", "--dir", dir, "--service", "imds", "--identity", "pid"},
		{"suggest", "--dir", dir, "--service", "imds", "--query", "all"},
		{"suggest", "--dir", dir, "--service", "imds", "--format", "yaml"},
		{"suggest", "--dir", dir, "--service", "imds", "--default-access", "maybe"},
		{"suggest", "--dir", dir, "--service", "wireserver"}, // nothing observed
		{"suggest", "--dir", dir, "--service", "imds", "--bogus"},
	} {
		if code, _, errs := run(RunRules, args...); code != ExitBadInput || errs == "" {
			t.Errorf("%v: exit %d, stderr %q", args, code, errs)
		}
	}
}

func TestSuggestSkipsUnnamedCallers(t *testing.T) {
	dir := t.TempDir()
	gone := &claims.Claims{UserID: 1000, UserName: "alice", UserGroups: []string{"alice"}, ProcessName: "curl", ProcessCmdLine: "undefined"}
	writeLog(t, dir, []call{
		{svc: msp.IMDS, who: gone, method: "GET", target: "/metadata/instance"},
		{svc: msp.IMDS, who: carol, method: "GET", target: "/metadata/instance/compute"},
	}, 0)
	s := suggestFrom(t, dir, SuggestOptions{Service: msp.IMDS, Identity: ByExe})
	if len(s.Rules.Identities) != 1 || s.Rules.Identities[0].ExePath != "/opt/app/bin/agent" {
		t.Errorf("identities %+v", s.Rules.Identities)
	}
	if len(s.Notes) != 1 || !strings.Contains(s.Notes[0], "unknown executable") {
		t.Errorf("notes %v", s.Notes)
	}

	// A caller in another user namespace has no executable either, and
	// the note says why; by user it is suggested as any other.
	dir = t.TempDir()
	ns := &claims.Claims{UserID: 1000, UserName: "alice", UserGroups: []string{"alice"}, ProcessCmdLine: "curl", OtherUserNS: true}
	writeLog(t, dir, []call{
		{svc: msp.IMDS, who: ns, method: "GET", target: "/metadata/instance"},
		{svc: msp.IMDS, who: carol, method: "GET", target: "/metadata/instance/compute"},
	}, 0)
	s = suggestFrom(t, dir, SuggestOptions{Service: msp.IMDS, Identity: ByExe})
	if len(s.Rules.Identities) != 1 || len(s.Notes) != 1 || !strings.Contains(s.Notes[0], "another user namespace") {
		t.Errorf("by executable: identities %+v, notes %v", s.Rules.Identities, s.Notes)
	}
	s = suggestFrom(t, dir, SuggestOptions{Service: msp.IMDS, Identity: ByUser})
	if !slices.ContainsFunc(s.Rules.Identities, func(id msp.Identity) bool { return id.UserName == "alice" }) {
		t.Errorf("by user: identities %+v, notes %v", s.Rules.Identities, s.Notes)
	}
}

func TestUniqueNames(t *testing.T) {
	used := map[string]bool{}
	got := []string{uniqueName(used, "a"), uniqueName(used, "a-2"), uniqueName(used, "a"), uniqueName(used, "a")}
	want := []string{"a", "a-2", "a-3", "a-4"}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("names %v, want %v", got, want)
			break
		}
	}
	for in, want := range map[string]string{"/": "root", "/metadata/instance": "metadata-instance", "/A%20B//c": "a-20b-c"} {
		if got := pathSlug(in); got != want {
			t.Errorf("pathSlug(%q) = %q, want %q", in, got, want)
		}
	}
}
