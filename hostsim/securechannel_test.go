package hostsim

import (
	"encoding/hex"
	"net/http"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/opengpa/gpa/proxyagent/msp"
)

var guidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// issueKey calls POST /secure-channel/key as the agent does and parses
// the answer.
func issueKey(t *testing.T, s *Sim) *msp.IssuedKey {
	t.Helper()
	q := rawReq{method: "POST", target: msp.KeyPath, body: msp.KeyRequestBody, headers: []msp.Field{
		{Name: "host", Value: "168.63.129.16"}, {Name: "Metadata", Value: "True "},
		{Name: "Content-Type", Value: "application/json"}, {Name: "content-length", Value: "44"}}}
	code, body := send(t, s.Addrs().WireServer, q.signed(nil, vecDate).bytes())
	if code != http.StatusOK {
		t.Fatalf("key issue: HTTP %d %s", code, body)
	}
	k, err := msp.ParseIssuedKey(body)
	if err != nil {
		t.Fatalf("ParseKey: %v", err)
	}
	return k
}

func attestation(guid string) rawReq {
	return rawReq{method: "POST", target: "/secure-channel/key/" + guid + "/key-attestation", headers: []msp.Field{
		{Name: "content-length", Value: "0"}, {Name: "host", Value: "168.63.129.16"}, {Name: "metadata", Value: "True "}}}
}

func TestKeyIssueAttestationLatch(t *testing.T) {
	s := startSim(t, Config{Settings: enforceAll()})
	if ks := getStatus(t, s); ks.KeyGUID != nil {
		t.Fatalf("keyGuid = %q before any attestation, want null", *ks.KeyGUID)
	}
	k := issueKey(t, s)
	raw, err := hex.DecodeString(k.Key)
	if !guidRE.MatchString(k.GUID) || err != nil || len(raw) != 32 || k.AuthorizationScheme != msp.Scheme {
		t.Fatalf("issued key guid %q, %d key bytes (err %v), scheme %q", k.GUID, len(raw), err, k.AuthorizationScheme)
	}
	if k.IncarnationID == nil || *k.IncarnationID != 1 {
		t.Fatalf("incarnationId = %v, want 1", k.IncarnationID)
	}
	if k2 := issueKey(t, s); k2.GUID == k.GUID || k2.Key == k.Key {
		t.Fatal("two key requests returned the same key")
	}
	if ks := getStatus(t, s); ks.KeyGUID != nil {
		t.Fatal("an issued but unattested key is reported as latched")
	}
	key := mustSigningKey(t, k.GUID, k.Key)
	other := mustSigningKey(t, k.GUID, vecKey) // right GUID, wrong secret

	bad := []struct {
		name string
		req  []byte
	}{
		{"unsigned", attestation(k.GUID).signed(nil, vecDate).bytes()},
		{"signed with another secret", attestation(k.GUID).signed(other, vecDate).bytes()},
		{"unknown guid", attestation("11111111-2222-4333-8444-555555555555").signed(
			mustSigningKey(t, "11111111-2222-4333-8444-555555555555", k.Key), vecDate).bytes()},
		{"stale date", attestation(k.GUID).signed(key, "Wed, 23 Apr 2025 11:50:00 GMT").bytes()},
	}
	for _, b := range bad {
		if code, body := send(t, s.Addrs().WireServer, b.req); code != http.StatusUnauthorized {
			t.Errorf("%s attestation: HTTP %d %s, want 401", b.name, code, body)
		}
		if g, ok := s.LatchedKeyGUID(); ok {
			t.Fatalf("%s attestation latched %s", b.name, g)
		}
	}
	// A request signed with the pending key is not served before attestation.
	if code, _ := send(t, s.Addrs().WireServer, wsGet("/machine?comp=goalstate").signed(key, vecDate).bytes()); code != http.StatusUnauthorized {
		t.Fatalf("request signed with an unattested key: HTTP %d, want 401", code)
	}
	if code, body := send(t, s.Addrs().WireServer, attestation(k.GUID).signed(key, vecDate).bytes()); code != http.StatusOK {
		t.Fatalf("attestation: HTTP %d %s", code, body)
	}
	if ks := getStatus(t, s); ks.KeyGUID == nil || *ks.KeyGUID != k.GUID {
		t.Fatalf("keyGuid after attestation = %v, want %s", ks.KeyGUID, k.GUID)
	}
	if code, _ := send(t, s.Addrs().WireServer, wsGet("/machine?comp=goalstate").signed(key, vecDate).bytes()); code != http.StatusOK {
		t.Fatalf("request signed with the latched key: HTTP %d", code)
	}
	if code, _ := send(t, s.Addrs().WireServer, wsGet("/machine?comp=goalstate").signed(other, vecDate).bytes()); code != http.StatusUnauthorized {
		t.Fatalf("request signed with another secret: HTTP %d, want 401", code)
	}
}

