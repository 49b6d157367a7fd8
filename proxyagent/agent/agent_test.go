package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opengpa/gpa/hostsim"
	"github.com/opengpa/gpa/internal/simtest"
	"github.com/opengpa/gpa/internal/testsupport"
	"github.com/opengpa/gpa/proxyagent/authz"
	"github.com/opengpa/gpa/proxyagent/config"
	"github.com/opengpa/gpa/proxyagent/hostconn"
	"github.com/opengpa/gpa/proxyagent/identity"
	"github.com/opengpa/gpa/proxyagent/msp"
	"github.com/opengpa/gpa/proxyagent/provision"
	"github.com/opengpa/gpa/proxyagent/status"
)

// These tests run the whole agent (agent.Run) against the simulated host
// on loopback. The kernel's identity record is replaced by a map the test
// fills before each connection; everything else is the production code.

func boolPtr(b bool) *bool { return &b }
func intPtr(i int) *int    { return &i }

func enforceSettings() hostsim.ProxyAgentSettings {
	return hostsim.ProxyAgentSettings{Enabled: boolPtr(true), KeyIncarnationID: intPtr(1),
		WireServer: &hostsim.HostEndpointSettings{Mode: "Enforce"}, IMDS: &hostsim.HostEndpointSettings{Mode: "Enforce"}}
}

type harness struct {
	t      *testing.T
	sim    *hostsim.Sim
	ids    *identity.MapSource
	dir    string
	cfg    config.Config
	addr   string // agent listener
	cancel context.CancelFunc
	done   chan error
	stdout testsupport.SyncBuffer // the agent's stdout
}

func newHarness(t *testing.T, settings hostsim.ProxyAgentSettings, edits ...func(*config.Config)) *harness {
	t.Helper()
	h := configureHarness(t, settings, edits...)
	h.start()
	return h
}

// configureHarness is newHarness without starting the agent.
func configureHarness(t *testing.T, settings hostsim.ProxyAgentSettings, edits ...func(*config.Config)) *harness {
	t.Helper()
	sim := simtest.Start(t, hostsim.Config{Settings: settings, IMDSRateLimit: -1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	h := &harness{t: t, sim: sim, ids: &identity.MapSource{}, dir: t.TempDir()}
	cfg := config.Default()
	cfg.LogFolder = filepath.Join(h.dir, "log")
	cfg.LatchKeyFolder = filepath.Join(h.dir, "lib", "keys")
	cfg.StatusFolder = filepath.Join(h.dir, "log")
	cfg.EventFolder = filepath.Join(h.dir, "log", "events")
	cfg.ConsoleLog = filepath.Join(h.dir, "console.log")
	cfg.MetricsListen = "unix:" + filepath.Join(cfg.StatusFolder, config.MetricsSocketName)
	cfg.PollKeyStatusIntervalInSecs = 0.05
	cfg.MonitorIntervalInSeconds = 0.2
	cfg.SocketMark = 0
	cfg.ListenAddress = "127.0.0.1:0"
	a := sim.Addrs()
	cfg.WireServerAddress, cfg.IMDSAddress, cfg.HostGAPluginAddress = a.WireServer, a.IMDS, a.HostGA
	for _, edit := range edits {
		edit(&cfg)
	}
	h.cfg = cfg
	return h
}

func (h *harness) start() {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	h.cancel, h.done = cancel, make(chan error, 1)
	go func() {
		h.done <- Run(ctx, Options{Config: h.cfg, Version: "9.9.9", Identity: h.ids, Stdout: &h.stdout, Stderr: io.Discard,
			Ready: func(addr string) { ready <- addr }})
	}()
	select {
	case h.addr = <-ready:
	case err := <-h.done:
		h.t.Fatalf("agent exited: %v", err)
	case <-time.After(10 * time.Second):
		h.t.Fatal("agent listener did not come up")
	}
	h.t.Cleanup(h.stop)
}

func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	if err := <-h.done; err != nil {
		h.t.Errorf("agent.Run: %v", err)
	}
}

// caller is who a test connection claims to be.
type caller struct{ uid uint32 }

var (
	root   = caller{0}
	nobody = caller{65534}
)

// do sends one raw HTTP/1.1 request through the agent as if it had been
// redirected from dest, and returns the response.
func (h *harness) do(c caller, dest, raw string) *http.Response {
	h.t.Helper()
	// Pick a free local port, register the identity for it, then dial from it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		h.t.Fatal(err)
	}
	local := l.Addr().(*net.TCPAddr)
	l.Close()
	h.ids.Add(netip.MustParseAddrPort(local.String()), identity.Record{PID: uint32(os.Getpid()), UID: c.uid, GID: c.uid,
		OrigDst: netip.MustParseAddrPort(dest)})
	d := net.Dialer{LocalAddr: local, Timeout: 5 * time.Second}
	conn, err := d.Dial("tcp", h.addr)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, raw); err != nil {
		h.t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		h.t.Fatalf("reading response to %q: %v", strings.SplitN(raw, "\r\n", 2)[0], err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body = io.NopCloser(strings.NewReader(string(body)))
	return resp
}

func get(target, host string, extra ...string) string {
	return "GET " + target + " HTTP/1.1\r\nHost: " + host + "\r\n" + strings.Join(extra, "") + "\r\n"
}

func (h *harness) ws() string   { return h.sim.Addrs().WireServer }
func (h *harness) imds() string { return h.sim.Addrs().IMDS }

// waitLatched waits until the host has latched a key other than old and
// the agent's status reports that key, and returns its GUID.
func (h *harness) waitLatched(old string) string {
	h.t.Helper()
	var guid string
	testsupport.WaitFor(h.t, fmt.Sprintf("a new key latched (old %q)", old), func() bool {
		g, ok := h.sim.LatchedKeyGUID()
		guid = g
		return ok && g != old && h.aggregate().ProxyAgentStatus.KeyLatchStatus.States["keyGuid"] == g
	})
	return guid
}

// aggregate fetches /gpa-aggregated-status as a redirected root caller.
func (h *harness) aggregate() status.Aggregate {
	h.t.Helper()
	resp := h.do(root, h.ws(), get("/gpa-aggregated-status", "168.63.129.16", "Metadata: true\r\n"))
	if resp.StatusCode != 200 {
		h.t.Fatalf("/gpa-aggregated-status: %s", resp.Status)
	}
	var st status.Aggregate
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		h.t.Fatal(err)
	}
	return st
}

