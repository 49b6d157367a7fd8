package insight

import (
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/proxyagent/claims"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// audit report groups per container: the same program as the same user in
// two containers and on the VM is three callers, and the text names each
// container's id and cgroup path.
func TestReportGroupsPerContainer(t *testing.T) {
	const idA = "aaaaaaaaaaaa0123456789abcdef0123456789abcdef0123456789abcdef0123"
	const idB = "bbbbbbbbbbbb0123456789abcdef0123456789abcdef0123456789abcdef0123"
	in := func(id string) *claims.Claims {
		c := *person("nobody", 65534, "/usr/bin/curl", "nogroup")
		c.OtherNetns = true
		c.Workload = claims.ParseWorkload("/system.slice/docker-" + id + ".scope")
		return &c
	}
	vm := person("nobody", 65534, "/usr/bin/curl", "nogroup")
	calls := []call{
		{at: 0, svc: msp.IMDS, who: in(idA), method: "GET", target: "/metadata/instance"},
		{at: time.Minute, svc: msp.IMDS, who: in(idA), method: "GET", target: "/metadata/instance"},
		{at: 2 * time.Minute, svc: msp.IMDS, who: in(idB), method: "GET", target: "/metadata/instance"},
		{at: 3 * time.Minute, svc: msp.IMDS, who: vm, method: "GET", target: "/metadata/instance"},
	}
	dir := t.TempDir()
	writeLog(t, dir, calls, 0)
	code, out, errs := run(RunAudit, "report", "--dir", dir, "--json")
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	r := decodeJSON[Report](t, out)
	imds := findService(t, r, "IMDS")
	counts := map[string]int{}
	for _, c := range imds.Callers {
		id := "vm"
		if c.Caller.Container != nil {
			id = c.Caller.Container.ContainerID
		}
		counts[id] = c.Requests
	}
	if len(counts) != 3 || counts[idA] != 2 || counts[idB] != 1 || counts["vm"] != 1 {
		t.Errorf("callers by container %v", counts)
	}
	code, text, errs := run(RunAudit, "report", "--dir", dir)
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{"in container " + idA[:12], "cgroup=/system.slice/docker-" + idB + ".scope"} {
		if !strings.Contains(text, want) {
			t.Errorf("report lacks %q:\n%s", want, text)
		}
	}
}

// A caller in another user namespace is not merged with a caller of the
// same user whose executable is unknown for another reason (it exited),
// and the text says why its executable is missing.
func TestReportSeparatesOtherUserNS(t *testing.T) {
	gone := person("nobody", 65534, "", "nogroup")
	ns := *gone
	ns.OtherUserNS = true
	dir := t.TempDir()
	writeLog(t, dir, []call{
		{at: 0, svc: msp.IMDS, who: gone, method: "GET", target: "/metadata/instance"},
		{at: time.Minute, svc: msp.IMDS, who: &ns, method: "GET", target: "/metadata/instance"},
	}, 0)
	code, out, errs := run(RunAudit, "report", "--dir", dir, "--json")
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if imds := findService(t, decodeJSON[Report](t, out), "IMDS"); len(imds.Callers) != 2 {
		t.Errorf("%d callers, want 2: %+v", len(imds.Callers), imds.Callers)
	}
	code, text, errs := run(RunAudit, "report", "--dir", dir)
	if code != ExitOK || !strings.Contains(text, "in another user namespace") {
		t.Errorf("exit %d, report text lacks the namespace:\n%s%s", code, text, errs)
	}
}
