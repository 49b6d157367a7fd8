package authz

import (
	"fmt"
	"testing"

	"github.com/opengpa/gpa/proxyagent/claims"
	"github.com/opengpa/gpa/proxyagent/msp"
)

func root() *claims.Claims {
	return &claims.Claims{UserName: "root", RunAsElevated: true, ProcessName: "agent", ProcessFullPath: "/usr/sbin/agent"}
}

func user() *claims.Claims {
	return &claims.Claims{UserID: 1000, UserName: "alice", ProcessName: "curl", ProcessFullPath: "/usr/bin/curl"}
}

func simpleItem(access, mode string) string {
	return fmt.Sprintf(`{"defaultAccess":%q,"mode":%q,"id":"id-%s-%s"}`, access, mode, access, mode)
}

func snapWith(t *testing.T, svc msp.Service, js string) *Snapshot {
	t.Helper()
	rs := Compile(wireItem(t, js))
	switch svc {
	case msp.WireServer:
		return NewSnapshot(rs, nil, nil)
	case msp.IMDS:
		return NewSnapshot(nil, rs, nil)
	case msp.HostGAPlugin:
		return NewSnapshot(nil, nil, rs)
	}
	return NewSnapshot(nil, nil, nil)
}

// §8 item 10 and quirk 11: non-root to msp.WireServer or HostGAPlugin is
// denied in every mode, with or without rules; root with no rules passes.
func TestElevationRequired(t *testing.T) {
	for _, svc := range []msp.Service{msp.WireServer, msp.HostGAPlugin} {
		for _, js := range []string{"", simpleItem("allow", "audit"), simpleItem("allow", "disabled"),
			simpleItem("allow", "enforce"), simpleItem("deny", "audit"), simpleItem("allow", "foo")} {
			s := NewSnapshot(nil, nil, nil)
			if js != "" {
				s = snapWith(t, svc, js)
			}
			d := s.Authorize(Request{Service: svc, Method: "GET", Target: "/machine?comp=goalstate", Caller: user()})
			if d.Result != Deny || d.Service != svc {
				t.Errorf("%s rules %s: non-root got %v (%s), want deny", svc, js, d.Result, d.Reason)
			}
		}
		d := NewSnapshot(nil, nil, nil).Authorize(Request{Service: svc, Method: "GET", Target: "/", Caller: root()})
		if d.Result != Allow || d.RuleID != "" {
			t.Errorf("%s: root without rules got %+v, want allow", svc, d)
		}
	}
}

// §8 item 11: the audit/enforce matrix, for each service.
func TestAuditEnforceMatrix(t *testing.T) {
	for _, svc := range []msp.Service{msp.WireServer, msp.IMDS, msp.HostGAPlugin} {
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
			d := s.Authorize(Request{Service: svc, Method: "GET", Target: "/x", Caller: root()})
			if d.Result != tc.want || d.Mode != tc.wantMode || d.Service != svc || d.Epoch != 7 ||
				d.RuleID != "id-"+tc.access+"-"+tc.mode {
				t.Errorf("%s %s/%s: got %+v, want %v", svc, tc.access, tc.mode, d, tc.want)
			}
		}
	}
}

// msp.IMDS is open to everyone without rules; a non-root caller is judged by
// the rules only.
func TestIMDSOpenByDefault(t *testing.T) {
	d := NewSnapshot(nil, nil, nil).Authorize(Request{Service: msp.IMDS, Method: "GET", Target: "/metadata/instance", Caller: user()})
	if d.Result != Allow || d.Service != msp.IMDS {
		t.Fatalf("got %+v", d)
	}
	d = snapWith(t, msp.IMDS, simpleItem("deny", "enforce")).Authorize(Request{Service: msp.IMDS, Method: "GET", Target: "/", Caller: user()})
	if d.Result != Deny {
		t.Fatalf("enforce deny: got %+v", d)
	}
}

func TestDecisionNamesPrivilegeAndIdentity(t *testing.T) {
	s := snapWith(t, msp.IMDS, testIdentityItem)
	d := s.Authorize(Request{Service: msp.IMDS, Method: "GET", Target: "/test/x", Caller: testClaims()})
	if d.Result != Allow || d.Privilege != "test" || d.Identity != "id" || d.RuleID != "r1" {
		t.Fatalf("got %+v", d)
	}
	d = s.Authorize(Request{Service: msp.IMDS, Method: "GET", Target: "/test/x", Caller: user()})
	if d.Result != Deny || d.Privilege != "test" || d.Identity != "" || d.Reason == "" {
		t.Fatalf("got %+v", d)
	}
}

