package authz

import (
	"bytes"
	"io"
	"net/http"
	"testing"

	"github.com/opengpa/gpa/hostsim"
	"github.com/opengpa/gpa/internal/simtest"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// Quirk 5 through the simulated host: the host sends the rules schema with
// presence kept, so a profile whose roles, identities and assignments are
// present but empty compiles its privileges (a matching request is then
// denied: no identity is assigned), while the same profile with those
// lists absent compiles none (every request gets the default access).
func TestQuirk5ThroughHostsim(t *testing.T) {
	const ref = "/subscriptions/0/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/inVMAccessControlProfiles/imds/versions/1.0.0"
	priv := []msp.Privilege{{Name: "instance", Path: "/metadata/instance"}}
	for _, tc := range []struct {
		name     string
		rules    *msp.Rules
		wantBody string // must appear in the status the host serves
		want     Result
	}{
		{"present but empty", &msp.Rules{Privileges: priv, Roles: []msp.Role{}, Identities: []msp.Identity{},
			RoleAssignments: []msp.RoleAssignment{}}, `"roles":[],"identities":[],"roleAssignments":[]`, Deny},
		{"absent", &msp.Rules{Privileges: priv}, `"rules":{"privileges":[{"name":"instance","path":"/metadata/instance"}]}`, Allow},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sim := simtest.Start(t, hostsim.Config{IMDSRateLimit: -1, Logger: quietLogger()})
			on := true
			if err := sim.SetProfile(ref, hostsim.ProfileVersion{ID: ref, Properties: hostsim.ProfileProperties{
				Mode: "Enforce", DefaultAccess: "Allow", Rules: tc.rules}}); err != nil {
				t.Fatal(err)
			}
			if err := sim.SetSettings(hostsim.ProxyAgentSettings{Enabled: &on,
				WireServer: &hostsim.HostEndpointSettings{Mode: "Audit"},
				IMDS:       &hostsim.HostEndpointSettings{InVMAccessControlProfileReferenceID: ref}}); err != nil {
				t.Fatal(err)
			}
			req, _ := http.NewRequest(http.MethodGet, "http://"+sim.Addrs().WireServer+msp.StatusPath, nil)
			req.Header.Set("Metadata", "True")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !bytes.Contains(body, []byte(tc.wantBody)) {
				t.Fatalf("status body lacks %s:\n%s", tc.wantBody, body)
			}
			ks, err := msp.ParseKeyStatus(body)
			if err != nil {
				t.Fatal(err)
			}
			s := NewStore(StoreConfig{Logger: quietLogger()})
			if _, err := s.Apply(ks.AuthorizationRules); err != nil {
				t.Fatal(err)
			}
			d := s.Authorize(Request{Service: msp.IMDS, Method: "GET", Target: "/metadata/instance?api-version=1", Caller: root()})
			if d.Result != tc.want {
				t.Fatalf("decision %v (%s), want %v", d.Result, d.Reason, tc.want)
			}
		})
	}
}