func (h *harness) journal(pred func(hostsim.Entry) bool) []hostsim.Entry {
	var out []hostsim.Entry
	for _, e := range h.sim.Journal().Entries() {
		if pred(e) {
			out = append(out, e)
		}
	}
	return out
}

func (h *harness) assertNothingUnsignedServed() {
	h.t.Helper()
	for _, e := range h.sim.Journal().Entries() {
		if e.ServedUnaccepted() {
			h.t.Errorf("host served an unaccepted request in %s: %s %s verdict %s status %d", e.Mode, e.Method, e.Target, e.Verdict, e.Status)
		}
	}
}

func keyFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.key"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestDisabledToEnforceLatchesAndSigns(t *testing.T) {
	h := newHarness(t, hostsim.ProxyAgentSettings{Enabled: boolPtr(false)})
	// While disabled: no key, requests are forwarded unsigned and the host
	// serves them. The agent has seen the disabled state, and a key it
	// would fetch on that poll is fetched before the next poll starts.
	testsupport.WaitFor(t, "the agent to report the channel disabled", func() bool {
		return h.aggregate().ProxyAgentStatus.KeyLatchStatus.States["secureChannelState"] == "disabled"
	})
	statusPolls := func() int {
		return len(h.journal(func(e hostsim.Entry) bool { return strings.HasPrefix(e.Target, msp.StatusPath) }))
	}
	seen := statusPolls()
	testsupport.WaitFor(t, "the next key status poll", func() bool { return statusPolls() > seen })
	if got := h.journal(func(e hostsim.Entry) bool { return strings.HasPrefix(e.Target, msp.KeyPath) }); len(got) != 0 {
		t.Fatalf("key requests while disabled: %+v", got)
	}
	if files := keyFiles(t, h.cfg.LatchKeyFolder); len(files) != 0 {
		t.Fatalf("key files while disabled: %v", files)
	}
	resp := h.do(root, h.ws(), get("/machine?comp=goalstate&disabled=1", "168.63.129.16", "x-ms-version: 2012-11-30\r\n"))
	got := h.journal(func(e hostsim.Entry) bool { return strings.Contains(e.Target, "disabled=1") })
	if resp.StatusCode != 200 || len(got) != 1 || got[0].Verdict != hostsim.VerdictUnsigned || got[0].Status != 200 {
		t.Fatalf("goal state while disabled: %s, host journal %+v", resp.Status, got)
	}
	if code, msg := provision.QueryStatus(h.addr, 10*time.Second); code != 0 {
		t.Fatalf("--status while disabled: exit %d %q", code, msg)
	}

	h.sim.SetSettings(enforceSettings())
	guid := h.waitLatched("")
	files := keyFiles(t, h.cfg.LatchKeyFolder)
	if len(files) != 1 || filepath.Base(files[0]) != guid+".key" {
		t.Fatalf("key files %v, want exactly %s.key", files, guid)
	}
	if fi, err := os.Stat(files[0]); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v %v", fi.Mode(), err)
	}
	resp = h.do(root, h.ws(), get("/machine?comp=goalstate", "168.63.129.16", "x-ms-version: 2012-11-30\r\n"))
	if resp.StatusCode != 200 || resp.Header.Get(msp.HeaderAuthorization) != msp.ResponseMarker {
		t.Fatalf("root goal state: %s marker %q", resp.Status, resp.Header.Get(msp.HeaderAuthorization))
	}
	got = h.journal(func(e hostsim.Entry) bool { return e.Target == "/machine?comp=goalstate" })
	if len(got) != 1 || got[0].Verdict != hostsim.VerdictValid || got[0].KeyGUID != guid {
		t.Fatalf("host journal for goal state: %+v", got)
	}
	if code, msg := provision.QueryStatus(h.addr, 10*time.Second); code != 0 {
		t.Fatalf("--status after latch: exit %d %q", code, msg)
	}
	st := h.aggregate()
	if st.ProxyAgentStatus.Status != status.Success || st.ProxyAgentStatus.KeyLatchStatus.States["secureChannelState"] != "WireServer Enforce -  IMDS Enforce - HostGA Enforce" {
		t.Fatalf("aggregate status: %+v", st.ProxyAgentStatus)
	}
	h.assertNothingUnsignedServed()
}

