package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/hostsim"
	"github.com/opengpa/gpa/internal/e2eenv"
	"github.com/opengpa/gpa/internal/testsupport"
	"github.com/opengpa/gpa/proxyagent/audit"
	"github.com/opengpa/gpa/proxyagent/insight"
)

// TestContainers runs clients in a container: their own network
// namespace (a veth into the VM's namespace, default route through it) and
// their own cgroup below the attached one, as Docker's bridge network does.
func TestContainers(t *testing.T) {
	e := newEnv(t, e2eenv.EnforceSettings)
	k := e.NewContainer(t, 0)
	nobody, root := e2eenv.Nobody.In(k), e2eenv.Root.In(k)

	t.Run("IMDSAsNobodySigned", func(t *testing.T) {
		for _, url := range []string{imdsURL, "http://[::ffff:169.254.169.254]/metadata/instance?api-version=2021-02-01"} {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			id := newID(t)
			r := curl(ctx, t, e, nobody, url, metadataTrue, idHeader(id))
			cancel()
			if r.Status != http.StatusOK || !r.Marked() {
				t.Fatalf("%s from the container as nobody: status %d marker %v, want 200 through the agent: %s %s",
					url, r.Status, r.Marked(), r.Body, r.Stderr)
			}
			checkSigned(t, e, oneEntry(t, e, id), false)
		}
	})

	t.Run("WireServerDeniedEvenToRoot", func(t *testing.T) {
		for _, c := range []struct {
			name   string
			caller e2eenv.Caller
		}{{"nobody", nobody}, {"root", root}} {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			id := newID(t)
			r := curl(ctx, t, e, c.caller, goalStateURL, wsVersion, idHeader(id))
			cancel()
			if r.Status != http.StatusForbidden {
				t.Errorf("WireServer from the container as %s: status %d, want 403: %s", c.name, r.Status, r.Body)
			}
			if got := entriesWithID(t, e, id); len(got) != 0 {
				t.Errorf("the container's denied WireServer request reached the host: %+v", got)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		rec, err := e.WaitAudit(ctx, func(r audit.Record) bool {
			return r.Caller != nil && r.Caller.OtherNetns && r.Destination.Service == "WireServer" && r.Decision == "deny"
		})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(rec.Reason, "other network namespaces") {
			t.Errorf("deny reason %q does not say why", rec.Reason)
		}
	})

	t.Run("BypassOutsideCgroupUnsigned401", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		id := newID(t)
		r := curl(ctx, t, e, e2eenv.Root.Outside(), goalStateURL, wsVersion, idHeader(id))
		if r.Status != http.StatusUnauthorized || r.Marked() {
			t.Errorf("bypassing call: status %d marker %v, want 401 from the host", r.Status, r.Marked())
		}
		if en := oneEntry(t, e, id); en.Verdict != hostsim.VerdictUnsigned {
			t.Errorf("journal verdict %q, want unsigned", en.Verdict)
		}
	})

	t.Run("DirectToContainerListener421", func(t *testing.T) {
		// Not redirected (169.254.100.254 is not a metadata address): the
		// kernel filed no record, so the agent answers nothing but 421.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for _, path := range []string{"/metadata/instance", "/provision"} {
			r := curl(ctx, t, e, root, "http://169.254.100.254:3080"+path, metadataTrue)
			if r.Status != http.StatusMisdirectedRequest {
				t.Errorf("direct %s: status %d, want 421", path, r.Status)
			}
		}
	})

	t.Run("AuditNamesTheContainer", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		rec, err := e.WaitAudit(ctx, func(r audit.Record) bool {
			return r.Caller != nil && r.Caller.OtherNetns && r.Destination.Service == "IMDS" && r.Status == 200
		})
		if err != nil {
			t.Fatal(err)
		}
		if rec.Caller.CgroupPath != k.CgroupPath || rec.Caller.UserID != e2eenv.NobodyUID {
			t.Errorf("audit caller cgroup %q uid %d, want %q and nobody", rec.Caller.CgroupPath, rec.Caller.UserID, k.CgroupPath)
		}
		var out, errOut bytes.Buffer
		if code := insight.RunAudit([]string{"report", "--dir", e.LogFolder}, &out, &errOut); code != 0 {
			t.Fatalf("audit report exit %d: %s", code, errOut.String())
		}
		if !strings.Contains(out.String(), "in container cgroup="+k.CgroupPath) {
			t.Errorf("audit report does not name the container's cgroup %s:\n%s", k.CgroupPath, out.String())
		}
		conn, _ := os.ReadFile(filepath.Join(e.LogFolder, "ProxyAgent.Connection.log"))
		if !strings.Contains(string(conn), "from container cgroup "+k.CgroupPath) {
			t.Errorf("connection log does not name the container's cgroup %s", k.CgroupPath)
		}
	})

	t.Run("KillUnderContainerLoad", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		seq0, err := e.LastSeq(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// The loop runs as nobody: its stop file lives in a directory
		// nobody can read (t.TempDir's parent is private).
		stopDir, err := os.MkdirTemp("", "gpa-e2e-stop-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(stopDir)
		if err := os.Chmod(stopDir, 0o755); err != nil {
			t.Fatal(err)
		}
		stop := filepath.Join(stopDir, "stop")
		script := fmt.Sprintf(`while [ ! -e %s ]; do curl -s -o /dev/null --noproxy '*' --max-time 5 -w '%%{http_code} %%header{x-ms-azure-host-authorization}\n' -H '%s' '%s'; done`,
			stop, metadataTrue, imdsURL)
		cmd := exec.CommandContext(ctx, "sh", "-c", script)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := e.Start(cmd, nobody); err != nil {
			t.Fatal(err)
		}
		served := func() int { return strings.Count(out.String(), "200 value") }
		testsupport.WaitForCtx(t, ctx, "container load served before the kill", func() bool { return served() > 0 })
		if err := e.KillAgent(); err != nil {
			t.Fatal(err)
		}
		r, err := e.Curl(ctx, nobody, imdsURL, metadataTrue)
		if err != nil {
			t.Fatal(err)
		}
		if r.ExitCode == 0 {
			t.Errorf("container's IMDS call with the agent down: status %d, want a refused connect", r.Status)
		}
		before := served()
		if err := e.StartAgent(); err != nil {
			t.Fatal(err)
		}
		testsupport.WaitForCtx(t, ctx, "container load served after the restart", func() bool { return served() > before })
		if err := os.WriteFile(stop, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			t.Errorf("load: %v", err)
		}
		for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			if l != "200 value" && !strings.HasPrefix(l, "000") {
				t.Errorf("container load got %q: an answer that did not come from the agent with 200", l)
			}
		}
		j, err := e.Journal(ctx, seq0)
		if err != nil {
			t.Fatal(err)
		}
		imds := 0
		for _, en := range j {
			switch {
			case en.ServedUnaccepted():
				t.Errorf("host served a request it should have refused: %+v", en)
			case en.Verdict == hostsim.VerdictUnsigned || en.Verdict == hostsim.VerdictInvalid || en.Verdict == hostsim.VerdictBadDate:
				t.Errorf("host got %s %s with verdict %s under container load", en.Method, en.Target, en.Verdict)
			case en.Service == hostsim.IMDS:
				imds++
			}
		}
		if imds < served() {
			t.Errorf("host saw %d valid IMDS requests, the container got %d answers through the agent", imds, served())
		}
		t.Logf("container load: %d served, %d requests at the host", served(), len(j))
	})
}

