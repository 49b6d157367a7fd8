package authz

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/opengpa/gpa/proxyagent/claims"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// wireItem parses a host authorization item the way the key keeper
// receives it.
func wireItem(t testing.TB, js string) *msp.AuthorizationItem {
	t.Helper()
	var it msp.AuthorizationItem
	if err := json.Unmarshal([]byte(js), &it); err != nil {
		t.Fatalf("bad test item: %v", err)
	}
	return &it
}

func caller(user string, groups ...string) *claims.Claims {
	return &claims.Claims{UserName: user, UserGroups: groups, ProcessName: "curl", ProcessFullPath: "/usr/bin/curl"}
}

// testIdentityItem is §8 item 12's rule: privilege /TEST granted to an
// identity whose four selectors are all "test".
const testIdentityItem = `{"defaultAccess":"allow","mode":"enforce","id":"r1","rules":{
 "privileges":[{"name":"test","path":"/TEST"}],
 "roles":[{"name":"role","privileges":["test"]}],
 "identities":[{"name":"id","userName":"test","groupName":"test","exePath":"/usr/bin/test","processName":"test"}],
 "roleAssignments":[{"role":"role","identities":["id"]}]}}`

func testClaims() *claims.Claims {
	return &claims.Claims{UserName: "test", UserGroups: []string{"wheel", "test"}, ProcessName: "test", ProcessFullPath: "/usr/bin/test"}
}

func TestMatchPrivilegeAndIdentity(t *testing.T) {
	rs := Compile(wireItem(t, testIdentityItem))
	mod := func(f func(c *claims.Claims)) *claims.Claims { c := testClaims(); f(c); return c }
	for _, tc := range []struct {
		name     string
		target   string
		c        *claims.Claims
		allowed  bool
		identity string
	}{
		{"path case-insensitive, all selectors match", "/tESt/test", testClaims(), true, "id"},
		{"userName differs: privilege matched, identity not => deny despite default allow", "/tESt/test",
			mod(func(c *claims.Claims) { c.UserName = "test1" }), false, ""},
		{"group missing", "/test", mod(func(c *claims.Claims) { c.UserGroups = []string{"wheel"} }), false, ""},
		{"processName case differs", "/test", mod(func(c *claims.Claims) { c.ProcessName = "Test" }), false, ""},
		{"exePath equal component-wise", "/test", mod(func(c *claims.Claims) { c.ProcessFullPath = "/usr//bin/./test" }), true, "id"},
		{"exePath differs", "/test", mod(func(c *claims.Claims) { c.ProcessFullPath = "/tmp/test" }), false, ""},
		{"other path falls to default allow", "/other", mod(func(c *claims.Claims) { c.UserName = "x" }), true, ""},
		{"nil caller matched as empty claims", "/test", nil, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := rs.Match(tc.target, tc.c)
			if m.Allowed != tc.allowed || m.Identity != tc.identity {
				t.Fatalf("Match(%q) = %+v, want allowed=%v identity=%q", tc.target, m, tc.allowed, tc.identity)
			}
			if tc.target != "/other" && m.Privilege != "test" {
				t.Fatalf("privilege = %q, want test", m.Privilege)
			}
		})
	}
}

func TestMatchIdentityWithoutSelectorsMatchesEveryone(t *testing.T) {
	rs := Compile(wireItem(t, `{"defaultAccess":"deny","mode":"enforce","id":"x","rules":{
	 "privileges":[{"name":"p","path":"/p"}],"roles":[{"name":"r","privileges":["p"]}],
	 "identities":[{"name":"anyone"}],"roleAssignments":[{"role":"r","identities":["anyone"]}]}}`))
	if m := rs.Match("/p", caller("nobody")); !m.Allowed || m.Identity != "anyone" {
		t.Fatalf("got %+v", m)
	}
}

// queryItem requires key1=value1 and key2=value2 under /test (§8 item 12).
func queryItem(values string) string {
	return `{"defaultAccess":"deny","mode":"enforce","id":"q","rules":{
 "privileges":[{"name":"q","path":"/test","queryParameters":` + values + `}],
 "roles":[{"name":"r","privileges":["q"]}],
 "identities":[{"name":"anyone","userName":"u"}],
 "roleAssignments":[{"role":"r","identities":["anyone"]}]}}`
}