func TestRotationByKeyIncarnationID(t *testing.T) {
	s := startSim(t, Config{Settings: enforceAll(), PresetKey: vecKeyJSON()})
	key := mustSigningKey(t, vecGUID, vecKey)
	goal := wsGet("/machine/?comp=goalstate").signed(key, vecDate).bytes()
	if code, _ := send(t, s.Addrs().WireServer, goal); code != http.StatusOK {
		t.Fatalf("preset key not accepted: HTTP %d", code)
	}
	// A change that keeps the incarnation keeps the key.
	same := enforceAll()
	same.IMDS.Mode = "Audit"
	if err := s.SetSettings(same); err != nil {
		t.Fatal(err)
	}
	if ks := getStatus(t, s); ks.KeyGUID == nil || *ks.KeyGUID != vecGUID {
		t.Fatalf("keyGuid = %v after a settings change without rotation", ks.KeyGUID)
	}
	bumped := enforceAll()
	bumped.KeyIncarnationID = ptr(2)
	if err := s.SetSettings(bumped); err != nil {
		t.Fatal(err)
	}
	ks := getStatus(t, s)
	if ks.KeyGUID != nil {
		t.Fatalf("keyGuid = %q after bumping keyIncarnationId, want null", *ks.KeyGUID)
	}
	if ks.KeyIncarnationID == nil || *ks.KeyIncarnationID != 2 {
		t.Fatalf("keyIncarnationId = %v, want 2", ks.KeyIncarnationID)
	}
	if code, _ := send(t, s.Addrs().WireServer, goal); code != http.StatusUnauthorized {
		t.Fatalf("old key still accepted after rotation: HTTP %d", code)
	}
	// A new key latches under the new incarnation.
	k := issueKey(t, s)
	if k.IncarnationID == nil || *k.IncarnationID != 2 {
		t.Fatalf("new key incarnationId = %v, want 2", k.IncarnationID)
	}
	nk := mustSigningKey(t, k.GUID, k.Key)
	if code, _ := send(t, s.Addrs().WireServer, attestation(k.GUID).signed(nk, vecDate).bytes()); code != http.StatusOK {
		t.Fatalf("attestation after rotation: HTTP %d", code)
	}
	if g, _ := s.LatchedKeyGUID(); g != k.GUID {
		t.Fatalf("latched %q, want %q", g, k.GUID)
	}
	// Rotate (the control endpoint's POST /rotate) forgets it again.
	if n := s.Rotate(); n != 3 {
		t.Fatalf("Rotate() = %d, want 3", n)
	}
	if g, ok := s.LatchedKeyGUID(); ok {
		t.Fatalf("key %s still latched after Rotate", g)
	}
}