// With allowRootContainersToWireServer, root in a container reaches the
// WireServer (signed, isRoot true); nobody still does not.
func TestContainerRootWireServerSwitch(t *testing.T) {
	if buildErr != nil {
		t.Fatalf("building the binaries: %v", buildErr)
	}
	e := e2eenv.New(t, e2eenv.Config{Bin: bins, Settings: e2eenv.EnforceSettings,
		AgentConfig: map[string]any{"allowRootContainersToWireServer": true}})
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	if code, out, err := e.WaitProvisioned(ctx, 30*time.Second); err != nil || code != 0 {
		t.Fatalf("not provisioned: %d %s %v", code, out, err)
	}
	k := e.NewContainer(t, 0)
	id := newID(t)
	r := curl(ctx, t, e, e2eenv.Root.In(k), goalStateURL, wsVersion, idHeader(id))
	if r.Status != http.StatusOK || !r.Marked() {
		t.Fatalf("root in a container with the switch on: status %d marker %v: %s", r.Status, r.Marked(), r.Body)
	}
	checkSigned(t, e, oneEntry(t, e, id), true)
	id = newID(t)
	if r := curl(ctx, t, e, e2eenv.Nobody.In(k), goalStateURL, wsVersion, idHeader(id)); r.Status != http.StatusForbidden {
		t.Errorf("nobody in a container with the switch on: status %d, want 403", r.Status)
	}
}

// Without a container listener (containerListenAddress ""), a container's
// connect to a metadata address is refused by the kernel, never sent on,
// and ebpfProgramStatus says so.
func TestContainersRefusedWithoutListener(t *testing.T) {
	if buildErr != nil {
		t.Fatalf("building the binaries: %v", buildErr)
	}
	e := e2eenv.New(t, e2eenv.Config{Bin: bins, Settings: e2eenv.EnforceSettings,
		AgentConfig: map[string]any{"containerListenAddress": ""}})
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	if code, out, err := e.WaitProvisioned(ctx, 30*time.Second); err != nil || code != 0 {
		t.Fatalf("not provisioned: %d %s %v", code, out, err)
	}
	seq0, err := e.LastSeq(ctx)
	if err != nil {
		t.Fatal(err)
	}
	k := e.NewContainer(t, 0)
	r, err := e.Curl(ctx, e2eenv.Root.In(k), imdsURL, metadataTrue)
	if err != nil {
		t.Fatal(err)
	}
	if r.ExitCode == 0 || r.Status != 0 {
		t.Errorf("container's IMDS call without a container listener: curl exit %d status %d, want refused", r.ExitCode, r.Status)
	}
	if j, _ := e.Journal(ctx, seq0); len(j) != 0 {
		t.Errorf("the host got %d requests", len(j))
	}
	st, err := e.StatusFile()
	if err != nil {
		t.Fatal(err)
	}
	if msg := st.ProxyAgentStatus.EbpfProgramStatus.Message; !strings.Contains(msg, "containers (other network namespaces) refused") {
		t.Errorf("ebpfProgramStatus message %q does not say containers are refused", msg)
	}
}
