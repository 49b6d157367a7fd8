package authz

import (
	"fmt"
	"testing"

	"github.com/opengpa/gpa/proxyagent/claims"
	"github.com/opengpa/gpa/proxyagent/msp"
)

const testCID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func containerCaller(uid uint64, cgroup string) *claims.Claims {
	c := &claims.Claims{UserID: uid, UserName: "u", RunAsElevated: uid == 0, ProcessName: "curl",
		ProcessFullPath: "/usr/bin/curl", OtherNetns: true}
	c.Workload = claims.ParseWorkload(cgroup)
	return c
}

// WireServer and HostGAPlugin are the platform's channels: a caller in
// another network namespace is denied them even as root, unless the store
// lets elevated containers through; IMDS is judged as for any process.
func TestContainersAndHostChannels(t *testing.T) {
	rootC := containerCaller(0, "/docker/"+testCID)
	userC := containerCaller(1000, "/docker/"+testCID)
	for _, tc := range []struct {
		allowRoot bool
		svc       msp.Service
		c         *claims.Claims
		want      Result
	}{
		{false, msp.WireServer, rootC, Deny},
		{false, msp.HostGAPlugin, rootC, Deny},
		{false, msp.WireServer, userC, Deny},
		{false, msp.IMDS, userC, Allow},
		{true, msp.WireServer, rootC, Allow},
		{true, msp.HostGAPlugin, rootC, Allow},
		{true, msp.WireServer, userC, Deny},
		{false, msp.WireServer, root(), Allow}, // the VM's own root, unchanged
	} {
		s := NewStore(StoreConfig{Logger: quietLogger(), RootContainersToWireServer: tc.allowRoot})
		// An exempt upload is no way around it either.
		for _, target := range []string{"/machine?comp=goalstate", "/vmAgentLog"} {
			method := "GET"
			if target == "/vmAgentLog" {
				method = "PUT"
			}
			d := s.Authorize(Request{Service: tc.svc, Method: method, Target: target, Caller: tc.c})
			if d.Result != tc.want {
				t.Errorf("allowRoot=%v %s %s uid %d container=%v: %v (%s), want %v", tc.allowRoot, tc.svc, target,
					tc.c.UserID, tc.c.OtherNetns, d.Result, d.Reason, tc.want)
			}
		}
	}
}

// Local rules files may select identities by cgroup path prefix or
// container id; host-delivered rules keep upstream's schema, where those
// selectors mean nothing.
func TestWorkloadSelectors(t *testing.T) {
	doc := func(sel string) string {
		return fmt.Sprintf(`{"defaultAccess":"deny","rules":{
		 "privileges":[{"name":"token","path":"/metadata/identity"}],"roles":[{"name":"r","privileges":["token"]}],
		 "identities":[{"name":"app",%s}],"roleAssignments":[{"role":"r","identities":["app"]}]}}`, sel)
	}
	inApp := containerCaller(1000, "/kubepods.slice/app/docker-"+testCID+".scope")
	elsewhere := containerCaller(1000, "/kubepods.slice/apple/docker-"+testCID[:63]+"0.scope")
	vmProc := user()
	for _, tc := range []struct {
		sel  string
		c    *claims.Claims
		want bool
	}{
		{`"cgroupPath":"/kubepods.slice/app"`, inApp, true},
		{`"cgroupPath":"/kubepods.slice/app/"`, inApp, true},
		{`"cgroupPath":"/kubepods.slice/app"`, elsewhere, false}, // whole segments only
		{`"cgroupPath":"/"`, inApp, true},
		{`"cgroupPath":"/"`, vmProc, false}, // no known cgroup path
		{`"containerId":"` + testCID + `"`, inApp, true},
		{`"containerId":"` + testCID[:12] + `"`, inApp, true},
		{`"containerId":"` + testCID[:11] + `"`, inApp, false},
		{`"containerId":"` + testCID + `"`, elsewhere, false},
		{`"containerId":"` + testCID + `","userName":"root"`, inApp, false}, // selectors are ANDed
	} {
		rs, err := CompileDocument([]byte(doc(tc.sel)), msp.ModeEnforce)
		if err != nil {
			t.Fatalf("%s: %v", tc.sel, err)
		}
		if m := rs.Match("/metadata/identity/oauth2/token", tc.c); m.Allowed != tc.want {
			t.Errorf("%s for %q: allowed=%v (%s), want %v", tc.sel, tc.c.CgroupPath, m.Allowed, m.Reason, tc.want)
		}
	}

	// From the host, an identity whose only selector is a workload one
	// keeps upstream's meaning: no selector, everyone.
	s := NewStore(StoreConfig{Logger: quietLogger()})
	update(s, rulesOf(t, "", `{"id":"h","mode":"enforce",`+doc(`"containerId":"` + testCID + `"`)[1:], ""))
	if d := s.Authorize(Request{Service: msp.IMDS, Method: "GET", Target: "/metadata/identity/x", Caller: vmProc}); d.Result != Allow {
		t.Errorf("host rule with a containerId selector: %v (%s), want upstream's wildcard", d.Result, d.Reason)
	}
}