// The console (here a file standing in for /dev/console) gets upstream's
// lines: the start line first, then the listener and key milestones and
// the provisioning result, each with the time, version and pid.
func TestConsoleLines(t *testing.T) {
	h := newHarness(t, enforceSettings())
	h.waitLatched("")
	if code, msg := provision.QueryStatus(h.addr, 10*time.Second); code != 0 {
		t.Fatalf("--status: exit %d %q", code, msg)
	}
	var lines []string
	testsupport.WaitFor(t, "the provisioning result on the console", func() bool {
		b, _ := os.ReadFile(h.cfg.ConsoleLog)
		lines = strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
		return slices.ContainsFunc(lines, func(l string) bool { return strings.HasSuffix(l, " - Provision finished successfully") })
	})
	head := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} azure-proxy-agent_9\.9\.9\(` + strconv.Itoa(os.Getpid()) + `\) - `)
	for _, l := range lines {
		if !head.MatchString(l) {
			t.Errorf("console line %q lacks the time, version and pid", l)
		}
	}
	if !regexp.MustCompile(` - ============== GuestProxyAgent \(9\.9\.9\) is starting on Linux:.+\(.+\), elapsed: \d+$`).MatchString(lines[0]) {
		t.Errorf("first console line %q is not the start line", lines[0])
	}
	for _, want := range []string{" - Started proxy listener, ready to accept request - ", " - Successfully attest the key and ready to use. - "} {
		if !slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, want) }) {
			t.Errorf("no console line with %q in %q", want, lines)
		}
	}
}

func TestRestartReloadsKeyWithoutAttesting(t *testing.T) {
	h := newHarness(t, enforceSettings())
	guid := h.waitLatched("")
	h.stop()
	h.sim.Journal().Clear()
	h.start()
	// The restarted agent signs with the same key and never asked for a new
	// one: its listener opens after the first poll, which reloaded the key.
	if resp := h.do(root, h.ws(), get("/machine?comp=goalstate", "168.63.129.16")); resp.StatusCode != 200 {
		t.Fatalf("restarted agent: %s", resp.Status)
	}
	if calls := h.journal(func(e hostsim.Entry) bool {
		return e.Method == "POST" && strings.HasPrefix(e.Target, "/secure-channel/key")
	}); len(calls) != 0 {
		t.Fatalf("restart acquired or attested a key: %+v", calls)
	}
	if g, _ := h.sim.LatchedKeyGUID(); g != guid {
		t.Fatalf("latched key changed across restart: %s -> %s", guid, g)
	}
	h.assertNothingUnsignedServed()
}

// An agent restarted while the WireServer does not answer (its key
// status calls fail) signs with the key it had latched, from the key
// status the host last gave: IMDS, still up, gets signed requests, never
// unsigned ones.
func TestRestartWhileWireServerDownStillSigns(t *testing.T) {
	h := newHarness(t, enforceSettings())
	guid := h.waitLatched("")
	h.stop()
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.cfg.WireServerAddress = dead.Addr().String()
	dead.Close() // nothing answers there now
	h.sim.Journal().Clear()
	h.start()
	resp := h.do(nobody, h.imds(), get("/metadata/instance?api-version=2021-02-01", "169.254.169.254", "Metadata: true\r\n"))
	if resp.StatusCode != 200 {
		t.Fatalf("IMDS through the restarted agent: %s", resp.Status)
	}
	got := h.journal(func(e hostsim.Entry) bool { return strings.HasPrefix(e.Target, "/metadata/instance") })
	if len(got) != 1 || got[0].KeyGUID != guid || got[0].Verdict != hostsim.VerdictValid {
		t.Fatalf("request after the restart not signed with %s: %+v", guid, got)
	}
	h.assertNothingUnsignedServed()
}

func TestRotation(t *testing.T) {
	h := newHarness(t, enforceSettings())
	old := h.waitLatched("")
	h.sim.Rotate()
	guid := h.waitLatched(old)
	resp := h.do(root, h.ws(), get("/machine?comp=goalstate", "168.63.129.16"))
	if resp.StatusCode != 200 {
		t.Fatalf("after rotation: %s", resp.Status)
	}
	got := h.journal(func(e hostsim.Entry) bool { return e.Target == "/machine?comp=goalstate" })
	if len(got) == 0 || got[len(got)-1].KeyGUID != guid || got[len(got)-1].Verdict != hostsim.VerdictValid {
		t.Fatalf("request after rotation not signed with %s: %+v", guid, got)
	}
	if len(keyFiles(t, h.cfg.LatchKeyFolder)) != 2 {
		t.Fatal("rotation should keep the old key file and add the new one")
	}
	h.assertNothingUnsignedServed()
}

func TestDeniedCallerNeverReachesHost(t *testing.T) {
	h := newHarness(t, enforceSettings())
	h.waitLatched("")
	resp := h.do(nobody, h.ws(), get("/machine?comp=goalstate&deny-probe=1", "168.63.129.16"))
	if resp.StatusCode != 403 || !resp.Close {
		t.Fatalf("non-root WireServer request: %s, close %v", resp.Status, resp.Close)
	}
	if got := h.journal(func(e hostsim.Entry) bool { return strings.Contains(e.Target, "deny-probe") }); len(got) != 0 {
		t.Fatalf("denied request reached the host: %+v", got)
	}
	// IMDS is open to everyone by default, and signed with isRoot false.
	resp = h.do(nobody, h.imds(), get("/metadata/instance?api-version=2021-02-01", "169.254.169.254", "Metadata: true\r\n"))
	if resp.StatusCode != 200 {
		t.Fatalf("non-root IMDS: %s", resp.Status)
	}
	got := h.journal(func(e hostsim.Entry) bool { return strings.HasPrefix(e.Target, "/metadata/instance") })
	if len(got) != 1 || got[0].Verdict != hostsim.VerdictValid || !hasHeader(got[0], msp.HeaderClaims, msp.ClaimsValue(false)) {
		t.Fatalf("IMDS journal: %+v", got)
	}
	h.assertNothingUnsignedServed()
}

// newAuditIMDSHarness starts an agent whose IMDS rules are in Audit mode,
// deny by default, and let root (only) at /metadata/identity; it returns
// once the agent applies them.
func newAuditIMDSHarness(t *testing.T, edits ...func(*config.Config)) *harness {
	t.Helper()
	const profile = "/subscriptions/0/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/inVMAccessControlProfiles/imds/versions/1.0.0"
	settings := enforceSettings()
	settings.IMDS = &hostsim.HostEndpointSettings{InVMAccessControlProfileReferenceID: profile}
	h := newHarness(t, settings, edits...)
	pv, err := hostsim.ParseProfile([]byte(`{"properties":{"mode":"Audit","defaultAccess":"Deny","rules":{
		"privileges":[{"name":"token","path":"/metadata/identity"}],
		"roles":[{"name":"tokens","privileges":["token"]}],
		"identities":[{"name":"root","userName":"root"}],
		"roleAssignments":[{"role":"tokens","identities":["root"]}]}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.sim.SetProfile(profile, pv); err != nil {
		t.Fatal(err)
	}
	h.waitLatched("")
	testsupport.WaitFor(t, "the agent to see IMDS in Audit", func() bool {
		return h.aggregate().ProxyAgentStatus.KeyLatchStatus.States["secureChannelState"] == "WireServer Enforce -  IMDS Audit - HostGA Enforce"
	})
	// The profile may have arrived after the first status (an unknown
	// profile is also Audit, with no rules): wait for its privilege in the
	// agent's snapshot of the rules it compiled.
	testsupport.WaitFor(t, "the agent to compile the profile's rules", func() bool {
		files, _ := filepath.Glob(filepath.Join(h.cfg.StatusFolder, authz.SnapshotFilePrefix+"*.json"))
		for _, f := range files {
			if b, err := os.ReadFile(f); err == nil && strings.Contains(string(b), `"token"`) {
				return true
			}
		}
		return false
	})
	return h
}

func TestAuditForwardsAndRecordsFailedAuthentication(t *testing.T) {
	h := newAuditIMDSHarness(t)
	resp := h.do(nobody, h.imds(), get("/metadata/instance?api-version=2021-02-01", "169.254.169.254", "Metadata: true\r\n"))
	if resp.StatusCode != 200 {
		t.Fatalf("audited IMDS request: %s, want it forwarded", resp.Status)
	}
	testsupport.WaitFor(t, "a failed-authentication summary for the audited request", func() bool {
		for _, e := range h.aggregate().FailedAuthenticateSummary {
			if e.ResponseStatus == "403 Forbidden" && e.UserName != "root" && strings.Contains(e.IP, "127.0.0.1") {
				return true
			}
		}
		return false
	})
}

func TestForgedClientHeadersNeverReachHost(t *testing.T) {
	h := newHarness(t, enforceSettings())
	h.waitLatched("")
	forged := "x-ms-azure-host-authorization: Azure-HMAC-SHA256 forged-guid 00\r\n" +
		"x-ms-azure-host-claims: { \"isRoot\": \"true\"}\r\n" +
		"x-ms-azure-host-date: Mon, 01 Jan 2001 00:00:00 GMT\r\n" +
		"X-Forwarded-For: 10.0.0.1\r\nForwarded: for=10.0.0.1\r\nConnection: x-ms-azure-host-claims\r\nMetadata: true\r\n"
	resp := h.do(nobody, h.imds(), get("/metadata/instance?api-version=2021-02-01&forged=1", "169.254.169.254", forged))
	if resp.StatusCode != 200 {
		t.Fatalf("request with forged headers: %s", resp.Status)
	}
	got := h.journal(func(e hostsim.Entry) bool { return strings.Contains(e.Target, "forged=1") })
	if len(got) != 1 {
		t.Fatalf("journal: %+v", got)
	}
	for _, f := range got[0].Headers {
		v := strings.ToLower(f.Name + ": " + f.Value)
		if strings.Contains(v, "forged") || strings.Contains(v, "10.0.0.1") || strings.Contains(v, "2001") ||
			strings.EqualFold(f.Name, "x-forwarded-for") || strings.EqualFold(f.Name, "forwarded") {
			t.Errorf("forged header reached the host: %s", v)
		}
	}
	if !hasHeader(got[0], msp.HeaderClaims, msp.ClaimsValue(false)) || got[0].Verdict != hostsim.VerdictValid {
		t.Fatalf("host saw claims/verdict %+v", got[0])
	}
}

func TestDirectUnsignedRequestGets401(t *testing.T) {
	h := newHarness(t, enforceSettings())
	h.waitLatched("")
	resp, err := http.Get("http://" + h.ws() + "/machine?comp=goalstate")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("unsigned direct request in Enforce: %s, want 401", resp.Status)
	}
}