func TestMatchQueryParameters(t *testing.T) {
	rs := Compile(wireItem(t, queryItem(`{"Key1":"Value1","key2":"value2"}`)))
	empty := Compile(wireItem(t, queryItem(`{"key1":"","key2":""}`)))
	res := Compile(wireItem(t, `{"defaultAccess":"deny","mode":"enforce","id":"q","rules":{
	 "privileges":[{"name":"token","path":"/metadata/identity/oauth2/token","queryParameters":{"resource":"https://management.azure.com/"}}],
	 "roles":[{"name":"r","privileges":["token"]}],"identities":[{"name":"u","userName":"u"}],
	 "roleAssignments":[{"role":"r","identities":["u"]}]}}`))
	c := caller("u")
	for _, tc := range []struct {
		rs     *RuleSet
		target string
		want   bool
	}{
		{rs, "/test?key1=value1&key2=value2", true},
		{rs, "/test?KEY1=VALUE1&key2=value2&extra=1", true}, // case-insensitive, extras ignored
		{rs, "/test?k%65y1=valu%651&key2=value2", true},     // encoded key and value
		{rs, "/test?k%65y1=valu%651&k%65y2=valu%652", true},
		{rs, "/test?key1=value1&key2=value3", false},
		{rs, "/test?key1=value1", false},
		{rs, "/test?k%65y1=value1&k%65y2=wrongvalue", false},
		{rs, "/test", false},
		{rs, "/test?=x&key1=value1&key2=value2", true},  // empty key skipped
		{empty, "/test?key1=value1&key2=value2", false}, // "" matches only an empty value
		{empty, "/test?key1=&key2", true},
		{res, "/metadata/identity/oauth2/token?resource=https%3A%2F%2Fmanagement.azure.com%2F", true},
		// %3F in the path: the decoded "?" starts embedded query pairs.
		{res, "/metadata/identity/oauth2/token%3Fresource=https%3A%2F%2Fmanagement.azure.com%2F", true},
		{res, "/metadata/identity/oauth2/token%3Fresource=https://evil/", false},
	} {
		if got := tc.rs.Match(tc.target, c).Allowed; got != tc.want {
			t.Errorf("Match(%q) allowed = %v, want %v", tc.target, got, tc.want)
		}
	}
}

// Quirk 7: only the first occurrence of a constrained key counts.
func TestQuirk7FirstQueryKeyOnly(t *testing.T) {
	rs := Compile(wireItem(t, queryItem(`{"key1":"value1"}`)))
	c := caller("u")
	for _, tc := range []struct {
		target string
		want   bool
	}{
		{"/test?key1=value1&key1=evil", true},
		{"/test?key1=evil&key1=value1", false},
		{"/test?KEY1=evil&key1=value1", false},   // first after decoding and lower-casing
		{"/test?key1=value1%3Fkey1=evil", false}, // value is "value1?key1=evil"
		{"/test%3Fkey1=value1?key1=evil", false}, // real query pairs come before embedded ones
		{"/test%3Fkey1=evil?key1=value1", true},
	} {
		if got := rs.Match(tc.target, c).Allowed; got != tc.want {
			t.Errorf("Match(%q) allowed = %v, want %v", tc.target, got, tc.want)
		}
	}
}

// Quirk 6: the legacy path match is a raw string prefix.
func TestQuirk6RawPrefix(t *testing.T) {
	rs := Compile(wireItem(t, `{"defaultAccess":"allow","mode":"enforce","id":"x","rules":{
	 "privileges":[{"name":"p","path":"/test"}],"roles":[{"name":"r","privileges":["p"]}],
	 "identities":[{"name":"i","userName":"trusted"}],"roleAssignments":[{"role":"r","identities":["i"]}]}}`))
	for _, target := range []string{"/test", "/TEST/x", "/test-evil", "/testing", "/test%2Fx"} {
		m := rs.Match(target, caller("attacker"))
		if m.Allowed || !m.PrivilegeMatched {
			t.Errorf("%s: got %+v, want privilege matched and denied", target, m)
		}
	}
	if m := rs.Match("/tes", caller("attacker")); !m.Allowed || m.PrivilegeMatched {
		t.Errorf("/tes: got %+v, want default allow", m)
	}
}

