package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/hostsim"
	"github.com/opengpa/gpa/internal/e2eenv"
	"github.com/opengpa/gpa/proxyagent/audit"
	"github.com/opengpa/gpa/proxyagent/msp"
	"github.com/opengpa/gpa/proxyagent/status"
)

// TestEnforce runs the checks that share one environment with WireServer
// (and so HostGAPlugin) and IMDS in Enforce, without rules. newEnv has
// already required `azure-proxy-agent --status --wait 30` to exit 0.
func TestEnforce(t *testing.T) {
	e := newEnv(t, e2eenv.EnforceSettings)

	t.Run("IMDSAsNobodySigned", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		id := newID(t)
		r := curl(ctx, t, e, e2eenv.Nobody, imdsURL, metadataTrue, idHeader(id))
		if r.Status != http.StatusOK {
			t.Fatalf("nobody's IMDS call: status %d, want 200: %s", r.Status, r.Body)
		}
		if !r.Marked() {
			t.Errorf("response lacks x-ms-azure-host-authorization: value (not redirected?): %v", r.Header)
		}
		var doc map[string]any
		if err := json.Unmarshal(r.Body, &doc); err != nil || doc["compute"] == nil {
			t.Errorf("IMDS body is not the instance document: %v: %s", err, r.Body)
		}
		en := oneEntry(t, e, id)
		checkSigned(t, e, en, false)
		if en.Service != hostsim.IMDS || en.Status != http.StatusOK {
			t.Errorf("journal: service %q status %d, want imds 200", en.Service, en.Status)
		}
	})

	t.Run("WireServerNobodyDeniedRootSigned", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		id := newID(t)
		r := curl(ctx, t, e, e2eenv.Nobody, goalStateURL, wsVersion, idHeader(id))
		if r.Status != http.StatusForbidden {
			t.Errorf("nobody's WireServer call: status %d, want 403: %s", r.Status, r.Body)
		}
		// The agent answers the 403 itself; by then it has sent nothing.
		if got := entriesWithID(t, e, id); len(got) != 0 {
			t.Errorf("nobody's denied WireServer request reached the host: %+v", got)
		}

		id = newID(t)
		r = curl(ctx, t, e, e2eenv.Root, goalStateURL, wsVersion, idHeader(id))
		if r.Status != http.StatusOK {
			t.Fatalf("root's WireServer call: status %d, want 200: %s", r.Status, r.Body)
		}
		if !r.Marked() {
			t.Errorf("root's WireServer response lacks the marker: %v", r.Header)
		}
		if !strings.Contains(string(r.Body), "<GoalState") {
			t.Errorf("body is not a goal state: %s", r.Body)
		}
		en := oneEntry(t, e, id)
		checkSigned(t, e, en, true)
		if en.Service != hostsim.WireServer || en.Status != http.StatusOK {
			t.Errorf("journal: service %q status %d, want wireserver 200", en.Service, en.Status)
		}
	})

	t.Run("BypassOutsideCgroupUnsigned401", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		id := newID(t)
		// Root, in the namespace but not in the attached group: nothing
		// redirects it, so it talks to the host directly, unsigned.
		r := curl(ctx, t, e, e2eenv.Root.Outside(), imdsURL, metadataTrue, idHeader(id))
		if r.Status != http.StatusUnauthorized {
			t.Errorf("bypassing IMDS call: status %d, want 401 from the host: %s", r.Status, r.Body)
		}
		if r.Marked() {
			t.Errorf("bypassing call went through the agent (marker present)")
		}
		en := oneEntry(t, e, id)
		if en.Verdict != hostsim.VerdictUnsigned || en.Status != http.StatusUnauthorized || en.Mode != "enforce" {
			t.Errorf("journal: verdict %q status %d mode %q, want unsigned 401 enforce", en.Verdict, en.Status, en.Mode)
		}
	})

	t.Run("AddressForms", func(t *testing.T) {
		const path = "/metadata/instance?api-version=2021-02-01"
		for _, host := range []string{"[::ffff:169.254.169.254]", "0xa9fea9fe", "2852039166", "169.254.169.254:80"} {
			t.Run(host, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				id := newID(t)
				r := curl(ctx, t, e, e2eenv.Nobody, "http://"+host+path, metadataTrue, idHeader(id))
				if r.Status != http.StatusOK || !r.Marked() {
					t.Errorf("http://%s: status %d marker %v, want 200 through the agent: %s", host, r.Status, r.Marked(), r.Body)
				}
				checkSigned(t, e, oneEntry(t, e, id), false)
			})
		}
	})

	t.Run("ForgedHeadersStripped", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		const (
			forgedAuth   = "Azure-HMAC-SHA256 forged-by-client"
			forgedClaims = `{ "isRoot": "true"}`
			forgedDate   = "Mon, 01 Jan 2024 00:00:00 GMT"
			forgedXFF    = "203.0.113.7"
		)
		for _, c := range []struct {
			name   string
			caller e2eenv.Caller
			url    string
			extra  []string
			isRoot bool
		}{
			{"IMDSNobody", e2eenv.Nobody, imdsURL, []string{metadataTrue}, false},
			{"WireServerRoot", e2eenv.Root, goalStateURL, []string{wsVersion}, true},
		} {
			t.Run(c.name, func(t *testing.T) {
				id := newID(t)
				hdrs := append(append([]string{}, c.extra...), idHeader(id),
					msp.HeaderAuthorization+": "+forgedAuth,
					msp.HeaderClaims+": "+forgedClaims,
					msp.HeaderDate+": "+forgedDate,
					"X-Forwarded-For: "+forgedXFF,
					// Different spellings of the same names.
					"X-MS-AZURE-HOST-CLAIMS: "+forgedClaims,
					"x-forwarded-for: "+forgedXFF)
				r := curl(ctx, t, e, c.caller, c.url, hdrs...)
				entries := entriesWithID(t, e, id)
				for _, en := range entries {
					for _, f := range en.Headers {
						if strings.Contains(f.Value, "forged-by-client") || f.Value == forgedDate || f.Value == forgedXFF ||
							(!c.isRoot && f.Value == forgedClaims) {
							t.Errorf("forged header reached the host: %s: %s", f.Name, f.Value)
						}
						if strings.EqualFold(f.Name, "X-Forwarded-For") {
							t.Errorf("X-Forwarded-For reached the host: %s", f.Value)
						}
					}
				}
				// The agent strips the forged headers and forwards the
				// request with its own, so it is served and signed.
				if r.Status != http.StatusOK || len(entries) != 1 {
					t.Fatalf("status %d with %d host entries, want 200 and 1: %s", r.Status, len(entries), r.Body)
				}
				checkSigned(t, e, entries[0], c.isRoot)
				for _, name := range []string{msp.HeaderAuthorization, msp.HeaderDate} {
					if n := len(headerValues(entries[0].Headers, name)); n != 1 {
						t.Errorf("host received %d %s headers, want 1 (the agent's)", n, name)
					}
				}
			})
		}
	})

	t.Run("AuditCaller", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		curlPath := realPath(t, "curl")

		// A shell that execs curl: the connecting process is the pid the
		// harness started, running curl.
		res, err := e.Run(ctx, e2eenv.Nobody, "sh", "-c",
			`exec curl -sS -o /dev/null -w '%{http_code}' --noproxy '*' -H 'Metadata: true' '`+imdsURL+`'`)
		if err != nil || res.ExitCode != 0 || string(res.Stdout) != "200" {
			t.Fatalf("sh -c 'exec curl': %v exit %d out %q %s", err, res.ExitCode, res.Stdout, res.Stderr)
		}
		rec := waitAuditPID(ctx, t, e, res.PID)
		checkCaller(t, rec, res.PID, e2eenv.NobodyUID, "nobody")
		if rec.Caller.ProcessFullPath != curlPath {
			t.Errorf("processFullPath %q, want %q", rec.Caller.ProcessFullPath, curlPath)
		}
		if rec.Destination.Service != "IMDS" || rec.Status != http.StatusOK || rec.Decision != "allow" {
			t.Errorf("record destination %q status %d decision %q, want IMDS 200 allow", rec.Destination.Service, rec.Status, rec.Decision)
		}

		// Root's curl, directly.
		r := curl(ctx, t, e, e2eenv.Root, goalStateURL, wsVersion)
		if r.Status != http.StatusOK {
			t.Fatalf("root goal state: %d", r.Status)
		}
		rec = waitAuditPID(ctx, t, e, r.PID)
		checkCaller(t, rec, r.PID, 0, "root")
		if !rec.Caller.RunAsElevated || rec.Caller.ProcessFullPath != curlPath {
			t.Errorf("root caller: elevated %v exe %q, want true %q", rec.Caller.RunAsElevated, rec.Caller.ProcessFullPath, curlPath)
		}

		// A process that connects and is gone before the agent accepts:
		// the agent is paused (the kernel still completes the handshake),
		// the client connects, hands the socket to a child that sends the
		// request a second later, and exits; then the agent resumes. The
		// record must name the connecting process (its pid and user, not
		// the child's), with no executable (it is gone) and so no process
		// name: the kernel's comm is the process's own choice
		// (PR_SET_NAME), never a claim.
		if err := e.PauseAgent(); err != nil {
			t.Fatal(err)
		}
		res, err = e.Run(ctx, e2eenv.Nobody, "bash", "-c",
			`exec 3<>/dev/tcp/169.254.169.254/80 || exit 9
(sleep 1; printf 'GET /metadata/instance?api-version=2021-02-01 HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\nConnection: close\r\n\r\n' >&3; exec cat <&3 >/dev/null 2>&1) >/dev/null 2>&1 &
exit 0`)
		if rerr := e.ResumeAgent(); rerr != nil {
			t.Fatal(rerr)
		}
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("connect-and-exit client: %v exit %d %s", err, res.ExitCode, res.Stderr)
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", res.PID)); err == nil {
			t.Logf("pid %d exists again (reused?)", res.PID)
		}
		rec = waitAuditPID(ctx, t, e, res.PID)
		checkCaller(t, rec, res.PID, e2eenv.NobodyUID, "nobody")
		if c := rec.Caller; c.ProcessFullPath != "" || c.ProcessName != "" {
			t.Errorf("exited caller: processFullPath %q processName %q, want both empty", c.ProcessFullPath, c.ProcessName)
		}
		if rec.Status != http.StatusOK {
			t.Errorf("exited caller's request: status %d, want 200", rec.Status)
		}
		t.Logf("short-lived caller recorded as exe %q name %q cmdline %q", rec.Caller.ProcessFullPath, rec.Caller.ProcessName, rec.Caller.ProcessCmdLine)
	})

	t.Run("Status", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		key := latchedKey(t, e)
		// status.json is rewritten every second (monitorIntervalInSeconds).
		var st status.Aggregate
		var err error
		deadline := time.Now().Add(10 * time.Second)
		for {
			st, err = e.StatusFile()
			a := st.ProxyAgentStatus
			if err == nil && a.KeyLatchStatus.Status == status.Running && a.KeyLatchStatus.States["keyGuid"] == key &&
				a.EbpfProgramStatus.Status == status.Running {
				break
			}
			if time.Now().After(deadline) {
				b, _ := os.ReadFile(filepath.Join(e.StatusFolder, "status.json"))
				t.Fatalf("status.json never showed keyLatchStatus RUNNING with keyGuid %s and ebpfProgramStatus RUNNING (err %v):\n%s", key, err, b)
			}
			time.Sleep(100 * time.Millisecond)
		}

		r := curl(ctx, t, e, e2eenv.Root, gpaStatusURL, metadataTrue)
		if r.Status != http.StatusOK {
			t.Fatalf("root /gpa-aggregated-status: %d, want 200: %s", r.Status, r.Body)
		}
		var agg status.Aggregate
		if err := json.Unmarshal(r.Body, &agg); err != nil {
			t.Fatalf("/gpa-aggregated-status is not the status JSON: %v: %s", err, r.Body)
		}
		if a := agg.ProxyAgentStatus; a.KeyLatchStatus.Status != status.Running || a.KeyLatchStatus.States["keyGuid"] != key ||
			a.EbpfProgramStatus.Status != status.Running || a.ProxyListenerStatus.Status != status.Running {
			t.Errorf("/gpa-aggregated-status: %s", r.Body)
		}
		r = curl(ctx, t, e, e2eenv.Nobody, gpaStatusURL, metadataTrue)
		if r.Status != http.StatusForbidden {
			t.Errorf("nobody /gpa-aggregated-status: %d, want 403: %s", r.Status, r.Body)
		}
		if strings.Contains(string(r.Body), key) {
			t.Errorf("nobody's 403 body shows the key guid")
		}
	})

	t.Run("HostNeverServedUnsigned", func(t *testing.T) {
		checkJournalInvariant(t, e, 0)
	})
}

