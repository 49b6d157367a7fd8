package insight

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func findService(t *testing.T, r Report, name string) ServiceReport {
	t.Helper()
	for _, s := range r.Services {
		if s.Service == name {
			return s
		}
	}
	t.Fatalf("no service %q in report", name)
	return ServiceReport{}
}

func findCaller(t *testing.T, s ServiceReport, user, exe string) CallerReport {
	t.Helper()
	for _, c := range s.Callers {
		if c.Caller.User == user && c.Caller.Exe == exe {
			return c
		}
	}
	t.Fatalf("no caller %s %s in %s", user, exe, s.Service)
	return CallerReport{}
}

func TestReportJSON(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, fixture, 0)
	code, out, errs := run(RunAudit, "report", "--dir", dir, "--json")
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	r := decodeJSON[Report](t, out)
	if r.Counts.Requests != len(fixture) {
		t.Errorf("requests %d, want %d", r.Counts.Requests, len(fixture))
	}
	if !r.FirstSeen.Equal(t0) || !r.LastSeen.Equal(t0.Add(6*time.Hour)) {
		t.Errorf("first/last %v %v", r.FirstSeen, r.LastSeen)
	}
	if r.JudgedBy != "recorded decisions" {
		t.Errorf("judgedBy %q", r.JudgedBy)
	}
	var names []string
	for _, s := range r.Services {
		names = append(names, s.Service)
	}
	if want := []string{"HostGAPlugin", "IMDS", "WireServer"}; !slices.Equal(names, want) {
		t.Errorf("services %v, want %v", names, want)
	}

	imds := findService(t, r, "IMDS")
	if imds.Counts.Requests != 7 || imds.WouldDeny != 2 || imds.AuditDeny != 2 || imds.NotAuthorized != 1 || imds.Allow != 4 {
		t.Errorf("IMDS counts %+v", imds.Counts)
	}
	a := findCaller(t, imds, "alice", "/usr/bin/curl")
	if a.Counts.Requests != 3 || !a.FirstSeen.Equal(t0) || !a.LastSeen.Equal(t0.Add(2*time.Hour)) || a.WouldDeny != 0 {
		t.Errorf("alice %+v", a.Counts)
	}
	if !slices.Equal(a.Caller.Ancestry, []string{"/bin/bash", "/usr/lib/systemd/systemd"}) || a.Caller.UID != 1000 {
		t.Errorf("alice caller %+v", a.Caller)
	}
	// alice's requests: one path, two query parameter sets.
	if len(a.Targets) != 2 {
		t.Fatalf("alice targets %+v", a.Targets)
	}
	if tg := a.Targets[0]; tg.Path != "/metadata/instance" || !slices.Equal(tg.Query, []string{"api-version"}) || tg.Counts.Requests != 2 {
		t.Errorf("alice first target %+v", tg)
	}
	if tg := a.Targets[1]; !slices.Equal(tg.Query, []string{"api-version", "format"}) || tg.Counts.Requests != 1 {
		t.Errorf("alice second target %+v", tg)
	}
	b := findCaller(t, imds, "bob", "/usr/bin/python3")
	if b.Counts.Requests != 2 || b.WouldDeny != 2 || !b.LastSeen.Equal(t0.Add(3*time.Hour)) {
		t.Errorf("bob %+v", b.Counts)
	}
	var anon bool
	for _, c := range imds.Callers {
		anon = anon || c.Caller.NoIdentity
	}
	if !anon {
		t.Error("request without identity not reported")
	}

	ws := findService(t, r, "WireServer")
	if ws.Counts.Requests != 4 || ws.Deny != 1 || ws.WouldDeny != 1 {
		t.Errorf("WireServer counts %+v", ws.Counts)
	}
	if m := findCaller(t, ws, "mallory", "/usr/bin/curl"); m.WouldDeny != 1 {
		t.Errorf("mallory %+v", m.Counts)
	}
}

func TestReportTable(t *testing.T) {
	dir := t.TempDir()
	calls := append(slices.Clone(fixture), call{at: 7 * time.Hour, svc: "IMDS", who: person("eve", 1004, "/tmp/\x1b[2Jevil"), method: "GET", target: "/metadata/instance"})
	writeLog(t, dir, calls, 0)
	code, out, errs := run(RunAudit, "report", "--dir", dir)
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{
		"== IMDS: 8 request(s), would deny under Enforce: 2",
		"user=alice(1000) exe=/usr/bin/curl via /bin/bash < /usr/lib/systemd/systemd",
		"GET /metadata/instance ?api-version",
		t0.Format(time.RFC3339),
		"(no caller identity)",
		"== WireServer: 4 request(s), would deny under Enforce: 1",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "\x1b") {
		t.Error("terminal escape from the log reached the table")
	}
	if !strings.Contains(out, `/tmp/\x1b[2Jevil`) {
		t.Errorf("escaped exe missing:\n%s", out)
	}
}

