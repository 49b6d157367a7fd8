package metrics

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/internal/testenv"
	"github.com/opengpa/gpa/proxyagent/audit"
	"github.com/opengpa/gpa/proxyagent/authz"
	"github.com/opengpa/gpa/proxyagent/msp"
)

var (
	wireServer = netip.MustParseAddrPort("168.63.129.16:80")
	imds       = netip.MustParseAddrPort("169.254.169.254:80")
)

// testSources are fixed figures standing in for the agent's parts.
func testSources() Sources {
	return Sources{
		Version:     "1.2.3",
		IdentityMap: func() (int, int, error) { return 3, 16384, nil },
		KeyLatched:  func() bool { return true },
		SecureChannel: func() (string, map[string]string) {
			return "wireserverandimds", map[string]string{"WireServer": "enforce", "IMDS": "audit", "HostGAPlugin": "enforce"}
		},
		RuleEpoch: func() uint64 { return 7 },
		Audit: func() []SinkCount {
			return []SinkCount{{Sink: "file", Written: 10, Dropped: 1}, {Sink: "syslog", Written: 9, Dropped: 2}}
		},
		AuditSuppressed: func() uint64 { return 3 },
		ConnectionsRefused: func() map[string]uint64 {
			return map[string]uint64{"caller_limit_connect": 5, "max_connections_connect": 6, "caller_limit": 4, "max_connections": 0}
		},
		Modules: func() map[string]string {
			return map[string]string{"keyLatchStatus": "RUNNING", "ebpfProgramStatus": "STOPPED", "proxyListenerStatus": "RUNNING"}
		},
	}
}

func decided(dest netip.AddrPort, svc msp.Service, r authz.Result, mode msp.Mode, status int, lat time.Duration) *audit.Event {
	return &audit.Event{Dest: dest, Service: svc, Authorized: true, Status: status, Latency: lat,
		Decision: authz.Decision{Result: r, Service: svc, Mode: mode}}
}

// populated returns metrics after a mix of requests.
func populated() *Metrics {
	m := New(testSources())
	m.Request(decided(imds, msp.IMDS, authz.Allow, msp.ModeAudit, 200, 300*time.Microsecond))
	m.Request(decided(imds, msp.IMDS, authz.AllowAudited, msp.ModeAudit, 200, 2*time.Millisecond))
	m.Request(decided(wireServer, msp.WireServer, authz.Deny, msp.ModeEnforce, 403, 50*time.Microsecond))
	m.Request(decided(wireServer, msp.WireServer, authz.Deny, msp.ModeEnforce, 403, 60*time.Microsecond))
	m.Request(&audit.Event{Status: 421})                                            // direct connection
	m.Request(&audit.Event{Dest: wireServer, Service: msp.WireServer, Status: 421}) // redirected, no claims
	up := decided(wireServer, msp.WireServer, authz.Allow, msp.ModeEnforce, 503, 5*time.Second)
	m.Request(up)
	m.UpstreamFailure(up, fmt.Errorf("read: %w", os.ErrDeadlineExceeded))
	m.UpstreamFailure(up, errors.New("connection reset by peer"))
	m.Polled(true, time.Unix(1700000000, 500e6))
	m.Polled(false, time.Time{})
	m.KeyLatched(false) // start
	m.KeyLatched(true)  // the first latch: no flap
	m.KeyLatched(false) // flap
	m.KeyLatched(true)  // flap
	m.KeyLatched(true)
	return m
}

// scrape returns the exposition the handler serves.
func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rr := httptest.NewRecorder()
	m.Handler().ServeHTTP(rr, httptest.NewRequest("GET", Path, nil))
	if rr.Code != 200 {
		t.Fatalf("GET %s: %d %s", Path, rr.Code, rr.Body)
	}
	if ct := rr.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("Content-Type %q, want the text exposition format", ct)
	}
	return rr.Body.String()
}

