package agent

import (
	"encoding/json"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/hostsim"
	"github.com/opengpa/gpa/internal/testsupport"
	"github.com/opengpa/gpa/proxyagent/audit"
	"github.com/opengpa/gpa/proxyagent/claims"
	"github.com/opengpa/gpa/proxyagent/config"
	"github.com/opengpa/gpa/proxyagent/logfile"
	"github.com/opengpa/gpa/proxyagent/msp"
	"github.com/opengpa/gpa/proxyagent/status"
	"github.com/opengpa/gpa/proxyagent/telemetry"
)

// Once provisioning finishes the telemetry pipeline starts and
// telemetryLoggerStatus carries upstream's message with its state left
// UNKNOWN (§5.1).
func TestTelemetryLoggerStatus(t *testing.T) {
	h := newHarness(t, hostsim.ProxyAgentSettings{Enabled: boolPtr(false)})
	testsupport.WaitFor(t, "provisioning finished", func() bool {
		_, err := os.Stat(filepath.Join(h.cfg.LatchKeyFolder, "provisioned.tag"))
		return err == nil
	})
	var got status.ModuleStatus
	testsupport.WaitFor(t, "telemetryLoggerStatus "+telemetry.StartedMessage, func() bool {
		got = h.aggregate().ProxyAgentStatus.TelemetryLoggerStatus
		return got.Message == telemetry.StartedMessage
	})
	if got.Status != status.Unknown {
		t.Errorf("telemetryLoggerStatus %+v, want state UNKNOWN", got)
	}
}

// With sendTelemetry off there is no pipeline: runTelemetry returns at
// once, even with provisioning finished, and the status keeps its initial
// message.
func TestTelemetryOffNeverStarts(t *testing.T) {
	reg := status.NewRegistry()
	started := make(chan struct{})
	close(started)
	runTelemetry(t.Context(), nil, started, reg)
	if got := reg.Get(status.TelemetryLogger); got.Message != status.InitialMessage {
		t.Errorf("telemetryLoggerStatus %+v with telemetry off", got)
	}
}

// Log lines at or above fileLogLevelForEvents become telemetry events;
// without the key none do.
func TestLogLinesBecomeEvents(t *testing.T) {
	cases := []struct {
		name, level string
		want        int // of one Info and one Warn line
	}{
		{"Info", "Info", 2},
		{"Warn", "Warn", 1},
		{"absent", "", 0},
	}
	for _, c := range cases {
		cfg := config.Default()
		cfg.LogFolder = ""
		cfg.FileLogLevelForEvents = c.level
		q := telemetry.NewQueue("1.0.0")
		log, closeLogs, err := openLogs(cfg, io.Discard, io.Discard, q)
		if err != nil {
			t.Fatal(err)
		}
		log.Info("info line")
		log.Warn("warn line")
		closeLogs()
		tel := telemetry.New(telemetry.Options{Queue: q})
		if got := tel.Counts().Queued; got != c.want {
			t.Errorf("%s: %d events queued, want %d", c.name, got, c.want)
		}
	}
}