func TestReportSince(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, fixture, 0)
	code, out, errs := run(RunAudit, "report", "--dir", dir, "--json", "--since", t0.Add(90*time.Minute).Format(time.RFC3339))
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	r := decodeJSON[Report](t, out)
	a := findCaller(t, findService(t, r, "IMDS"), "alice", "/usr/bin/curl")
	if a.Counts.Requests != 1 || !a.FirstSeen.Equal(t0.Add(2*time.Hour)) {
		t.Errorf("alice since: %+v", a.Counts)
	}
	if r.Counts.Requests != 6 || r.Filtered != len(fixture)-6 { // 90m itself is kept
		t.Errorf("since: %d requests, %d filtered", r.Counts.Requests, r.Filtered)
	}
	if r.Since == nil || !r.Since.Equal(t0.Add(90*time.Minute)) {
		t.Errorf("since %v", r.Since)
	}
	// A duration counts back from now: the fixture is long past.
	now = func() time.Time { return t0.Add(24 * time.Hour) }
	defer func() { now = time.Now }()
	_, out, _ = run(RunAudit, "report", "--dir", dir, "--json", "--since", "19h")
	if r := decodeJSON[Report](t, out); r.Counts.Requests != 2 {
		t.Errorf("since 19h: %d requests, want 2 (at 5h and 6h)", r.Counts.Requests)
	}
}

func TestReportWithRules(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, fixture, 0)
	// Only curl run by alice may read instance metadata.
	rules := putFile(t, t.TempDir(), "IMDS_Rules.json", `{"defaultAccess": "deny", "rules": {
		"privileges": [{"name": "instance", "path": "/metadata/instance"}],
		"roles": [{"name": "reader", "privileges": ["instance"]}],
		"identities": [{"name": "curl", "exePath": "/usr/bin/curl", "userName": "alice"}],
		"roleAssignments": [{"role": "reader", "identities": ["curl"]}]}}`)
	code, out, errs := run(RunAudit, "report", "--dir", dir, "--json", "--rules", rules)
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	r := decodeJSON[Report](t, out)
	if r.JudgedBy != rules {
		t.Errorf("judgedBy %q", r.JudgedBy)
	}
	imds := findService(t, r, "IMDS")
	// bob (2, no privilege) and carol (1, not assigned) would be denied.
	if imds.WouldDeny != 3 {
		t.Errorf("IMDS wouldDeny %d, want 3", imds.WouldDeny)
	}
	c := findCaller(t, imds, "carol", "/opt/app/bin/agent")
	if c.WouldDeny != 1 || !strings.Contains(c.Targets[0].DenyReason, "no assigned identity matched") {
		t.Errorf("carol %+v", c.Targets)
	}
	// Services the rules do not cover keep their recorded decisions.
	if ws := findService(t, r, "WireServer"); ws.WouldDeny != 1 {
		t.Errorf("WireServer wouldDeny %d", ws.WouldDeny)
	}
}

func TestReportReadsRotatedFiles(t *testing.T) {
	dir := t.TempDir()
	var calls []call
	for i := range 60 {
		calls = append(calls, call{at: time.Duration(i) * time.Minute, svc: "IMDS", who: alice, method: "GET", target: "/metadata/instance?api-version=2021-02-01"})
	}
	current := writeLog(t, dir, calls, 4096)
	files, err := Source{Dir: dir}.Files()
	if err != nil || len(files) < 3 || files[len(files)-1] != current {
		t.Fatalf("files %v, %v: want rotated copies then the current file", files, err)
	}
	_, out, _ := run(RunAudit, "report", "--dir", dir, "--json")
	r := decodeJSON[Report](t, out)
	if r.Counts.Requests != 60 || len(r.Files) != len(files) || !r.LastSeen.Equal(t0.Add(59*time.Minute)) {
		t.Errorf("read %d requests from %d files", r.Counts.Requests, len(r.Files))
	}
	if len(r.Warnings) != 0 {
		t.Errorf("warnings on a clean rotated log: %v", r.Warnings)
	}
	_, out, _ = run(RunAudit, "report", "--log", current, "--json")
	if r := decodeJSON[Report](t, out); r.Counts.Requests >= 60 || r.Counts.Requests == 0 {
		t.Errorf("--log read %d requests; want only the current file's", r.Counts.Requests)
	}
}

func TestReportPathDepth(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, fixture, 0)
	_, out, _ := run(RunAudit, "report", "--dir", dir, "--json", "--path-depth", "1")
	r := decodeJSON[Report](t, out)
	for _, c := range findService(t, r, "IMDS").Callers {
		for _, tg := range c.Targets {
			if tg.Path != "/metadata" {
				t.Errorf("path %q at depth 1", tg.Path)
			}
		}
	}
}
