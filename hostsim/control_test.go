package hostsim

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opengpa/gpa/proxyagent/msp"
)

func TestJournalRing(t *testing.T) {
	j := NewJournal(3)
	for i := range 5 {
		if seq := j.Add(Entry{Target: string(rune('a' + i))}); seq != uint64(i+1) {
			t.Fatalf("Add #%d returned seq %d", i+1, seq)
		}
	}
	es := j.Entries()
	if len(es) != 3 || es[0].Seq != 3 || es[2].Seq != 5 || es[0].Target != "c" || es[2].Target != "e" || j.Dropped() != 2 {
		t.Fatalf("entries %+v dropped %d, want seq 3..5 and 2 dropped", es, j.Dropped())
	}
	j.Clear()
	if len(j.Entries()) != 0 {
		t.Fatal("Clear left entries")
	}
	if seq := j.Add(Entry{}); seq != 6 {
		t.Fatalf("seq after Clear = %d, want 6", seq)
	}
}

func control(t *testing.T, s *Sim, method, path, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+s.Addrs().Control+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

const profileRef = "/subscriptions/0/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/inVMAccessControlProfiles/imds/versions/1.0.0"

const profileDoc = `{
  "id": "` + profileRef + `",
  "name": "1.0.0",
  "properties": {
    "mode": "Enforce",
    "defaultAccess": "Deny",
    "rules": {
      "privileges": [{"name": "instance", "path": "/metadata/instance", "queryParameters": {"api-version": "2021-02-01"}}],
      "roles": [{"name": "reader", "privileges": ["instance"]}],
      "identities": [{"name": "root", "userName": "root"}],
      "roleAssignments": [{"role": "reader", "identities": ["root"]}]
    }
  }
}`

// Tests drive the simulator through the control endpoint the way an
// end-to-end test in another process would.
func TestControlEndpoint(t *testing.T) {
	s := startSim(t, Config{})
	vm := `{"properties": {"securityProfile": {"proxyAgentSettings": {"enabled": true, "keyIncarnationId": 4,
	  "wireServer": {"mode": "Enforce"}, "imds": {"inVMAccessControlProfileReferenceId": "` + profileRef + `"}}}}}`
	if code, body := control(t, s, "PUT", "/settings", vm); code != 200 {
		t.Fatalf("PUT /settings: %d %s", code, body)
	}
	if code, body := control(t, s, "PUT", "/profiles"+profileRef, profileDoc); code != 200 {
		t.Fatalf("PUT /profiles: %d %s", code, body)
	}
	code, body := control(t, s, "GET", "/status", "")
	ks, err := msp.ParseKeyStatus(body)
	if code != 200 || err != nil {
		t.Fatalf("GET /status: %d %s %v", code, body, err)
	}
	m := ks.Derive()
	if m.State != "WireServer Enforce -  IMDS Enforce - HostGA Enforce" || ks.AuthorizationRules.IMDS.DefaultAccess != "deny" ||
		ks.AuthorizationRules.IMDS.Rules == nil || ks.AuthorizationRules.IMDS.Rules.Privileges[0].QueryParameters["api-version"] != "2021-02-01" {
		t.Fatalf("status from control settings: %s", body)
	}
	var st State
	code, body = control(t, s, "GET", "/state", "")
	decodeJSON(t, body, &st)
	if code != 200 || st.LatchedKeyGUID != nil || st.KeyIncarnationID == nil || *st.KeyIncarnationID != 4 || st.IMDSMode != msp.ModeEnforce {
		t.Fatalf("GET /state: %d %s", code, body)
	}
	if code, body = control(t, s, "POST", "/rotate", ""); code != 200 || !bytes.Contains(body, []byte(`"keyIncarnationId":5`)) {
		t.Fatalf("POST /rotate: %d %s", code, body)
	}
	if code, body = control(t, s, "PUT", "/options", `{"statusVersion": "1.0", "imdsRateLimit": 0, "dateSkew": "30s"}`); code != 200 {
		t.Fatalf("PUT /options: %d %s", code, body)
	}
	if ks := getStatus(t, s); ks.Version != StatusV1 || ks.Derive().State != "wireserverandimds" {
		t.Fatalf("status after options: %+v", ks)
	}
	bad := []struct{ method, path, body string }{
		{"PUT", "/settings", `{"enabled": true, "wireServer": {"mode": "Sometimes"}}`},
		{"PUT", "/settings", `{"enabled": true, "mode": "Disabled"}`},
		{"PUT", "/settings", `not json`},
		{"PUT", "/profiles/x", `{"properties": {"mode": "Enforce", "defaultAccess": "Maybe"}}`},
		{"PUT", "/profiles", `{"properties": {"mode": "Enforce", "defaultAccess": "Allow"}}`}, // no id anywhere
		{"PUT", "/options", `{"statusVersion": "3.0"}`},
		{"PUT", "/options", `{"dateSkew": "-1s"}`},
		{"GET", "/journal?since=x", ""},
	}
	for _, b := range bad {
		if code, body := control(t, s, b.method, b.path, b.body); code != 400 || !bytes.Contains(body, []byte(`"error"`)) {
			t.Errorf("%s %s %s: %d %s, want 400 with error JSON", b.method, b.path, b.body, code, body)
		}
	}
	if code, _ := control(t, s, "GET", "/nothing", ""); code != 404 {
		t.Fatalf("unknown control path: %d", code)
	}
	// The bad requests changed nothing.
	if got := s.Settings(); got.WireServer == nil || got.WireServer.Mode != "Enforce" {
		t.Fatalf("settings changed by a refused PUT: %+v", got)
	}
	if code, _ := control(t, s, "DELETE", "/profiles"+strings.ToUpper(profileRef), ""); code != 204 {
		t.Fatalf("DELETE profile: %d", code)
	}
	if len(s.Profiles()) != 0 {
		t.Fatalf("profile still stored: %v", s.Profiles())
	}
}

func TestJournalOverControl(t *testing.T) {
	s := startSim(t, Config{Settings: enforceAll(), IMDSRateLimit: -1})
	send(t, s.Addrs().IMDS, imdsGet("/metadata/instance?api-version=2021-02-01").bytes())
	send(t, s.Addrs().WireServer, wsGet("/machine?comp=goalstate").bytes())
	getStatus(t, s)
	var all, imds []Entry
	_, body := control(t, s, "GET", "/journal", "")
	decodeJSON(t, body, &all)
	_, body = control(t, s, "GET", "/journal?service=imds", "")
	decodeJSON(t, body, &imds)
	if len(all) != 3 || len(imds) != 1 || imds[0].Service != IMDS || imds[0].Status != 401 || imds[0].Verdict != VerdictUnsigned {
		t.Fatalf("journal all=%+v imds=%+v", all, imds)
	}
	hasHost := false
	for _, h := range all[1].Headers {
		hasHost = hasHost || (h.Name == "host" && h.Value == "168.63.129.16")
	}
	if all[1].Method != "GET" || all[1].Target != "/machine?comp=goalstate" || !hasHost || all[1].Time.IsZero() {
		t.Fatalf("entry %+v lacks method, target, host header or time", all[1])
	}
	// The property end-to-end tests assert: nothing unaccepted was served in
	// Enforce.
	for _, e := range all {
		if e.ServedUnaccepted() || (e.Mode == msp.ModeEnforce && !e.Verdict.Accepted() && e.Status != 401) {
			t.Fatalf("served in Enforce without a valid signature: %+v", e)
		}
	}
	var since []Entry
	_, body = control(t, s, "GET", "/journal?since=2", "")
	decodeJSON(t, body, &since)
	if len(since) != 1 || since[0].Seq != 3 {
		t.Fatalf("since=2: %+v", since)
	}
	if code, _ := control(t, s, "DELETE", "/journal", ""); code != 204 || len(s.Journal().Entries()) != 0 {
		t.Fatalf("DELETE /journal: %d, %d entries left", code, len(s.Journal().Entries()))
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"non-loopback control", Config{ControlAddr: "0.0.0.0:0"}},
		{"named non-loopback control", Config{ControlAddr: "example.com:80"}},
		{"bad status version", Config{StatusVersion: "3.0"}},
		{"bad mode", Config{Settings: ProxyAgentSettings{IMDS: &HostEndpointSettings{Mode: "on"}}}},
		{"negative incarnation", Config{Settings: ProxyAgentSettings{KeyIncarnationID: ptr(-1)}}},
		{"bad preset key", Config{PresetKey: &msp.IssuedKey{GUID: "g", Key: "zz"}}},
		{"short preset key", Config{PresetKey: &msp.IssuedKey{GUID: "g", Key: "abcd"}}},
		{"bad profile", Config{Profiles: map[string]ProfileVersion{"p": {Properties: ProfileProperties{Mode: "Enforce", DefaultAccess: ""}}}}},
	}
	for _, tc := range tests {
		if _, err := New(tc.cfg); err == nil {
			t.Errorf("%s: New accepted it", tc.name)
		} else if tc.cfg.PresetKey != nil && strings.Contains(err.Error(), tc.cfg.PresetKey.Key) {
			t.Errorf("%s: error leaks the key: %v", tc.name, err)
		}
	}
}

func TestLoadFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	settings := write("settings.json", "\ufeff"+`{"securityProfile": {"proxyAgentSettings": {"enabled": true, "mode": "Enforce", "keyIncarnationId": 2}}}`)
	ps, err := LoadSettings(settings)
	if err != nil || ps.Enabled == nil || !*ps.Enabled || ps.Mode != "Enforce" || *ps.KeyIncarnationID != 2 {
		t.Fatalf("LoadSettings: %+v %v", ps, err)
	}
	pdir := filepath.Join(dir, "profiles")
	os.Mkdir(pdir, 0o700)
	os.WriteFile(filepath.Join(pdir, "a.json"), []byte(profileDoc), 0o600)
	os.WriteFile(filepath.Join(pdir, "wsprofile.json"), []byte(`{"mode": "Audit", "defaultAccess": "Allow"}`), 0o600)
	got, err := LoadProfiles(pdir)
	if err != nil || len(got) != 2 || got[profileRef].Properties.DefaultAccess != "Deny" || got["wsprofile"].Properties.Mode != "Audit" {
		t.Fatalf("LoadProfiles(dir): %+v %v", got, err)
	}
	single := write("one.json", profileDoc)
	if got, err := LoadProfiles(single); err != nil || len(got) != 1 {
		t.Fatalf("LoadProfiles(single): %+v %v", got, err)
	}
	mapped := write("map.json", `{"p1": `+profileDoc+`, "p2": {"mode": "Disabled", "defaultAccess": "Allow"}}`)
	if got, err := LoadProfiles(mapped); err != nil || len(got) != 2 || got["p2"].Properties.Mode != "Disabled" {
		t.Fatalf("LoadProfiles(map): %+v %v", got, err)
	}
	broken := write("broken.json", `{"p1": {"mode": "Enforce", "defaultAccess": "Perhaps"}}`)
	if _, err := LoadProfiles(broken); err == nil {
		t.Fatal("LoadProfiles accepted an invalid defaultAccess")
	}
}