// §8 item 4: exempt uploads from root pass even under enforce-deny rules
// and even to the proxy's own listener; from non-root they do not.
func TestExemptRequests(t *testing.T) {
	s := snapWith(t, msp.WireServer, simpleItem("deny", "enforce"))
	for _, tc := range []struct {
		method, target string
		c              *claims.Claims
		dest           msp.Service
		want           Result
	}{
		{"PUT", "/vmAgentLog", root(), msp.WireServer, Allow},
		{"POST", "/machine/?comp=telemetrydata", root(), msp.WireServer, Allow},
		{"POST", "/machine/?comp=telemetrydata", root(), msp.ProxyAgent, Allow},
		{"GET", "/vmAgentLog", root(), msp.WireServer, Deny},
		{"POST", "/machine?comp=telemetrydata", root(), msp.WireServer, Deny},
		{"PUT", "/vmAgentLog", user(), msp.WireServer, Deny},
	} {
		d := s.Authorize(Request{Service: tc.dest, Method: tc.method, Target: tc.target, Caller: tc.c})
		if d.Result != tc.want {
			t.Errorf("%s %s elevated=%v: got %v (%s), want %v", tc.method, tc.target, tc.c.RunAsElevated, d.Result, d.Reason, tc.want)
		}
	}
}

func TestServices(t *testing.T) {
	s := NewSnapshot(nil, nil, nil)
	for _, tc := range []struct {
		svc  msp.Service
		c    *claims.Claims
		want Result
	}{
		{msp.ProxyAgent, root(), Deny},
		{msp.Other, user(), Allow},
		{msp.WireServer, user(), Deny},
		{msp.HostGAPlugin, user(), Deny},
		{"", root(), Deny}, // not classified: fail closed
	} {
		d := s.Authorize(Request{Service: tc.svc, Method: "GET", Target: "/", Caller: tc.c})
		if d.Service != tc.svc || d.Result != tc.want {
			t.Errorf("%q: got %s/%v, want %s/%v", tc.svc, d.Service, d.Result, tc.svc, tc.want)
		}
	}
}

func TestNilCallerDenied(t *testing.T) {
	s := NewSnapshot(nil, nil, nil)
	for _, dest := range []msp.Service{msp.IMDS, msp.WireServer, msp.Other} {
		d := s.Authorize(Request{Service: dest, Method: "PUT", Target: "/vmAgentLog"})
		if d.Result != Deny || d.Reason != "no caller identity" {
			t.Errorf("%s: got %+v", dest, d)
		}
	}
}

// Disabled mode ignores the rules but not the root-only check (quirks 11, 20).
func TestDisabledKeepsRootCheck(t *testing.T) {
	s := snapWith(t, msp.WireServer, `{"defaultAccess":"deny","mode":"Disabled","id":"d"}`)
	if d := s.Authorize(Request{Service: msp.WireServer, Method: "GET", Target: "/", Caller: root()}); d.Result != Allow {
		t.Errorf("root: %+v", d)
	}
	if d := s.Authorize(Request{Service: msp.WireServer, Method: "GET", Target: "/", Caller: user()}); d.Result != Deny {
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
	s := NewSnapshot(nil, rs, nil)
	if d := s.Authorize(Request{Service: msp.IMDS, Method: "GET", Target: "/metadata/instance?api-version=1", Caller: user()}); d.Result != Allow || d.Identity != "c" {
		t.Errorf("curl: %+v", d)
	}
	other := user()
	other.ProcessName = "python3"
	if d := s.Authorize(Request{Service: msp.IMDS, Method: "GET", Target: "/metadata/instance", Caller: other}); d.Result != Deny {
		t.Errorf("python3: %+v", d)
	}
	if _, err := CompileDocument([]byte(`{"rules":{"privileges":[{"name":" ","path":"/"}]}}`), msp.ModeEnforce); err == nil {
		t.Error("invalid document compiled")
	}
}