// A request whose summary opens a bucket queues one Info event
// "log_connection_summary" (module proxy_server) with the summary's JSON
// (§4.7); a repeat in the same bucket queues none; without telemetry the
// recorder gets no hook.
func TestConnectionSummaryEvents(t *testing.T) {
	if summaryEvents(nil) != nil {
		t.Fatal("a summary hook without telemetry")
	}
	q := telemetry.NewQueue("1.0.0")
	now := time.Date(2025, 4, 23, 12, 0, 0, 0, time.UTC)
	rec, err := audit.New(audit.Options{OnNewSummary: summaryEvents(q), Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	c := &claims.Claims{UserName: "root", ProcessFullPath: "/usr/bin/curl", ClientIP: "127.0.0.1", ClientPort: 40000}
	ev := audit.Event{Time: now, HTTPID: 7, Method: "GET", Target: "/metadata/instance", Status: 200, Caller: c, Authorized: true,
		Service: msp.IMDS, Dest: netip.MustParseAddrPort("169.254.169.254:80"),
		Client: netip.MustParseAddrPort("127.0.0.1:40000")}
	rec.Record(ev)
	rec.Record(ev)
	rec.Close()
	if got := telemetry.New(telemetry.Options{Queue: q}).Counts().Queued; got != 1 {
		t.Fatalf("%d events queued for two requests of one key, want 1", got)
	}
	e := summaryEvent(audit.Summary{ID: 7, Method: "GET", URL: "/metadata/instance?a=1&b=2", ResponseStatus: "200 OK"})
	var back audit.Summary
	if e.TaskName != "log_connection_summary" || e.OperationId != "proxy_server" || e.EventLevel != "INFO" ||
		!strings.Contains(e.Message, `"url":"/metadata/instance?a=1&b=2"`) || // serde_json's '&', not \u0026
		json.Unmarshal([]byte(e.Message), &back) != nil || back.ResponseStatus != "200 OK" {
		t.Errorf("event %+v", e)
	}
}

// System-event log lines go to stdout, errors to stderr (§7.2), at
// fileLogLevelForSystemEvents; by default only errors.
func TestSystemEventStreams(t *testing.T) {
	for _, level := range []string{"Info", ""} {
		cfg := config.Default()
		cfg.LogFolder = ""
		cfg.FileLogLevelForSystemEvents = level
		var out, errOut strings.Builder
		log, closeLogs, err := openLogs(cfg, &out, &errOut, nil)
		if err != nil {
			t.Fatal(err)
		}
		log.Info("info line")
		log.Warn("warn line", "k", "v")
		log.With("module", "m").Error("error line")
		closeLogs()
		wantOut := level != ""
		if strings.Contains(out.String(), "info line") != wantOut || strings.Contains(out.String(), "warn line") != wantOut ||
			strings.Contains(out.String(), "error line") {
			t.Errorf("level %q: stdout %q", level, out.String())
		}
		if !strings.Contains(errOut.String(), "error line") || strings.Contains(errOut.String(), "info line") ||
			strings.Contains(errOut.String(), "warn line") {
			t.Errorf("level %q: stderr %q", level, errOut.String())
		}
	}
}

// A connection-log line goes to stdout at fileLogLevelForSystemEvents
// (§4.8) when upstream's connection logger would write one there: for a
// request Audit mode denies and lets through (Info), not for one served
// or answered with an error by the host (upstream logs those at Trace).
func TestConnectionLinesOnStdout(t *testing.T) {
	h := newAuditIMDSHarness(t, func(c *config.Config) { c.FileLogLevelForSystemEvents = "Info" })
	const token = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/"
	if resp := h.do(root, h.imds(), get(token, "169.254.169.254", "Metadata: true\r\n")); resp.StatusCode != 200 {
		t.Fatalf("root's token request: status %d", resp.StatusCode)
	}
	if resp := h.do(root, h.imds(), get(token+"&x=1", "169.254.169.254")); resp.StatusCode != 400 {
		t.Fatalf("root's token request without Metadata: true: status %d, want the host's 400", resp.StatusCode)
	}
	if resp := h.do(nobody, h.imds(), get("/metadata/instance?api-version=2021-02-01", "169.254.169.254", "Metadata: true\r\n")); resp.StatusCode != 200 {
		t.Fatalf("nobody's audited request: status %d", resp.StatusCode)
	}
	testsupport.WaitFor(t, "the audited request's line on stdout, at Info", func() bool {
		for _, line := range strings.Split(h.stdout.String(), "\n") {
			if strings.Contains(line, "] - GET /metadata/instance?api-version=2021-02-01 to IMDS ") {
				return strings.Contains(line, "[INFO]")
			}
		}
		return false
	})
	if out := h.stdout.String(); strings.Contains(out, "] - GET /metadata/identity/oauth2/token") {
		t.Errorf("the line of a request served, or answered by the host, on stdout:\n%s", out)
	}
}

// connMirror sends connection-log lines where the agent's own lines go:
// stdout and stderr at fileLogLevelForSystemEvents (Error when absent),
// telemetry at fileLogLevelForEvents (none when absent or without
// telemetry).
func TestConnMirrorLevels(t *testing.T) {
	q := telemetry.NewQueue("1.0.0")
	for _, c := range []struct {
		system, events     string
		q                  *telemetry.Queue
		wantOut, wantEvent logfile.Level
	}{
		{"Info", "Warn", q, logfile.Info, logfile.Warn},
		{"", "", q, logfile.Error, 0},
		{"Trace", "Info", nil, logfile.Trace, 0},
	} {
		cfg := config.Default()
		cfg.FileLogLevelForSystemEvents, cfg.FileLogLevelForEvents = c.system, c.events
		m := connMirror(cfg, io.Discard, io.Discard, c.q)
		if m.OutLevel != c.wantOut || m.EventLevel != c.wantEvent || (m.Event != nil) != (c.wantEvent != 0) ||
			m.Out != io.Discard || m.Err != io.Discard {
			t.Errorf("%+v: mirror levels out %v event %v (hook %v)", c, m.OutLevel, m.EventLevel, m.Event != nil)
		}
	}
	// The hook queues the line as a ConnectionLogger event.
	m := connMirror(config.Config{FileLogLevelForEvents: "Info"}, io.Discard, io.Discard, q)
	m.Event(logfile.Info, time.Now(), []byte("7[3] - GET /metadata/instance - 200 OK"))
	if got := telemetry.New(telemetry.Options{Queue: q}).Counts().Queued; got != 1 {
		t.Errorf("%d events queued, want 1", got)
	}
}
