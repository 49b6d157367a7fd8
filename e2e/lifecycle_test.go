package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/hostsim"
	"github.com/opengpa/gpa/internal/e2eenv"
	"github.com/opengpa/gpa/internal/testsupport"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// TestIMDSDisabledThenEnforce: with IMDS Disabled at the host the agent
// leaves IMDS alone (the host serves the client directly, no marker);
// switching IMDS to Enforce at the host makes the agent install the
// redirect at its next key status poll.
func TestIMDSDisabledThenEnforce(t *testing.T) {
	e := newEnv(t, e2eenv.IMDSDisabledSettings)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	id := newID(t)
	r := curl(ctx, t, e, e2eenv.Nobody, imdsURL, metadataTrue, idHeader(id))
	if r.Status != http.StatusOK || r.Marked() {
		t.Fatalf("IMDS Disabled: status %d marker %v, want 200 served directly (no marker): %s", r.Status, r.Marked(), r.Body)
	}
	en := oneEntry(t, e, id)
	if en.Mode != "disabled" || en.Status != http.StatusOK || en.Verdict == hostsim.VerdictValid {
		t.Errorf("journal: mode %q verdict %q status %d, want an unsigned request served in disabled mode", en.Mode, en.Verdict, en.Status)
	}
	if v := headerValues(en.Headers, "x-ms-azure-host-authorization"); len(v) != 0 {
		t.Errorf("IMDS Disabled, yet the request was signed: %q", v)
	}

	// WireServer stays in Enforce and redirected meanwhile.
	if r := curl(ctx, t, e, e2eenv.Root, goalStateURL, wsVersion); r.Status != http.StatusOK || !r.Marked() {
		t.Errorf("WireServer with IMDS Disabled: status %d marker %v, want 200 through the agent", r.Status, r.Marked())
	}

	seq, err := e.LastSeq(ctx)
	if err != nil {
		t.Fatal(err)
	}
	flip := time.Now()
	if err := e.SetSettings(ctx, e2eenv.EnforceSettings); err != nil {
		t.Fatal(err)
	}
	// "Within one poll", without timing: the agent polls the status
	// sequentially, so once the host has seen a third status request after
	// the switch, at least one complete poll (fetch and apply) began and
	// ended after it (the first may have straddled the switch). A call made
	// after that must be redirected. Calls before it may go either way.
	var last e2eenv.Response
	for {
		j, err := e.Journal(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		polls := 0
		for _, en := range j {
			if en.Service == hostsim.WireServer && strings.HasPrefix(en.Target, msp.StatusPath) {
				polls++
			}
		}
		id = newID(t)
		last = curl(ctx, t, e, e2eenv.Nobody, imdsURL, metadataTrue, idHeader(id))
		if last.Marked() {
			break
		}
		if polls >= 3 {
			t.Fatalf("IMDS not redirected after a full status poll since the host switched it to Enforce: status %d", last.Status)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("IMDS redirected %v after the host switched to Enforce (poll interval 500ms)", time.Since(flip).Round(time.Millisecond))
	if last.Status != http.StatusOK {
		t.Errorf("after the switch: status %d, want 200", last.Status)
	}
	checkSigned(t, e, oneEntry(t, e, id), false)
	checkJournalInvariant(t, e, 0)

	// The console (a file standing in for /dev/console) got the start
	// line, the real redirector's and listener's milestones and the
	// provisioning result.
	if code, out, err := e.WaitProvisioned(ctx, 30*time.Second); err != nil || code != 0 {
		t.Fatalf("--status --wait 30: exit %d %v: %s", code, err, out)
	}
	b, err := os.ReadFile(e.ConsoleLog)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{") - ============== GuestProxyAgent (", ") - Started Redirector with eBPF maps - ",
		") - Started proxy listener, ready to accept request - ", ") - Provision finished successfully\n"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("console lacks %q:\n%s", want, b)
		}
	}
}

// loadResult is one client loop's outcome lines: "<http code> <curl exit
// code> <marker>".
type loadResult struct {
	name  string
	lines []string
}

// TestKillAgentUnderLoad kills the agent with SIGKILL while clients in the
// group call IMDS and WireServer in a loop: no request may reach the host
// unsigned (the pinned programs keep redirecting to the dead listener, so
// connections are refused), and the agent, started again with the same
// configuration, serves again.
func TestKillAgentUnderLoad(t *testing.T) {
	e := newEnv(t, e2eenv.EnforceSettings)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	seq0, err := e.LastSeq(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// The loops stop when the stop file appears; its directory is
	// readable by nobody.
	stop := filepath.Join(sharedDir(t, "gpa-e2e-stop-", 0o755), "stop")
	const format = `%{http_code} %{exitcode} %header{x-ms-azure-host-authorization}\n`
	loop := func(url string, headers ...string) string {
		h := ""
		for _, x := range headers {
			h += " -H '" + x + "'"
		}
		return fmt.Sprintf(`while [ ! -e %s ]; do curl -s -o /dev/null --noproxy '*' --max-time 5 -w '%s'%s '%s'; done`,
			stop, format, h, url)
	}
	clients := []struct {
		name   string
		caller e2eenv.Caller
		script string
	}{
		{"imds-nobody-1", e2eenv.Nobody, loop(imdsURL, metadataTrue)},
		{"imds-nobody-2", e2eenv.Nobody, loop(imdsURL, metadataTrue)},
		{"wireserver-root", e2eenv.Root, loop(goalStateURL, wsVersion)},
	}
	type running struct {
		name string
		cmd  *exec.Cmd
		out  *bytes.Buffer
	}
	var procs []running
	for _, c := range clients {
		cmd := exec.CommandContext(ctx, "sh", "-c", c.script)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := e.Start(cmd, c.caller); err != nil {
			t.Fatal(err)
		}
		procs = append(procs, running{c.name, cmd, &out})
	}
	stopped := false
	stopClients := func() []loadResult {
		if stopped {
			return nil
		}
		stopped = true
		if err := os.WriteFile(stop, nil, 0o644); err != nil {
			t.Error(err)
		}
		var res []loadResult
		for _, p := range procs {
			if err := p.cmd.Wait(); err != nil {
				t.Errorf("client %s: %v", p.name, err)
			}
			res = append(res, loadResult{p.name, strings.Split(strings.TrimSpace(p.out.String()), "\n")})
		}
		return res
	}
	defer stopClients()

	loadServed(ctx, t, e, "the clients' load served before the first kill")
	// Cycle 1: a plain kill and restart; the recovery time is logged.
	killAndRestart(ctx, t, e, false)
	loadServed(ctx, t, e, "the clients' load served after the first restart")
	// Cycle 2: the host is stopped while the agent restarts, so the
	// agent's first key status poll cannot finish before requests arrive.
	killAndRestart(ctx, t, e, true)
	loadServed(ctx, t, e, "the clients' load served after the second restart")
	results := stopClients()

	// Client side: every answer came through the agent (marker) with 200;
	// everything else is a transport failure, never a host answer.
	total, ok := 0, 0
	failures := map[string]int{}
	for _, res := range results {
		okHere := 0
		for _, l := range res.lines {
			if l == "" {
				continue
			}
			total++
			f := strings.Fields(l)
			switch {
			case len(f) == 3 && f[0] == "200" && f[1] == "0" && f[2] == "value":
				ok++
				okHere++
			case len(f) == 2 && f[0] == "000" && f[1] != "0":
				failures["curl exit "+f[1]]++
			default:
				t.Errorf("client %s got %q: an answer that did not come from the agent with 200", res.name, l)
			}
		}
		if okHere == 0 {
			t.Errorf("client %s never got a 200", res.name)
		}
	}
	var fl []string
	for k, v := range failures {
		fl = append(fl, fmt.Sprintf("%s: %d", k, v))
	}
	sort.Strings(fl)
	t.Logf("load: %d requests, %d served through the agent, failures %v", total, ok, fl)

	// Host side: nothing unsigned or invalid arrived, nothing was served
	// that should not have been, and the probe made while the agent was
	// down never arrived.
	j, err := e.Journal(ctx, seq0)
	if err != nil {
		t.Fatal(err)
	}
	var valid int
	for _, en := range j {
		if en.ServedUnaccepted() {
			t.Errorf("host served a request it should have refused: %+v", en)
		}
		switch en.Verdict {
		case hostsim.VerdictValid:
			valid++
		case hostsim.VerdictUnsigned, hostsim.VerdictInvalid, hostsim.VerdictBadDate:
			t.Errorf("request with verdict %s reached the host (%s %s %s, status %d)", en.Verdict, en.Service, en.Method, en.Target, en.Status)
		}
	}
	if valid < ok {
		t.Errorf("host saw %d valid requests, clients got %d answers through the agent", valid, ok)
	}
	sc := bufio.NewScanner(strings.NewReader(e.AgentLog()))
	starts := 0
	for sc.Scan() {
		if strings.Contains(sc.Text(), "=== e2eenv: agent start") {
			starts++
		}
	}
	if starts != 3 {
		t.Errorf("agent log shows %d starts, want 3", starts)
	}
}

// sharedDir makes a directory with mode perm that the test's callers (root
// and nobody) can reach, and removes it when the test ends.
func sharedDir(t *testing.T, prefix string, perm os.FileMode) string {
	t.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, perm); err != nil {
		t.Fatal(err)
	}
	return dir
}

// loadServed waits until the host has served, from now on, several signed
// requests of the load clients to each of IMDS and WireServer.
func loadServed(ctx context.Context, t *testing.T, e *e2eenv.Env, what string) {
	t.Helper()
	seq, err := e.LastSeq(ctx)
	if err != nil {
		t.Fatal(err)
	}
	testsupport.WaitForCtx(t, ctx, what, func() bool {
		j, err := e.Journal(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		served := map[hostsim.Service]int{}
		for _, en := range j {
			if en.Verdict == hostsim.VerdictValid && en.Status == http.StatusOK && !strings.HasPrefix(en.Target, "/secure-channel/") {
				served[en.Service]++
			}
		}
		return served[hostsim.IMDS] >= 5 && served[hostsim.WireServer] >= 5
	})
}

// killAndRestart kills the agent with SIGKILL, checks that a redirected
// connect is refused while it is down, starts it again with the same
// configuration and waits until it serves. Clients spinning on a refused
// connect (bash's /dev/tcp, about 100 µs per attempt) send their request
// the moment the new listener accepts; each must be answered 200 through
// the agent and reach the host signed, which fails if the listener opens
// before the agent has reloaded its key and rules. With pauseHost the
// host simulator is stopped (SIGSTOP) from before the start until 500 ms
// after it, so the agent's first status poll cannot finish early.
func killAndRestart(ctx context.Context, t *testing.T, e *e2eenv.Env, pauseHost bool) {
	t.Helper()
	oldPID := e.AgentPID()
	if err := e.KillAgent(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	t.Logf("agent pid %d killed with SIGKILL (host paused during restart: %v)", oldPID, pauseHost)

	// While the agent is down (KillAgent returns once it has exited) a
	// redirected connection is refused.
	id := newID(t)
	r, err := e.Curl(ctx, e2eenv.Root, imdsURL, metadataTrue, idHeader(id))
	if err != nil {
		t.Fatal(err)
	}
	if r.ExitCode != 7 {
		t.Errorf("IMDS call with the agent down: curl exit %d status %d, want 7 (connection refused): %s", r.ExitCode, r.Status, r.Stderr)
	}
	type spinner struct {
		name, id string
		cmd      *exec.Cmd
		out      *bytes.Buffer
	}
	// Each spinner leaves a mark after its first refused connect.
	marks := sharedDir(t, "gpa-e2e-spin-", 0o777)
	var spinners []spinner
	for _, sp := range []struct {
		name   string
		caller e2eenv.Caller
		addr   string
		target string
		header string
	}{
		{"imds-nobody-1", e2eenv.Nobody, "169.254.169.254/80", "/metadata/instance?api-version=2021-02-01", metadataTrue},
		{"imds-nobody-2", e2eenv.Nobody, "169.254.169.254/80", "/metadata/instance?api-version=2021-02-01", metadataTrue},
		{"imds-root", e2eenv.Root, "169.254.169.254/80", "/metadata/instance?api-version=2021-02-01", metadataTrue},
		{"wireserver-root", e2eenv.Root, "168.63.129.16/80", "/machine?comp=goalstate", wsVersion},
	} {
		sid := newID(t)
		host, _, _ := strings.Cut(sp.addr, "/")
		mark := filepath.Join(marks, sp.name)
		script := fmt.Sprintf(`until exec 3<>/dev/tcp/%s; do [ -e %s ] || : >%s; done 2>/dev/null
printf 'GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n%s\r\nConnection: close\r\n\r\n' >&3
cat <&3`, sp.addr, mark, mark, sp.target, host, sp.header, idHeader(sid))
		cmd := exec.CommandContext(ctx, "bash", "-c", script)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := e.Start(cmd, sp.caller); err != nil {
			t.Fatal(err)
		}
		spinners = append(spinners, spinner{sp.name, sid, cmd, &out})
	}
	for _, sp := range spinners {
		testsupport.WaitForCtx(t, ctx, sp.name+" spinning on a refused connect", func() bool {
			_, err := os.Stat(filepath.Join(marks, sp.name))
			return err == nil
		})
	}

	if pauseHost {
		if err := e.PauseHost(); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.StartAgent(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	if pauseHost {
		time.Sleep(500 * time.Millisecond)
		if err := e.ResumeHost(); err != nil {
			t.Fatal(err)
		}
	}
	var recovered time.Duration
	for {
		r, err := e.Curl(ctx, e2eenv.Nobody, imdsURL, metadataTrue)
		if err != nil {
			t.Fatal(err)
		}
		if r.ExitCode == 0 && r.Status == http.StatusOK && r.Marked() {
			recovered = time.Since(restarted)
			break
		}
		if time.Since(restarted) > 30*time.Second {
			t.Fatalf("restarted agent does not serve IMDS after 30 s: curl exit %d status %d: %s", r.ExitCode, r.Status, r.Stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("restarted agent (pid %d) served IMDS %v after its start, %v after the kill", e.AgentPID(),
		recovered.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))
	for _, sp := range spinners {
		if err := sp.cmd.Wait(); err != nil {
			t.Errorf("spinning client %s: %v: %s", sp.name, err, sp.out)
			continue
		}
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(sp.out.Bytes())), nil)
		if err != nil {
			t.Errorf("spinning client %s: no HTTP response: %v: %q", sp.name, err, sp.out)
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get("x-ms-azure-host-authorization") != "value" {
			t.Errorf("first request after the restart (%s): status %d marker %q, want 200 through the agent",
				sp.name, resp.StatusCode, resp.Header.Get("x-ms-azure-host-authorization"))
		}
		for _, en := range entriesWithID(t, e, sp.id) {
			if en.Verdict != hostsim.VerdictValid {
				t.Errorf("first request after the restart (%s) reached the host with verdict %s, status %d", sp.name, en.Verdict, en.Status)
			}
		}
	}
	code, out, err := e.WaitProvisioned(ctx, 30*time.Second)
	if err != nil || code != 0 {
		t.Errorf("restarted agent --status --wait 30: exit %d %v: %s", code, err, out)
	}
	if got := entriesWithID(t, e, id); len(got) != 0 {
		t.Errorf("the request made while the agent was down reached the host: %+v", got)
	}
}