func TestExposition(t *testing.T) {
	out := scrape(t, populated())
	for _, line := range []string{
		`azure_proxy_agent_requests_total{service="IMDS",decision="allow",mode="audit",status="200"} 1`,
		`azure_proxy_agent_requests_total{service="IMDS",decision="audit-deny",mode="audit",status="200"} 1`,
		`azure_proxy_agent_requests_total{service="WireServer",decision="deny",mode="enforce",status="403"} 2`,
		`azure_proxy_agent_requests_total{service="none",decision="none",mode="none",status="421"} 1`,
		`azure_proxy_agent_requests_total{service="WireServer",decision="none",mode="none",status="421"} 1`,
		`azure_proxy_agent_requests_total{service="WireServer",decision="allow",mode="enforce",status="503"} 1`,
		`azure_proxy_agent_request_duration_seconds_bucket{service="IMDS",le="0.00025"} 0`,
		`azure_proxy_agent_request_duration_seconds_bucket{service="IMDS",le="0.0005"} 1`,
		`azure_proxy_agent_request_duration_seconds_bucket{service="IMDS",le="0.0025"} 2`,
		`azure_proxy_agent_request_duration_seconds_count{service="IMDS"} 2`,
		`azure_proxy_agent_request_duration_seconds_sum{service="IMDS"} 0.0023`,
		`azure_proxy_agent_upstream_errors_total{service="WireServer",kind="timeout"} 1`,
		`azure_proxy_agent_upstream_errors_total{service="WireServer",kind="error"} 1`,
		`azure_proxy_agent_unidentified_requests_total{reason="direct"} 1`,
		`azure_proxy_agent_unidentified_requests_total{reason="no_claims"} 1`,
		`azure_proxy_agent_identity_map_entries 3`,
		`azure_proxy_agent_identity_map_capacity 16384`,
		`azure_proxy_agent_key_latched 1`,
		`azure_proxy_agent_key_latch_changes_total 2`,
		`azure_proxy_agent_key_status_polls_total{result="ok"} 1`,
		`azure_proxy_agent_key_status_polls_total{result="error"} 1`,
		`azure_proxy_agent_key_status_last_success_timestamp_seconds 1.7000000005e+09`,
		`azure_proxy_agent_secure_channel_state{state="wireserverandimds"} 1`,
		`azure_proxy_agent_service_mode{service="IMDS",mode="audit"} 1`,
		`azure_proxy_agent_service_mode{service="IMDS",mode="enforce"} 0`,
		`azure_proxy_agent_service_mode{service="WireServer",mode="enforce"} 1`,
		`azure_proxy_agent_rule_epoch 7`,
		`azure_proxy_agent_connections_refused_total{reason="caller_limit_connect"} 5`,
		`azure_proxy_agent_connections_refused_total{reason="max_connections_connect"} 6`,
		`azure_proxy_agent_connections_refused_total{reason="caller_limit"} 4`,
		`azure_proxy_agent_connections_refused_total{reason="max_connections"} 0`,
		`azure_proxy_agent_audit_records_written_total{sink="file"} 10`,
		`azure_proxy_agent_audit_records_dropped_total{sink="syslog"} 2`,
		`azure_proxy_agent_audit_records_suppressed_total 3`,
		`azure_proxy_agent_module_running{module="ebpfProgramStatus"} 0`,
		`azure_proxy_agent_module_running{module="keyLatchStatus"} 1`,
		`azure_proxy_agent_build_info{version="1.2.3"} 1`,
	} {
		if !containsLine(out, line) {
			t.Errorf("exposition lacks %s", line)
		}
	}
	for _, family := range []string{"go_goroutines", "go_memstats_heap_inuse_bytes", "process_resident_memory_bytes",
		"process_cpu_seconds_total", "process_open_fds"} {
		if !strings.Contains(out, "\n"+family+" ") {
			t.Errorf("exposition lacks runtime/process metric %s", family)
		}
	}
	if t.Failed() {
		t.Logf("exposition:\n%s", out)
	}
}

func containsLine(text, line string) bool {
	for _, l := range strings.Split(text, "\n") {
		if l == line {
			return true
		}
	}
	return false
}

// TestPromtoolCheck lints the exposition with Prometheus' own checker
// (names, units, _total, help texts, histogram shape).
func TestPromtoolCheck(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		testenv.SkipOrFail(t, "promtool not installed (Debian package prometheus; scripts/deps.sh installs it)")
	}
	out := scrape(t, populated())
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(out)
	var res bytes.Buffer
	cmd.Stdout, cmd.Stderr = &res, &res
	if err := cmd.Run(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, res.String())
	}
	// A broken exposition must fail, or the check above proves nothing.
	cmd = exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader("# TYPE azure_proxy_agent_requests counter\nazure_proxy_agent_requests 1\n")
	if err := cmd.Run(); err == nil {
		t.Error("promtool accepted a counter without _total and help text")
	}
}

func TestNilMetricsRecordNothing(t *testing.T) {
	var m *Metrics
	m.Request(&audit.Event{Status: 200})
	m.UpstreamFailure(&audit.Event{}, errors.New("x"))
	m.Polled(true, time.Now())
	m.KeyLatched(true)
}

func TestIdentityMapErrorKeepsScrapeUp(t *testing.T) {
	src := testSources()
	src.IdentityMap = func() (int, int, error) { return 0, 0, errors.New("redirector: closed") }
	rr := httptest.NewRecorder()
	New(src).Handler().ServeHTTP(rr, httptest.NewRequest("GET", Path, nil))
	if rr.Code != 200 || !strings.Contains(rr.Body.String(), "azure_proxy_agent_rule_epoch 7") {
		t.Fatalf("scrape with a failing source: %d\n%s", rr.Code, rr.Body)
	}
	if strings.Contains(rr.Body.String(), "identity_map_entries") {
		t.Error("identity map figure served although its source failed")
	}
}

func TestListenUnixOwnerOnly(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "run", "metrics.sock")
	// A stale socket from an earlier run is replaced.
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()

	ln, err := Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(sock), ".metrics-*")); len(left) != 0 {
		t.Errorf("temporary directories left behind: %v", left)
	}

	m := populated()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Serve(ctx, ln) }()
	cl := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := cl.Get("http://agent" + Path)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "azure_proxy_agent_rule_epoch 7") {
		t.Errorf("GET over the socket: %d\n%s", resp.StatusCode, body)
	}
	resp, err = cl.Get("http://agent/other")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /other: %d, want 404", resp.StatusCode)
	}
	cl.CloseIdleConnections()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still there after shutdown: %v", err)
	}
}

func TestListenUnixRefusesOtherFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "metrics.sock")
	if err := os.WriteFile(p, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if ln, err := Listen("unix", p); err == nil {
		ln.Close()
		t.Fatal("Listen replaced a regular file")
	}
	if b, _ := os.ReadFile(p); string(b) != "data" {
		t.Errorf("file changed to %q", b)
	}
}

// BenchmarkMetricsRequest is the request path's cost: one counter and one
// histogram update for an already seen label set.
func BenchmarkMetricsRequest(b *testing.B) {
	m := New(testSources())
	ev := decided(imds, msp.IMDS, authz.Allow, msp.ModeEnforce, 200, 400*time.Microsecond)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Request(ev)
		}
	})
}