func TestConcurrentRequestsAllSigned(t *testing.T) {
	h := newHarness(t, enforceSettings())
	h.waitLatched("")
	var wg sync.WaitGroup
	errs := make(chan string, 64)
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			who, dest := root, h.ws()
			target := fmt.Sprintf("/machine?comp=goalstate&n=%d", i)
			if i%2 == 1 {
				who, dest = nobody, h.imds()
				target = fmt.Sprintf("/metadata/instance?api-version=2021-02-01&n=%d", i)
			}
			resp := h.do(who, dest, get(target, "x", "Metadata: true\r\n"))
			if resp.StatusCode != 200 {
				errs <- fmt.Sprintf("%s: %s", target, resp.Status)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	h.assertNothingUnsignedServed()
}

func hasHeader(e hostsim.Entry, name, value string) bool {
	for _, f := range e.Headers {
		if strings.EqualFold(f.Name, name) && f.Value == value {
			return true
		}
	}
	return false
}

// Memory is released once when requests stop after activity, and not
// while idle without activity or while requests keep coming. The bubble's
// clock runs the ticker; the count changes at half-interval offsets so no
// change coincides with a tick.
func TestReleaseWhenIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const interval = time.Second
		var count, releases atomic.Uint64
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() {
			defer close(done)
			releaseWhenIdle(ctx, count.Load, interval, func() { releases.Add(1) })
		}()
		time.Sleep(10*interval + interval/2)
		synctest.Wait()
		if n := releases.Load(); n != 0 {
			t.Fatalf("%d releases without any request", n)
		}
		for range 20 { // busy: the count changes between every two ticks
			count.Add(1)
			time.Sleep(interval)
		}
		synctest.Wait()
		if n := releases.Load(); n != 0 {
			t.Fatalf("%d releases while requests kept coming", n)
		}
		time.Sleep(2 * interval) // a tick sees the last change, the next one sees none
		synctest.Wait()
		if n := releases.Load(); n != 1 {
			t.Fatalf("%d releases after requests stopped, want 1", n)
		}
		time.Sleep(10 * interval) // idle on: no further release
		synctest.Wait()
		cancel()
		<-done
		if n := releases.Load(); n != 1 {
			t.Errorf("%d releases while idle after the first, want none", n-1)
		}
	})
}