// Quirk 5: the rules compile only when all four lists are present.
func TestQuirk5AllFourListsRequired(t *testing.T) {
	lists := map[string]string{
		"privileges":      `[{"name":"p","path":"/"}]`,
		"roles":           `[{"name":"r","privileges":["p"]}]`,
		"identities":      `[{"name":"i","userName":"nobody"}]`,
		"roleAssignments": `[{"role":"r","identities":["i"]}]`,
	}
	build := func(skip string) *RuleSet {
		var parts []string
		for k, v := range lists {
			if k != skip {
				parts = append(parts, `"`+k+`":`+v)
			}
		}
		return Compile(wireItem(t, `{"defaultAccess":"allow","mode":"enforce","id":"x","rules":{`+strings.Join(parts, ",")+`}}`))
	}
	if m := build("").Match("/x", caller("u")); m.Allowed {
		t.Fatalf("with all four lists the privilege must deny u: %+v", m)
	}
	for k := range lists {
		rs := build(k)
		if rs.Privileges() != 0 || !rs.Match("/x", caller("u")).Allowed {
			t.Errorf("without %s: %d privileges compiled, want none and default allow", k, rs.Privileges())
		}
	}
	// An empty list is present: the (empty) rules compile.
	rs := Compile(wireItem(t, `{"defaultAccess":"deny","mode":"enforce","id":"x","rules":{
	 "privileges":[{"name":"p","path":"/"}],"roles":[],"identities":[],"roleAssignments":[]}}`))
	if rs.Privileges() != 1 {
		t.Errorf("empty lists: %d privileges, want 1", rs.Privileges())
	}
}

func TestCompileNamesAndReferences(t *testing.T) {
	rs := Compile(wireItem(t, `{"defaultAccess":"Allow","mode":"ENFORCE","id":"x","rules":{
	 "privileges":[{"name":"p","path":"/first"},{"name":"p","path":"/second"},{"name":"P","path":"/upper"}],
	 "roles":[{"name":"r","privileges":["p","missing"]},{"name":"r2","privileges":["P"]}],
	 "identities":[{"name":"i","userName":"a"},{"name":"i","userName":"b"}],
	 "roleAssignments":[{"role":"r","identities":["i","ghost"]},{"role":"nope","identities":["i"]}]}}`))
	if !rs.DefaultAllowed() || rs.Mode() != msp.ModeEnforce {
		t.Fatalf("defaultAllowed=%v mode=%v", rs.DefaultAllowed(), rs.Mode())
	}
	// Last definition wins for privileges and identities.
	if m := rs.Match("/first", caller("b")); !m.Allowed || m.PrivilegeMatched {
		t.Errorf("/first should no longer be a privilege: %+v", m)
	}
	if m := rs.Match("/second", caller("b")); !m.Allowed || m.Identity != "i" {
		t.Errorf("/second for b: %+v", m)
	}
	if m := rs.Match("/second", caller("a")); m.Allowed {
		t.Errorf("/second for a (overridden identity): %+v", m)
	}
	// Names are case-sensitive; P has a role but no assignment.
	if m := rs.Match("/upper", caller("b")); m.Allowed || m.Privilege != "P" {
		t.Errorf("/upper: %+v", m)
	}
	if w := rs.Warnings(); len(w) != 1 || !strings.Contains(w[0], `"nope"`) {
		t.Errorf("warnings = %q, want one about role nope", w)
	}
}

