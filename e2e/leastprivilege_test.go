package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opengpa/gpa/internal/e2eenv"
	"github.com/opengpa/gpa/internal/testenv"
	"github.com/opengpa/gpa/internal/testsupport"
	"github.com/opengpa/gpa/proxyagent/audit"
	"github.com/opengpa/gpa/proxyagent/insight"
)

// TestAuditToLeastPrivilege is issue 7's end-to-end flow: a workload of
// several processes and users runs with IMDS in Audit; `rules suggest`
// turns the audit log into an inVMAccessControlProfile; the host is given
// that profile in Enforce; the same workload still passes and a process
// that was never seen is denied by the agent before reaching the host.
func TestAuditToLeastPrivilege(t *testing.T) {
	e := newEnv(t, `{"enabled":true,"keyIncarnationId":1,"wireServer":{"mode":"Enforce"},"imds":{"mode":"Audit"}}`)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// A copy of curl at another path is "a new, unexpected process": same
	// program, different executable, so an exe-based rule must deny it.
	rogueDir, err := os.MkdirTemp("", "gpa-e2e-rogue-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(rogueDir) })
	rogue := filepath.Join(rogueDir, "fetcher")
	if err := copyExecutable("/usr/bin/curl", rogue); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(rogueDir, 0o755); err != nil {
		t.Fatal(err)
	}

	const (
		instance = "http://169.254.169.254/metadata/instance?api-version=2021-02-01"
		token    = "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F"
	)
	nobody := e2eenv.Nobody
	// The workload: nobody's curl reads the instance document, nobody's
	// bash (its own HTTP client over /dev/tcp) reads it too, and root's
	// curl gets a token.
	workload := func(phase string) {
		t.Helper()
		if r, err := e.Curl(ctx, nobody, instance, metadataTrue); err != nil || r.Status != 200 || !r.Marked() {
			t.Fatalf("%s: nobody curl instance: status %d marked %v err %v", phase, r.Status, r.Marked(), err)
		}
		if r, err := e.Curl(ctx, e2eenv.Root, token, metadataTrue); err != nil || r.Status != 200 || !r.Marked() {
			t.Fatalf("%s: root curl token: status %d marked %v err %v", phase, r.Status, r.Marked(), err)
		}
		script := `exec 3<>/dev/tcp/169.254.169.254/80; printf 'GET /metadata/instance/compute?api-version=2021-02-01 HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\nConnection: close\r\n\r\n' >&3; head -n1 <&3`
		res, err := e.Run(ctx, nobody, "bash", "-c", script)
		if err != nil || !strings.Contains(string(res.Stdout), " 200 ") {
			t.Fatalf("%s: nobody bash instance/compute: %q %s err %v", phase, res.Stdout, res.Stderr, err)
		}
	}
	workload("audit")
	if _, err := e.WaitAudit(ctx, func(r audit.Record) bool {
		return strings.HasPrefix(r.Target, "/metadata/instance/compute") && r.Caller != nil && r.Caller.ProcessName == "bash"
	}); err != nil {
		t.Fatalf("audit log never showed the bash request: %v", err)
	}

	// The report names every caller of IMDS.
	var out, errOut bytes.Buffer
	if code := insight.RunAudit([]string{"report", "--dir", e.LogFolder, "--json"}, &out, &errOut); code != 0 {
		t.Fatalf("audit report exit %d: %s", code, errOut.String())
	}
	for _, exe := range []string{"/usr/bin/curl", "/usr/bin/bash"} {
		if !strings.Contains(out.String(), exe) {
			t.Errorf("audit report does not name %s:\n%s", exe, out.String())
		}
	}

	// Suggest the least-privilege IMDS profile, in Enforce.
	out.Reset()
	errOut.Reset()
	if code := insight.RunRules([]string{"suggest", "--dir", e.LogFolder, "--service", "imds", "--format", "profile",
		"--mode", "enforce"}, &out, &errOut); code != 0 {
		t.Fatalf("rules suggest exit %d: %s", code, errOut.String())
	}
	profile := out.Bytes()
	t.Logf("suggested profile:\n%s", profile)
	rulesFile := filepath.Join(e.Dir, "imds-profile.json")
	if err := os.WriteFile(rulesFile, profile, 0o600); err != nil {
		t.Fatal(err)
	}
	// Replaying history against it changes nothing that was legitimate.
	errOut.Reset()
	var testOut bytes.Buffer
	if code := insight.RunRules([]string{"test", rulesFile, "--dir", e.LogFolder, "--service", "imds"}, &testOut, &errOut); code != 0 {
		t.Fatalf("rules test exit %d:\n%s%s", code, testOut.String(), errOut.String())
	}

	// Give the host the profile and switch IMDS to Enforce through it.
	const armID = "/subscriptions/0/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/inVMAccessControlProfiles/imds/versions/1.0.0"
	if _, err := e.Control(ctx, "PUT", "/profiles/"+url.PathEscape(armID), profile); err != nil {
		t.Fatal(err)
	}
	settings, _ := json.Marshal(map[string]any{"enabled": true, "keyIncarnationId": 1,
		"wireServer": map[string]string{"mode": "Enforce"},
		"imds":       map[string]string{"inVMAccessControlProfileReferenceId": armID}})
	if err := e.SetSettings(ctx, string(settings)); err != nil {
		t.Fatal(err)
	}
	testsupport.WaitForCtx(t, ctx, "agent to enforce the IMDS profile", func() bool {
		st, err := e.StatusFile()
		return err == nil && st.ProxyAgentStatus.KeyLatchStatus.States["imdsRuleId"] != "" &&
			strings.Contains(st.ProxyAgentStatus.KeyLatchStatus.States["secureChannelState"], "IMDS Enforce")
	})
	since, err := e.LastSeq(ctx)
	if err != nil {
		t.Fatal(err)
	}

	workload("enforce")

	// The unexpected process is denied by the agent and never reaches the host.
	r, err := e.Run(ctx, nobody, rogue, append(append([]string{}, e2eenv.CurlArgs...), "-H", metadataTrue, instance+"&rogue=1")...)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(r.Stdout), "403") {
		t.Fatalf("unexpected process: curl output %q, want 403", r.Stdout)
	}
	entries, err := e.Journal(ctx, since)
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range entries {
		if strings.Contains(en.Target, "rogue=1") {
			t.Fatalf("denied request reached the host: %+v", en)
		}
		if en.ServedUnaccepted() {
			t.Errorf("host served an unsigned request: %+v", en)
		}
	}
	// The unexpected process disguised as /usr/bin/curl, which the profile
	// allows, by an unprivileged user: refused by the agent (403) and
	// audited without an executable. refusedDisguise runs the disguised
	// curl (sh -c script, then the curl arguments as "$@") with marker in
	// its query.
	refusedDisguise := func(t *testing.T, marker string, otherUserNS bool, script string, args ...string) {
		t.Helper()
		args = append(append([]string{"-c", script}, args...), e2eenv.CurlArgs...)
		r, err := e.Run(ctx, nobody, "sh", append(args, "-H", metadataTrue, instance+"&"+marker)...)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(r.Stdout), " 403 ") {
			t.Fatalf("disguised process: curl output %q (stderr %q), want 403", r.Stdout, r.Stderr)
		}
		rec, err := e.WaitAudit(ctx, func(r audit.Record) bool { return strings.Contains(r.Target, marker) })
		if err != nil {
			t.Fatal(err)
		}
		if c := rec.Caller; c == nil || c.OtherUserNS != otherUserNS || c.ProcessFullPath != "" || c.UserID != e2eenv.NobodyUID {
			t.Errorf("audit caller %+v, want nobody without an executable, otherUserns %v", rec.Caller, otherUserNS)
		}
	}
	needUserNS := func(t *testing.T) {
		if r, err := e.Run(ctx, nobody, "unshare", "-Urm", "true"); err != nil || r.ExitCode != 0 {
			testenv.SkipOrFail(t, "no unprivileged user namespaces here (%v %s): the disguise is impossible", err, r.Stderr)
		}
	}
	// In a user and mount namespace of its own, its copy bind-mounted over
	// /usr/bin/curl, so /proc shows it as /usr/bin/curl: in another user
	// namespace the executable proves nothing.
	t.Run("disguised in its own user namespace", func(t *testing.T) {
		needUserNS(t)
		refusedDisguise(t, "disguised=1", true, `unshare -Urm sh -c 'mount --bind "$0" /usr/bin/curl && exec /usr/bin/curl "$@"' "$0" "$@"`, rogue)
	})
	// From the VM's own namespaces: a helper in its own namespaces holds
	// the bind-mounted /usr/bin/curl open, and the caller executes it
	// through the helper's descriptor, so /proc shows it as /usr/bin/curl
	// while the caller stays in the agent's namespaces: in the caller's own
	// root that path is another file.
	t.Run("disguised through another namespace's mount", func(t *testing.T) {
		needUserNS(t)
		helper := exec.CommandContext(ctx, "unshare", "-Urm", "sh", "-c", `mount --bind "$0" /usr/bin/curl && exec sleep 60 3</usr/bin/curl`, rogue)
		if err := e.Start(helper, nobody); err != nil {
			t.Fatal(err)
		}
		defer func() { helper.Process.Kill(); helper.Wait() }()
		fd3 := fmt.Sprintf("/proc/%d/fd/3", helper.Process.Pid)
		testsupport.WaitForCtx(t, ctx, "the helper's descriptor", func() bool {
			target, err := os.Readlink(fd3)
			return err == nil && target == "/usr/bin/curl"
		})
		refusedDisguise(t, "fdexec=1", false, `exec "$0" "$@"`, fd3)
	})

	// An unexpected user running an expected program is denied too.
	other := e2eenv.Caller{Credential: &syscall.Credential{Uid: 1234, Gid: 1234}}
	if rr, err := e.Curl(ctx, other, instance+"&otheruser=1", metadataTrue); err != nil || rr.Status != 403 {
		t.Fatalf("unexpected user: status %d err %v, want 403", rr.Status, err)
	}
}

func copyExecutable(src, dst string) error {
	return exec.Command("install", "-m", "0755", src, dst).Run()
}