// Where the kernel cannot tell network namespaces apart (no netns cookie,
// before Linux 5.14) the container listener is not opened: the hooks could
// send nothing there, and a direct connection to it would pass for the
// VM's own.
func TestNoContainerListenerWithoutNetnsCookie(t *testing.T) {
	dest := msp.Endpoints{ContainerListener: msp.ContainerListenerAddr}
	note := setUpContainerListener(&dest, false, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if dest.ContainerListener.IsValid() || !strings.Contains(note, "cannot tell network namespaces apart") {
		t.Errorf("container listener %v, note %q; want none, and the note to say why", dest.ContainerListener, note)
	}
}

// The agent's listeners carry the mark the kernel hooks require of the
// socket they send connects to, also when the redirector failed to load
// (hooks pinned by an earlier run still check it); none without hooks. With
// the hooks an unmarked agent socket would be redirected to the agent
// itself: socketMark 0 means the default mark then.
func TestListenerMark(t *testing.T) {
	cfg := config.Default()
	for _, c := range []struct {
		mark              uint32
		noHooks           bool
		listener, sockets uint32
	}{
		{0, false, hostconn.Mark, hostconn.Mark},
		{0x42, false, 0x42, 0x42},
		{0x42, true, 0, 0x42},
		{0, true, 0, 0},
	} {
		cfg.SocketMark = c.mark
		if s, l := marks(cfg, c.noHooks); l != c.listener || s != c.sockets {
			t.Errorf("socketMark %#x, no hooks %v: listener mark %#x, sockets %#x; want %#x, %#x",
				c.mark, c.noHooks, l, s, c.listener, c.sockets)
		}
	}
}