// curl runs e.Curl and fails the test when curl itself failed.
func curl(ctx context.Context, t *testing.T, e *e2eenv.Env, c e2eenv.Caller, url string, headers ...string) e2eenv.Response {
	t.Helper()
	r, err := e.Curl(ctx, c, url, headers...)
	if err != nil {
		t.Fatal(err)
	}
	if r.ExitCode != 0 {
		t.Fatalf("curl %s: exit %d: %s", url, r.ExitCode, r.Stderr)
	}
	return r
}

// realPath resolves a command to its executable as /proc/<pid>/exe shows it.
func realPath(t *testing.T, name string) string {
	t.Helper()
	p, err := lookPath(name)
	if err != nil {
		t.Fatal(err)
	}
	p, err = filepath.EvalSymlinks(p)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// waitAuditPID waits for the audit record of a request by pid.
func waitAuditPID(ctx context.Context, t *testing.T, e *e2eenv.Env, pid int) audit.Record {
	t.Helper()
	rec, err := e.WaitAudit(ctx, func(r audit.Record) bool {
		return r.Caller != nil && int(r.Caller.ProcessID) == pid
	})
	if err != nil {
		recs, _ := e.Audit()
		var b strings.Builder
		for _, r := range recs {
			j, _ := json.Marshal(r)
			b.Write(j)
			b.WriteByte('\n')
		}
		t.Fatalf("no audit record for pid %d: %v\nrecords:\n%s", pid, err, b.String())
	}
	return rec
}

// checkCaller asserts the record's pid and user.
func checkCaller(t *testing.T, rec audit.Record, pid int, uid uint64, user string) {
	t.Helper()
	c := rec.Caller
	if int(c.ProcessID) != pid || c.UserID != uid || c.UserName != user {
		t.Errorf("audit caller pid %d uid %d user %q, want %d %d %q", c.ProcessID, c.UserID, c.UserName, pid, uid, user)
	}
	if c.RunAsElevated != (uid == 0) {
		t.Errorf("audit caller runAsElevated %v for uid %d", c.RunAsElevated, uid)
	}
}

// checkJournalInvariant asserts that the host served no request it should
// have refused (Entry.ServedUnaccepted) among entries after since.
func checkJournalInvariant(t *testing.T, e *e2eenv.Env, since uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	j, err := e.Journal(ctx, since)
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range j {
		if en.ServedUnaccepted() {
			t.Errorf("host served a request it should have refused: %+v", en)
		}
	}
	if len(j) == 0 {
		t.Errorf("host journal is empty; nothing was checked")
	}
}
