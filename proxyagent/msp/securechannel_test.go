package msp

import (
	"encoding/json"
	"strings"
	"testing"
)

// §8 items 13 and 14, and the validation rules of §1.3.
func TestDeriveAndValidate(t *testing.T) {
	tests := []struct {
		name      string
		body      string
		invalid   bool
		state     string
		ws, imds  Mode
		hostGA    Mode
		wsRuleSet string
	}{
		{name: "v1 wireserver", body: `{"authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","keyGuid":null,"secureChannelState":"Wireserver","version":"1.0"}`,
			state: "wireserver", ws: ModeEnforce, imds: ModeAudit, hostGA: ModeEnforce},
		{name: "v1 disabled", body: `{"authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","secureChannelState":"Disabled","version":"1.0"}`,
			state: "disabled", ws: ModeDisabled, imds: ModeDisabled, hostGA: ModeDisabled},
		{name: "v1 both", body: `{"authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","secureChannelState":"WireserverAndImds","version":"1.0"}`,
			state: "wireserverandimds", ws: ModeEnforce, imds: ModeEnforce, hostGA: ModeEnforce},
		{name: "v1 audit is rejected (quirk 2)", body: `{"authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","secureChannelState":"Audit","version":"1.0"}`, invalid: true},
		{name: "v1 without state", body: `{"authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","secureChannelEnabled":true,"version":"1.0"}`, invalid: true},
		{name: "v2 without enabled", body: `{"authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","version":"2.0","secureChannelState":"wireserver"}`, invalid: true},
		{name: "neither", body: `{"authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","version":"2.0"}`, invalid: true},
		{name: "v2 disabled", body: `{"authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","secureChannelEnabled":false,"version":"2.0"}`,
			state: "disabled", ws: ModeDisabled, imds: ModeDisabled, hostGA: ModeDisabled},
		{name: "v2 disabled with rules keeps the items' modes", body: `{"authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","secureChannelEnabled":false,"version":"2.0",
			"authorizationRules":{"wireserver":{"defaultAccess":"deny","mode":"enforce","id":"ws"},"imds":{"defaultAccess":"allow","mode":"audit","id":"im"}}}`,
			state: "disabled", ws: ModeEnforce, imds: ModeAudit, hostGA: ModeEnforce},
		{name: "v2 enabled without rules", body: `{"authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","secureChannelEnabled":true,"version":"2.0"}`,
			state: "disabled", ws: ModeDisabled, imds: ModeDisabled, hostGA: ModeDisabled},
		{name: "v2 enforce both", body: `{"authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","secureChannelEnabled":true,"version":"2.0",
			"authorizationRules":{"wireserver":{"defaultAccess":"deny","mode":"enforce","id":"ws"},"imds":{"defaultAccess":"allow","mode":"Enforce","id":"im"},"hostga":{"defaultAccess":"allow","mode":"disabled","id":"x"}}}`,
			state: "WireServer Enforce -  IMDS Enforce - HostGA Enforce", ws: ModeEnforce, imds: ModeEnforce, hostGA: ModeEnforce},
		{name: "v2 audit imds only", body: `{"authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","secureChannelEnabled":true,"version":"2.0",
			"authorizationRules":{"imds":{"defaultAccess":"allow","mode":"audit","id":"im"}}}`,
			state: "WireServer Disabled -  IMDS Audit - HostGA Disabled", ws: ModeDisabled, imds: ModeAudit, hostGA: ModeDisabled},
		{name: "v2 unknown mode (quirk 20)", body: `{"authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","secureChannelEnabled":true,"version":"2.0",
			"authorizationRules":{"wireserver":{"defaultAccess":"deny","mode":"foo","id":"ws"}}}`,
			state: "WireServer Disabled -  IMDS Disabled - HostGA Disabled", ws: ModeDisabled, imds: ModeDisabled, hostGA: ModeDisabled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ks, err := ParseKeyStatus([]byte(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			_, err = ks.Validate()
			if tt.invalid {
				if err == nil {
					t.Fatal("validation passed, want failure")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			m := ks.Derive()
			if m.State != tt.state || m.WireServer != tt.ws || m.IMDS != tt.imds || m.HostGA != tt.hostGA {
				t.Fatalf("Derive = %+v", m)
			}
		})
	}
}

// A failing status's error also names the scheme and delivery-method
// warnings (§1.3 item 5).
func TestValidationErrorCarriesWarnings(t *testing.T) {
	ks, err := ParseKeyStatus([]byte(`{"authorizationScheme":"Other","keyDeliveryMethod":"mail","secureChannelState":"Audit","version":"1.0"}`))
	if err != nil {
		t.Fatal(err)
	}
	_, err = ks.Validate()
	if err == nil || !strings.Contains(err.Error(), "authorizationScheme") || !strings.Contains(err.Error(), "keyDeliveryMethod") ||
		!strings.Contains(err.Error(), `invalid secureChannelState "Audit"`) {
		t.Errorf("err = %v", err)
	}
}

func TestUnknownModeStaysRawForRedirection(t *testing.T) {
	ks, err := ParseKeyStatus([]byte(`{"authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","secureChannelEnabled":true,"version":"2.0",
		"authorizationRules":{"wireserver":{"defaultAccess":"deny","mode":"foo","id":"ws"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if m := ks.Derive(); m.WireServerRaw != "foo" || m.IMDSRaw != "disabled" {
		t.Fatalf("raw modes = %q %q", m.WireServerRaw, m.IMDSRaw)
	}
}

func TestParseKeyStatusRequiredFields(t *testing.T) {
	for _, body := range []string{
		`{"keyDeliveryMethod":"http","version":"1.0","secureChannelState":"disabled"}`,
		`{"authorizationScheme":"Azure-HMAC-SHA256","version":"1.0","secureChannelState":"disabled"}`,
		`{"authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","secureChannelState":"disabled"}`,
		`{"authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","version":"2.0","secureChannelEnabled":true,"authorizationRules":{"imds":{"mode":"audit","id":"x"}}}`,
		`not json`,
	} {
		if _, err := ParseKeyStatus([]byte(body)); err == nil {
			t.Errorf("ParseKeyStatus(%s) accepted", body)
		}
	}
	if ks, err := ParseKeyStatus([]byte("\xEF\xBB\xBF" + `{"authorizationScheme":"x","keyDeliveryMethod":"vtpm2","version":"1.0","secureChannelState":"disabled"}`)); err != nil {
		t.Fatalf("BOM rejected: %v", err)
	} else if w, err := ks.Validate(); err != nil || !strings.Contains(w, "authorizationScheme") || !strings.Contains(w, "keyDeliveryMethod") {
		t.Fatalf("warnings %q, err %v", w, err)
	}
}

// A rule whose required field is absent or null fails the whole key
// status, as upstream's deserializer does (§3.1: only queryParameters and
// the identity selectors are optional), so a privilege without a path can
// never compile into a prefix that matches every request.
func TestParseKeyStatusRequiredRuleFields(t *testing.T) {
	const head = `{"authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","version":"2.0","secureChannelEnabled":true,` +
		`"authorizationRules":{"wireserver":{"defaultAccess":"deny","mode":"enforce","id":"ws","rules":`
	const priv = `{"name":"p","path":"/machine"}`
	const role = `{"name":"r","privileges":["p"]}`
	const ident = `{"name":"i","userName":"root"}`
	const assign = `{"role":"r","identities":["i"]}`
	rules := func(p, r, i, a string) string {
		return head + `{"privileges":[` + p + `],"roles":[` + r + `],"identities":[` + i + `],"roleAssignments":[` + a + `]}}}}`
	}
	ks, err := ParseKeyStatus([]byte(rules(priv, role, ident, assign)))
	if err != nil {
		t.Fatalf("complete rules rejected: %v", err)
	}
	if got := ks.AuthorizationRules.WireServer.Rules; got.Privileges[0].Path != "/machine" || got.Roles[0].Privileges[0] != "p" ||
		got.Identities[0].UserName != "root" || got.RoleAssignments[0].Identities[0] != "i" {
		t.Fatalf("rules read wrong: %+v", got)
	}
	for _, tc := range []struct{ body, field string }{
		{rules(`{"path":"/machine"}`, role, ident, assign), "name"},
		{rules(`{"name":"p"}`, role, ident, assign), "path"},
		{rules(`{"name":"p","path":null}`, role, ident, assign), "path"},
		{rules(priv, `{"privileges":["p"]}`, ident, assign), "name"},
		{rules(priv, `{"name":"r"}`, ident, assign), "privileges"},
		{rules(priv, role, `{"userName":"root"}`, assign), "name"},
		{rules(priv, role, ident, `{"identities":["i"]}`), "role"},
		{rules(priv, role, ident, `{"role":"r"}`), "identities"},
	} {
		_, err := ParseKeyStatus([]byte(tc.body))
		if err == nil || !strings.Contains(err.Error(), "missing field `"+tc.field+"`") {
			t.Errorf("ParseKeyStatus(%s) = %v, want missing field %s", tc.body, err, tc.field)
		}
	}
}

// Fields are read by their exact names, as upstream's reader does: a
// required field spelt in other letter case is missing, an optional one is
// ignored.
func TestKeyStatusExactFieldNames(t *testing.T) {
	if _, err := ParseKeyStatus([]byte(`{"AuthorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","version":"1.0","secureChannelState":"disabled"}`)); err == nil ||
		!strings.Contains(err.Error(), "missing field `authorizationScheme`") {
		t.Errorf("mis-cased required field: %v", err)
	}
	ks, err := ParseKeyStatus([]byte(`{"authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","version":"2.0","SecureChannelEnabled":true,"secureChannelState":"disabled"}`))
	if err != nil {
		t.Fatal(err)
	}
	if ks.SecureChannelEnabled != nil {
		t.Error("a mis-cased optional field was read")
	}
	if _, err := ks.Validate(); err == nil {
		t.Error("a v2 status whose secureChannelEnabled is mis-cased validated")
	}
	if _, err := ParseIssuedKey([]byte(`{"authorizationScheme":"Azure-HMAC-SHA256","GUID":"g","issued":"x","key":"00"}`)); err == nil ||
		!strings.Contains(err.Error(), "missing field `guid`") {
		t.Errorf("key with mis-cased guid: %v", err)
	}
}

func TestParseKeyNeverEchoesTheKey(t *testing.T) {
	const secret = "4A404E635266556A586E3272357538782F413F4428472B4B6250645367566B59"
	k, err := ParseIssuedKey([]byte(`{"authorizationScheme":"Azure-HMAC-SHA256","guid":"g","issued":"2021-05-05T 12:00:00Z","key":"` + secret + `"}`))
	if err != nil || k.GUID != "g" || k.Key != secret {
		t.Fatalf("ParseKey = %v, %v", k, err)
	}
	for _, s := range []string{k.String(), k.GoString()} {
		if strings.Contains(s, secret) {
			t.Fatal("Key formatting leaks the key")
		}
	}
	for _, body := range []string{`{"guid":"g","issued":"i","key":"` + secret + `"}`, `{"authorizationScheme":"a","issued":"i","key":"` + secret + `"}`,
		`{"authorizationScheme":"a","guid":"g","key":"` + secret + `"}`, `{"authorizationScheme":"a","guid":"g","issued":"i"}`, `{"key":"` + secret + `",`} {
		_, err := ParseIssuedKey([]byte(body))
		if err == nil || strings.Contains(err.Error(), secret) {
			t.Errorf("ParseIssuedKey(%q) error %v", body, err)
		}
	}
}

// An identity selector named with an empty value stays specified through
// decoding and encoding (upstream then requires an empty claim); an absent
// one stays a wildcard.
func TestIdentityEmptySelectorSurvives(t *testing.T) {
	var id Identity
	if err := json.Unmarshal([]byte(`{"name":"x","userName":"","exePath":"/usr/bin/curl"}`), &id); err != nil {
		t.Fatal(err)
	}
	u, g, e, p := id.Selectors()
	if u == nil || *u != "" || g != nil || e == nil || *e != "/usr/bin/curl" || p != nil {
		t.Fatalf("selectors %v %v %v %v", u, g, e, p)
	}
	out, err := json.Marshal(id)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != `{"name":"x","userName":"","exePath":"/usr/bin/curl"}` {
		t.Fatalf("round trip: %s", out)
	}
	built := Identity{Name: "y", GroupName: "adm"}
	if u, g, _, _ := built.Selectors(); u != nil || g == nil || *g != "adm" {
		t.Fatal("an identity built in Go must specify only its non-empty selectors")
	}
	if out, _ := json.Marshal(built); string(out) != `{"name":"y","groupName":"adm"}` {
		t.Fatalf("built identity: %s", out)
	}
}