// TestPathRespellings sends many spellings of one protected path through
// the legacy matcher and records upstream's decision for each. The rule
// protects /metadata/identity/oauth2/token for user "trusted" under
// default allow; "attacker" is denied when the rule matches and allowed
// (a bypass of this rule) when it does not. blocked marks spellings the
// proxy already refuses with 403 before authorization (raw "//" or ".."
// after one decode, protocol.md §4.5 step 3), so for those the matcher's
// answer never matters. The remaining "allowed" rows are the legacy
// matcher's known gaps; the canonical pipeline (§3.8) would close them.
func TestPathRespellings(t *testing.T) {
	rs := Compile(wireItem(t, `{"defaultAccess":"allow","mode":"enforce","id":"x","rules":{
	 "privileges":[{"name":"token","path":"/metadata/identity/oauth2/token"}],
	 "roles":[{"name":"r","privileges":["token"]}],"identities":[{"name":"t","userName":"trusted"}],
	 "roleAssignments":[{"role":"r","identities":["t"]}]}}`))
	for _, tc := range []struct {
		target  string
		denied  bool // upstream's legacy decision for the attacker
		blocked bool // refused earlier by msp.CheckTarget (403 or 400)
	}{
		{"/metadata/identity/oauth2/token", true, false},
		{"/METADATA/Identity/OAuth2/TOKEN", true, false},
		{"/metadata/identity/oauth2%2Ftoken", true, true},
		{"/metadata/identity/oauth2%2ftoken", true, true},
		{"/metadata%2Fidentity%2Foauth2%2Ftoken", true, true},
		{"/%6Detadata/identity/oauth2/t%6Fken", true, false},
		{"/metadata/identity/oauth2/token/", true, false},
		{"/metadata/identity/oauth2/tokenx", true, false},
		{"/metadata/identity/oauth2/token;x=y", true, true},
		{"/metadata/identity/oauth2/token%3Fapi-version=1", true, true},
		{"/metadata/identity/oauth2/token?api-version=2018-02-01", true, false},
		{"/metadata/identity/oauth2/token#frag", true, true},
		{"http://169.254.169.254/metadata/identity/oauth2/token", true, false},
		// Legacy gaps: the prefix no longer matches; CheckTarget closes them.
		{"/metadata/identity/oauth2;x=y/token", false, true},
		{"/metadata/./identity/oauth2/token", false, true},
		{"/metadata/%2e/identity/oauth2/token", false, true},
		{"/metadata/%2E/identity/oauth2/token", false, true},
		{"/metadata\\identity/oauth2/token", false, true},
		{"/metadata/identity/oauth2/%252Ftoken", false, true}, // decoded once only
		{"/metadata/ıdentity/oauth2/token", false, true},      // dotless ı does not fold to i
		{"/metadata/%C4%B0dentity/oauth2/token", false, true}, // İ lower-cases to "i̇"
		// Refused by upstream's traversal guard (403).
		{"/metadata//identity/oauth2/token", false, true},
		{"/metadata/x/../identity/oauth2/token", false, true},
		{"/metadata/x/%2e%2E/identity/oauth2/token", false, true},
		{"/metadata/x/.%2e/identity/oauth2/token", false, true},
	} {
		m := rs.Match(tc.target, caller("attacker"))
		if m.Allowed == tc.denied {
			t.Errorf("%s: allowed=%v, upstream gives denied=%v", tc.target, m.Allowed, tc.denied)
		}
		if g := msp.CheckTarget(tc.target) != nil; g != tc.blocked {
			t.Errorf("%s: refused by CheckTarget %v, want %v", tc.target, g, tc.blocked)
		}
		if m := rs.Match(tc.target, caller("trusted")); !m.Allowed {
			t.Errorf("%s: trusted caller denied: %+v", tc.target, m)
		}
	}
}

func FuzzMatch(f *testing.F) {
	rs := Compile(wireItem(f, `{"defaultAccess":"deny","mode":"enforce","id":"x","rules":{
	 "privileges":[{"name":"p","path":"/A%2fΣ","queryParameters":{"K":"v","":""}},{"name":"q","path":""}],
	 "roles":[{"name":"r","privileges":["p","q"]}],
	 "identities":[{"name":"i","userName":"u","exePath":"/usr/bin/x","groupName":"g"}],
	 "roleAssignments":[{"role":"r","identities":["i"]}]}}`))
	for _, s := range []string{"/a?k=v", "/%", "%3F%3f?&=&k", "/\xff\xfe%C0%80", "http://h/a?k=v#x", "", "*", "/%E2%82%3Fk=v"} {
		f.Add(s, "u", "/usr//bin/x")
	}
	f.Fuzz(func(t *testing.T, target, user, exe string) {
		c := &claims.Claims{UserName: user, ProcessFullPath: exe, UserGroups: []string{"g"}}
		m := rs.Match(target, c)
		if m.Allowed && m.Identity != "i" {
			t.Fatalf("allowed without the only identity: %+v", m)
		}
		_ = msp.Lower(target)
		_ = samePath(exe, target)
	})
}
