package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/internal/e2eenv"
	"github.com/opengpa/gpa/internal/testenv"
	"github.com/opengpa/gpa/proxyagent/audit"
	"github.com/opengpa/gpa/proxyagent/msp"
	"github.com/opengpa/gpa/proxyagent/redact"
)

// Addresses inside the test's namespace.
const (
	metricsAddr    = "127.0.0.1:9585"
	prometheusAddr = "127.0.0.1:9090"
)

// TestObservability runs the agent with its metrics endpoint on loopback
// and its audit records also going to a syslog socket the test owns. A
// real Prometheus server, started by the test in the namespace, scrapes
// the agent; after allowed and denied requests the counters come back
// through Prometheus' query API, and the syslog socket has one message
// per decision with the caller's secret redacted.
func TestObservability(t *testing.T) {
	if buildErr != nil {
		t.Fatalf("building the binaries: %v", buildErr)
	}
	promBin, err := exec.LookPath("prometheus")
	if err != nil {
		testenv.SkipOrFail(t, "prometheus not installed (Debian package prometheus; scripts/deps.sh installs it)")
	}
	sysDir := t.TempDir()
	sysPath := filepath.Join(sysDir, "log")
	syslogd, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sysPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syslogd.Close() })

	e := e2eenv.New(t, e2eenv.Config{Bin: bins, Settings: e2eenv.EnforceSettings,
		AgentConfig: map[string]any{"metricsListen": metricsAddr, "auditSyslog": sysPath, "maxConnectionsPerCaller": 2}})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if code, out, err := e.WaitProvisioned(ctx, 30*time.Second); err != nil || code != 0 {
		t.Fatalf("agent not provisioned: exit %d %v: %s", code, err, out)
	}
	startPrometheus(t, e, promBin)

	// In Enforce without rules WireServer is root-only and IMDS is open:
	// nobody is denied the goal state three times, root and nobody are
	// allowed once each.
	secret := "hunter2-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	for range 3 {
		// The header comes first so that it is inside the four arguments
		// the caller's claims keep of a command line.
		r, err := e.Run(ctx, e2eenv.Nobody, "curl", "-H", "X-Note: password="+secret, "-sS", "-o", "/dev/null",
			"-w", "%{http_code}", "--noproxy", "*", "--max-time", "10", "-H", wsVersion, goalStateURL)
		if err != nil || string(r.Stdout) != "403" {
			t.Fatalf("nobody's goal state: %v %q %s", err, r.Stdout, r.Stderr)
		}
	}
	if r := curl(ctx, t, e, e2eenv.Root, goalStateURL, wsVersion); r.Status != http.StatusOK {
		t.Fatalf("root's goal state: %d", r.Status)
	}
	if r := curl(ctx, t, e, e2eenv.Nobody, imdsURL, metadataTrue); r.Status != http.StatusOK {
		t.Fatalf("nobody's IMDS call: %d", r.Status)
	}

	// nobody may hold two connections at once (maxConnectionsPerCaller):
	// the kernel refuses the third connect.
	imdsTCP := "/dev/tcp/" + msp.IMDSAddr.Addr().String() + "/" + strconv.Itoa(int(msp.IMDSAddr.Port()))
	r, err := e.Run(ctx, e2eenv.Nobody, "bash", "-c", "exec 3<>"+imdsTCP+" 4<>"+imdsTCP+"; "+
		"exec 5<>"+imdsTCP+" && echo third connect accepted")
	if err != nil || r.ExitCode == 0 || strings.Contains(string(r.Stdout), "accepted") || !strings.Contains(r.Stderr, "Operation not permitted") {
		t.Fatalf("nobody's third connection at limit 2: %v exit %d %q %q, want it refused (EPERM)", err, r.ExitCode, r.Stdout, r.Stderr)
	}

	// The service runs on one processor unless GOMAXPROCS sets a number.
	procs := "1"
	if n, err := strconv.Atoi(os.Getenv("GOMAXPROCS")); err == nil && n > 0 {
		procs = strconv.Itoa(n)
	}
	for _, q := range []struct{ query, want string }{
		{`go_gomaxprocs`, procs},
		{`sum(azure_proxy_agent_requests_total{service="WireServer",decision="deny",mode="enforce",status="403"})`, "3"},
		{`sum(azure_proxy_agent_requests_total{decision="allow",status="200"})`, "2"},
		{`sum(azure_proxy_agent_request_duration_seconds_count{service="WireServer"})`, "4"},
		{`azure_proxy_agent_key_latched`, "1"},
		{`azure_proxy_agent_module_running{module="ebpfProgramStatus"}`, "1"},
		{`azure_proxy_agent_connections_refused_total{reason="caller_limit_connect"}`, "1"},
	} {
		waitQuery(ctx, t, e, q.query, q.want)
	}

	// Syslog: one message per decision; the denied ones are warnings
	// (authpriv.warning = 84) and carry the record the file has, with the
	// command line's secret redacted.
	denied := 0
	_ = syslogd.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 64<<10)
	for denied < 3 {
		n, err := syslogd.Read(buf)
		if err != nil {
			t.Fatalf("syslog: %d denied records received, then %v", denied, err)
		}
		msg := string(buf[:n])
		if strings.Contains(msg, secret) {
			t.Fatalf("syslog message carries the caller's secret: %s", msg)
		}
		_, body, ok := strings.Cut(msg, "]: ")
		if !ok || !strings.HasPrefix(msg, "<") {
			t.Fatalf("not a syslog message: %q", msg)
		}
		var rec audit.Record
		if err := json.Unmarshal([]byte(body), &rec); err != nil {
			t.Fatalf("syslog body is not an audit record: %v: %s", err, body)
		}
		if rec.Decision != "deny" {
			continue
		}
		denied++
		if !strings.HasPrefix(msg, "<84>") {
			t.Errorf("denied record's priority: %q, want <84>", msg[:5])
		}
		if rec.Caller == nil || rec.Caller.UserID != e2eenv.NobodyUID || !strings.Contains(rec.Caller.ProcessCmdLine, redact.Marker) {
			t.Errorf("denied record's caller: %+v", rec.Caller)
		}
	}
	waitQuery(ctx, t, e, `azure_proxy_agent_audit_records_dropped_total{sink="syslog"}`, "0")
}

