package authz

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/opengpa/gpa/proxyagent/claims"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// testDests are loopback stand-ins for the production addresses.
var testDests = Destinations{
	WireServer: netip.MustParseAddrPort("127.0.0.2:8080"),
	HostGA:     netip.MustParseAddrPort("127.0.0.2:32526"),
	IMDS:       netip.MustParseAddrPort("127.0.0.3:8080"),
	Listener:   netip.MustParseAddrPort("127.0.0.1:3999"),
}

func root() *claims.Claims {
	return &claims.Claims{UserName: "root", RunAsElevated: true, ProcessName: "agent", ProcessFullPath: "/usr/sbin/agent"}
}

func user() *claims.Claims {
	return &claims.Claims{UserID: 1000, UserName: "alice", ProcessName: "curl", ProcessFullPath: "/usr/bin/curl"}
}

func simpleItem(access, mode string) string {
	return fmt.Sprintf(`{"defaultAccess":%q,"mode":%q,"id":"id-%s-%s"}`, access, mode, access, mode)
}

func snapWith(t *testing.T, svc Service, js string) *Snapshot {
	t.Helper()
	rs := Compile(wireItem(t, js))
	switch svc {
	case WireServer:
		return NewSnapshot(testDests, rs, nil, nil)
	case IMDS:
		return NewSnapshot(testDests, nil, rs, nil)
	case HostGA:
		return NewSnapshot(testDests, nil, nil, rs)
	}
	return NewSnapshot(testDests, nil, nil, nil)
}

func destOf(svc Service) netip.AddrPort {
	switch svc {
	case WireServer:
		return testDests.WireServer
	case IMDS:
		return testDests.IMDS
	case HostGA:
		return testDests.HostGA
	}
	return netip.MustParseAddrPort("127.0.0.9:80")
}

// §8 item 10 and quirk 11: non-root to WireServer or HostGAPlugin is
// denied in every mode, with or without rules; root with no rules passes.
func TestElevationRequired(t *testing.T) {
	for _, svc := range []Service{WireServer, HostGA} {
		for _, js := range []string{"", simpleItem("allow", "audit"), simpleItem("allow", "disabled"),
			simpleItem("allow", "enforce"), simpleItem("deny", "audit"), simpleItem("allow", "foo")} {
			s := NewSnapshot(testDests, nil, nil, nil)
			if js != "" {
				s = snapWith(t, svc, js)
			}
			d := s.Authorize(Request{Dest: destOf(svc), Method: "GET", Target: "/machine?comp=goalstate", Caller: user()})
			if d.Result != Deny || d.Service != svc {
				t.Errorf("%s rules %s: non-root got %v (%s), want deny", svc, js, d.Result, d.Reason)
			}
		}
		d := NewSnapshot(testDests, nil, nil, nil).Authorize(Request{Dest: destOf(svc), Method: "GET", Target: "/", Caller: root()})
		if d.Result != Allow || d.RuleID != "" {
			t.Errorf("%s: root without rules got %+v, want allow", svc, d)
		}
	}
}

// §8 item 11: the audit/enforce matrix, for each service.
func TestAuditEnforceMatrix(t *testing.T) {
	for _, svc := range []Service{WireServer, IMDS, HostGA} {
		for _, tc := range []struct {
			access, mode string
			want         Result
			wantMode     msp.Mode
		}{
			{"deny", "audit", AllowAudited, msp.ModeAudit},
			{"deny", "enforce", Deny, msp.ModeEnforce},
			{"allow", "audit", Allow, msp.ModeAudit},
			{"allow", "enforce", Allow, msp.ModeEnforce},
			{"deny", "disabled", Allow, msp.ModeDisabled},
			{"DENY", "Enforce", Deny, msp.ModeEnforce},
			{"deny", "foo", Allow, msp.ModeDisabled}, // quirk 20
		} {
			s := snapWith(t, svc, simpleItem(tc.access, tc.mode))
			s.epoch = 7
			d := s.Authorize(Request{Dest: destOf(svc), Method: "GET", Target: "/x", Caller: root()})
			if d.Result != tc.want || d.Mode != tc.wantMode || d.Service != svc || d.Epoch != 7 ||
				d.RuleID != "id-"+tc.access+"-"+tc.mode {
				t.Errorf("%s %s/%s: got %+v, want %v", svc, tc.access, tc.mode, d, tc.want)
			}
		}
	}
}

// IMDS is open to everyone without rules; a non-root caller is judged by
// the rules only.
func TestIMDSOpenByDefault(t *testing.T) {
	d := NewSnapshot(testDests, nil, nil, nil).Authorize(Request{Dest: testDests.IMDS, Method: "GET", Target: "/metadata/instance", Caller: user()})
	if d.Result != Allow || d.Service != IMDS {
		t.Fatalf("got %+v", d)
	}
	d = snapWith(t, IMDS, simpleItem("deny", "enforce")).Authorize(Request{Dest: testDests.IMDS, Method: "GET", Target: "/", Caller: user()})
	if d.Result != Deny {
		t.Fatalf("enforce deny: got %+v", d)
	}
}

func TestDecisionNamesPrivilegeAndIdentity(t *testing.T) {
	s := snapWith(t, IMDS, testIdentityItem)
	d := s.Authorize(Request{Dest: testDests.IMDS, Method: "GET", Target: "/test/x", Caller: testClaims()})
	if d.Result != Allow || d.Privilege != "test" || d.Identity != "id" || d.RuleID != "r1" {
		t.Fatalf("got %+v", d)
	}
	d = s.Authorize(Request{Dest: testDests.IMDS, Method: "GET", Target: "/test/x", Caller: user()})
	if d.Result != Deny || d.Privilege != "test" || d.Identity != "" || d.Reason == "" {
		t.Fatalf("got %+v", d)
	}
}

