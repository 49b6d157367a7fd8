package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/proxyagent/audit"
	"github.com/opengpa/gpa/proxyagent/config"
)

// TestMetricsAndSyslog runs the agent with its metrics on the default
// unix socket in the status folder and its audit records also going to a
// syslog socket: the socket is root-only, the request counters, key latch
// and module states come back from a scrape, each decision reaches
// syslog, and the socket is gone once the agent stops.
func TestMetricsAndSyslog(t *testing.T) {
	h := newHarness(t, enforceSettings())
	h.stop()
	sysPath := filepath.Join(h.dir, "syslog")
	syslogd, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sysPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer syslogd.Close()
	h.cfg.AuditSyslog = sysPath
	h.start()
	h.waitLatched("")

	sock := filepath.Join(h.cfg.StatusFolder, config.MetricsSocketName)
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("metrics socket %s: %v %v, want a 0600 socket", sock, fi, err)
	}
	if resp := h.do(nobody, h.ws(), get("/machine?comp=goalstate", "168.63.129.16")); resp.StatusCode != 403 {
		t.Fatalf("nobody's goal state: %s", resp.Status)
	}
	if resp := h.do(root, h.ws(), get("/machine?comp=goalstate", "168.63.129.16")); resp.StatusCode != 200 {
		t.Fatalf("root's goal state: %s", resp.Status)
	}

	cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	defer cl.CloseIdleConnections()
	want := []string{
		`azure_proxy_agent_requests_total{service="WireServer",decision="deny",mode="enforce",status="403"} 1`,
		`azure_proxy_agent_requests_total{service="WireServer",decision="allow",mode="enforce",status="200"} 1`,
		`azure_proxy_agent_key_latched 1`,
		`azure_proxy_agent_service_mode{service="WireServer",mode="enforce"} 1`,
		`azure_proxy_agent_module_running{module="ebpfProgramStatus"} 1`,
		`azure_proxy_agent_module_running{module="proxyListenerStatus"} 1`,
		`azure_proxy_agent_build_info{version="9.9.9"} 1`,
		`azure_proxy_agent_audit_records_dropped_total{sink="syslog"} 0`,
		`azure_proxy_agent_audit_records_suppressed_total 0`,
	}
	// The counters follow the responses (a request is counted after it is
	// answered): wait for them.
	deadline := time.Now().Add(10 * time.Second)
	var missing []string
	for {
		body := scrapeOnce(t, cl)
		missing = missing[:0]
		for _, w := range want {
			if !strings.Contains("\n"+body, "\n"+w+"\n") {
				missing = append(missing, w)
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("scrape lacks %q:\n%s", missing, body)
		}
		time.Sleep(20 * time.Millisecond)
	}

	decisions := map[string]int{}
	_ = syslogd.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64<<10)
	for decisions["deny"] == 0 || decisions["allow"] == 0 {
		n, err := syslogd.Read(buf)
		if err != nil {
			t.Fatalf("syslog: got %v, then %v", decisions, err)
		}
		_, body, _ := strings.Cut(string(buf[:n]), "]: ")
		var rec audit.Record
		if err := json.Unmarshal([]byte(body), &rec); err != nil {
			t.Fatalf("syslog message is not an audit record: %v: %q", err, buf[:n])
		}
		if strings.HasPrefix(rec.Target, "/machine") {
			decisions[rec.Decision]++
		}
	}

	h.stop()
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("metrics socket left after stop: %v", err)
	}
}

func scrapeOnce(t *testing.T, cl *http.Client) string {
	t.Helper()
	resp, err := cl.Get("http://agent/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("scrape: %d %v", resp.StatusCode, err)
	}
	return string(b)
}