// startPrometheus runs a Prometheus server in the namespace (outside the
// redirected group) that scrapes the agent every 200 ms, with a private
// configuration and data directory, and stops it when the test ends.
func startPrometheus(t *testing.T, e *e2eenv.Env, bin string) {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  scrape_interval: 200ms
  scrape_timeout: 200ms
scrape_configs:
  - job_name: azure-proxy-agent
    static_configs:
      - targets: [%q]
`, metricsAddr)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+prometheusAddr, "--log.level=warn")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := e.Start(cmd, e2eenv.Root.Outside()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logFile.Close()
		if t.Failed() {
			if b, err := os.ReadFile(logFile.Name()); err == nil {
				t.Logf("prometheus log:\n%s", b)
			}
		}
	})
}

// waitQuery asks Prometheus for query until its single result is want,
// failing at ctx's deadline with the last answer.
func waitQuery(ctx context.Context, t *testing.T, e *e2eenv.Env, query, want string) {
	t.Helper()
	cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return e.Netns.Dial(ctx, network, addr)
		}}}
	defer cl.CloseIdleConnections()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	last := ""
	for {
		got, err := promQuery(ctx, cl, query)
		if err == nil && got == want {
			return
		}
		last = got
		if err != nil {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			t.Fatalf("Prometheus query %s: last answer %q, want %q", query, last, want)
		case <-tick.C:
		}
	}
}

// promQuery runs an instant query and returns its single sample's value.
func promQuery(ctx context.Context, cl *http.Client, query string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		"http://"+prometheusAddr+"/api/v1/query?query="+url.QueryEscape(query), nil)
	if err != nil {
		return "", err
	}
	resp, err := cl.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	var r struct {
		Status string `json:"status"`
		Data   struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil || r.Status != "success" {
		return "", fmt.Errorf("query answer %s: %v", body, err)
	}
	if len(r.Data.Result) != 1 {
		return "", fmt.Errorf("%d samples", len(r.Data.Result))
	}
	v, _ := r.Data.Result[0].Value[1].(string)
	return v, nil
}