// §8 item 4: exempt uploads from root pass even under enforce-deny rules
// and even to the proxy's own listener; from non-root they do not.
func TestExemptRequests(t *testing.T) {
	s := snapWith(t, WireServer, simpleItem("deny", "enforce"))
	for _, tc := range []struct {
		method, target string
		c              *claims.Claims
		dest           netip.AddrPort
		want           Result
	}{
		{"PUT", "/vmAgentLog", root(), testDests.WireServer, Allow},
		{"POST", "/machine/?comp=telemetrydata", root(), testDests.WireServer, Allow},
		{"POST", "/machine/?comp=telemetrydata", root(), testDests.Listener, Allow},
		{"GET", "/vmAgentLog", root(), testDests.WireServer, Deny},
		{"POST", "/machine?comp=telemetrydata", root(), testDests.WireServer, Deny},
		{"PUT", "/vmAgentLog", user(), testDests.WireServer, Deny},
	} {
		d := s.Authorize(Request{Dest: tc.dest, Method: tc.method, Target: tc.target, Caller: tc.c})
		if d.Result != tc.want {
			t.Errorf("%s %s elevated=%v: got %v (%s), want %v", tc.method, tc.target, tc.c.RunAsElevated, d.Result, d.Reason, tc.want)
		}
	}
}

func TestDestinations(t *testing.T) {
	s := NewSnapshot(testDests, nil, nil, nil)
	for _, tc := range []struct {
		dest string
		c    *claims.Claims
		svc  Service
		want Result
	}{
		{"127.0.0.1:3999", root(), ProxyAgent, Deny},
		{"127.0.0.9:80", user(), Other, Allow},
		{"127.0.0.2:8081", user(), Other, Allow},
		{"[::ffff:127.0.0.2]:8080", user(), WireServer, Deny}, // v4-mapped is v4
		{"[::1]:8080", user(), Other, Allow},
	} {
		d := s.Authorize(Request{Dest: netip.MustParseAddrPort(tc.dest), Method: "GET", Target: "/", Caller: tc.c})
		if d.Service != tc.svc || d.Result != tc.want {
			t.Errorf("%s: got %s/%v, want %s/%v", tc.dest, d.Service, d.Result, tc.svc, tc.want)
		}
	}
	def := DefaultDestinations()
	for addr, svc := range map[string]Service{"168.63.129.16:80": WireServer, "168.63.129.16:32526": HostGA,
		"169.254.169.254:80": IMDS, "127.0.0.1:3080": ProxyAgent, "168.63.129.16:53": Other} {
		if got := def.Service(netip.MustParseAddrPort(addr)); got != svc {
			t.Errorf("default %s = %s, want %s", addr, got, svc)
		}
	}
	if got := (Destinations{}).Service(netip.MustParseAddrPort("127.0.0.1:3080")); got != ProxyAgent {
		t.Errorf("zero Destinations: listener = %s", got)
	}
}

func TestNilCallerDenied(t *testing.T) {
	s := NewSnapshot(testDests, nil, nil, nil)
	for _, dest := range []netip.AddrPort{testDests.IMDS, testDests.WireServer, netip.MustParseAddrPort("127.0.0.9:80")} {
		d := s.Authorize(Request{Dest: dest, Method: "PUT", Target: "/vmAgentLog"})
		if d.Result != Deny || d.Reason != "no caller identity" {
			t.Errorf("%s: got %+v", dest, d)
		}
	}
}

// Disabled mode ignores the rules but not the root-only check (quirks 11, 20).
func TestDisabledKeepsRootCheck(t *testing.T) {
	s := snapWith(t, WireServer, `{"defaultAccess":"deny","mode":"Disabled","id":"d"}`)
	if d := s.Authorize(Request{Dest: testDests.WireServer, Method: "GET", Target: "/", Caller: root()}); d.Result != Allow {
		t.Errorf("root: %+v", d)
	}
	if d := s.Authorize(Request{Dest: testDests.WireServer, Method: "GET", Target: "/", Caller: user()}); d.Result != Deny {
		t.Errorf("user: %+v", d)
	}
}

func TestCompileDocumentReplay(t *testing.T) {
	doc := []byte(`{"defaultAccess":"deny","rules":{"privileges":[{"name":"inst","path":"/metadata/instance"}],
	 "roles":[{"name":"r","privileges":["inst"]}],"identities":[{"name":"c","processName":"curl"}],
	 "roleAssignments":[{"role":"r","identities":["c"]}]}}`)
	rs, err := CompileDocument(doc, msp.ModeEnforce)
	if err != nil {
		t.Fatal(err)
	}
	s := NewSnapshot(testDests, nil, rs, nil)
	if d := s.Authorize(Request{Dest: testDests.IMDS, Method: "GET", Target: "/metadata/instance?api-version=1", Caller: user()}); d.Result != Allow || d.Identity != "c" {
		t.Errorf("curl: %+v", d)
	}
	other := user()
	other.ProcessName = "python3"
	if d := s.Authorize(Request{Dest: testDests.IMDS, Method: "GET", Target: "/metadata/instance", Caller: other}); d.Result != Deny {
		t.Errorf("python3: %+v", d)
	}
	if _, err := CompileDocument([]byte(`{"rules":{"privileges":[{"name":" ","path":"/"}]}}`), msp.ModeEnforce); err == nil {
		t.Error("invalid document compiled")
	}
}