func TestStatusShapes(t *testing.T) {
	const ref = "/subscriptions/0/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/inVMAccessControlProfiles/p/versions/1.0.0"
	rules := &msp.Rules{
		Privileges:      []msp.Privilege{{Name: "token", Path: "/metadata/identity/oauth2/token"}},
		Roles:           []msp.Role{{Name: "tokenReader", Privileges: []string{"token"}}},
		Identities:      []msp.Identity{{Name: "root", UserName: "root"}},
		RoleAssignments: []msp.RoleAssignment{{Role: "tokenReader", Identities: []string{"root"}}},
	}
	profile := ProfileVersion{ID: ref, Properties: ProfileProperties{Mode: "Enforce", DefaultAccess: "Deny", Rules: rules}}
	ep := func(mode, ref string) *HostEndpointSettings {
		return &HostEndpointSettings{Mode: mode, InVMAccessControlProfileReferenceID: ref}
	}
	tests := []struct {
		name      string
		version   string
		settings  ProxyAgentSettings
		wantState string
		// v2 only: expected IMDS item defaultAccess and rules
		imdsAccess string
		imdsRules  *msp.Rules
	}{
		{"v2 not configured", StatusV2, ProxyAgentSettings{}, "disabled", "", nil},
		{"v2 enabled false", StatusV2, ProxyAgentSettings{Enabled: ptr(false), WireServer: ep("Enforce", "")}, "disabled", "", nil},
		{"v2 enforce both", StatusV2, enforceAll(), "WireServer Enforce -  IMDS Enforce - HostGA Enforce", "allow", nil},
		{"v2 default mode", StatusV2, ProxyAgentSettings{Enabled: ptr(true)}, "WireServer Audit -  IMDS Audit - HostGA Audit", "allow", nil},
		{"v2 legacy mode", StatusV2, ProxyAgentSettings{Enabled: ptr(true), Mode: "Enforce"}, "WireServer Enforce -  IMDS Enforce - HostGA Enforce", "allow", nil},
		{"v2 audit and disabled", StatusV2, ProxyAgentSettings{Enabled: ptr(true), WireServer: ep("Audit", ""), IMDS: ep("Disabled", "")},
			"WireServer Audit -  IMDS Disabled - HostGA Audit", "allow", nil},
		{"v2 imds profile", StatusV2, ProxyAgentSettings{Enabled: ptr(true), WireServer: ep("Audit", ""), IMDS: ep("", strings.ToUpper(ref))},
			"WireServer Audit -  IMDS Enforce - HostGA Audit", "deny", rules},
		{"v2 endpoint mode overrides profile", StatusV2, ProxyAgentSettings{Enabled: ptr(true), IMDS: ep("Audit", ref)},
			"WireServer Audit -  IMDS Audit - HostGA Audit", "deny", rules},
		{"v2 missing profile fails closed", StatusV2, ProxyAgentSettings{Enabled: ptr(true), IMDS: ep("", ref+"-missing")},
			"WireServer Audit -  IMDS Audit - HostGA Audit", "deny", nil},
		{"v1 disabled", StatusV1, ProxyAgentSettings{Enabled: ptr(false)}, "disabled", "", nil},
		{"v1 both enforce", StatusV1, enforceAll(), "wireserverandimds", "", nil},
		{"v1 wireserver only", StatusV1, ProxyAgentSettings{Enabled: ptr(true), WireServer: ep("Enforce", ""), IMDS: ep("Audit", "")}, "wireserver", "", nil},
		{"v1 audit not expressible", StatusV1, ProxyAgentSettings{Enabled: ptr(true), Mode: "Audit"}, "disabled", "", nil},
	}
	s := startSim(t, Config{Profiles: map[string]ProfileVersion{ref: profile}})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := s.SetSettings(tc.settings); err != nil {
				t.Fatal(err)
			}
			if err := s.SetStatusVersion(tc.version); err != nil {
				t.Fatal(err)
			}
			ks := getStatus(t, s)
			if ks.Version != tc.version {
				t.Fatalf("version %q, want %q", ks.Version, tc.version)
			}
			if got := ks.Derive().State; got != tc.wantState {
				t.Fatalf("state %q, want %q", got, tc.wantState)
			}
			if got := s.Modes(); got.State != tc.wantState {
				t.Fatalf("host enforces state %q, reports %q", got.State, tc.wantState)
			}
			if tc.version == StatusV1 {
				if ks.SecureChannelState == nil || ks.SecureChannelEnabled != nil || ks.AuthorizationRules != nil {
					t.Fatalf("v1 shape wrong: %+v", ks)
				}
				return
			}
			if ks.SecureChannelEnabled == nil || ks.SecureChannelState != nil {
				t.Fatalf("v2 shape wrong: %+v", ks)
			}
			if tc.imdsAccess == "" {
				if *ks.SecureChannelEnabled || ks.AuthorizationRules != nil {
					t.Fatalf("disabled status carries enabled=%v rules=%v", *ks.SecureChannelEnabled, ks.AuthorizationRules)
				}
				return
			}
			ar := ks.AuthorizationRules
			if ar == nil || ar.IMDS == nil || ar.WireServer == nil || ar.HostGA == nil {
				t.Fatalf("authorizationRules incomplete: %+v", ar)
			}
			if ar.IMDS.DefaultAccess != tc.imdsAccess || !reflect.DeepEqual(ar.IMDS.Rules, tc.imdsRules) {
				t.Fatalf("imds item = %+v (rules %+v), want access %s rules %+v", ar.IMDS, ar.IMDS.Rules, tc.imdsAccess, tc.imdsRules)
			}
			if ar.HostGA.Mode != ar.WireServer.Mode || ar.WireServer.ID == ar.IMDS.ID {
				t.Fatalf("hostga %+v / wireserver %+v / imds id %s", ar.HostGA, ar.WireServer, ar.IMDS.ID)
			}
		})
	}
}

// The rule id changes whenever an item's content does, so an agent that
// recompiles only on a new id sees every change (protocol.md §3.6).
func TestRuleIDTracksContent(t *testing.T) {
	s := startSim(t, Config{Settings: enforceAll()})
	id1 := s.Status().AuthorizationRules.IMDS.ID
	if again := s.Status().AuthorizationRules.IMDS.ID; again != id1 {
		t.Fatalf("id not stable: %s then %s", id1, again)
	}
	ps := enforceAll()
	ps.IMDS.Mode = "Audit"
	if err := s.SetSettings(ps); err != nil {
		t.Fatal(err)
	}
	if id2 := s.Status().AuthorizationRules.IMDS.ID; id2 == id1 {
		t.Fatalf("imds id %s unchanged after a mode change", id2)
	}
}
