package agent

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/opengpa/gpa/hostsim"
	"github.com/opengpa/gpa/internal/testsupport"
	"github.com/opengpa/gpa/proxyagent/config"
	"github.com/opengpa/gpa/proxyagent/status"
	"github.com/opengpa/gpa/proxyagent/telemetry"
)

// Once provisioning finishes the telemetry pipeline starts and
// telemetryLoggerStatus carries upstream's message with its state left
// UNKNOWN (§5.1); with sendTelemetry off it is never started.
func TestTelemetryLoggerStatus(t *testing.T) {
	cases := []struct {
		name string
		send bool
		want string
	}{
		{"on", true, telemetry.StartedMessage},
		{"off", false, status.InitialMessage},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, hostsim.ProxyAgentSettings{Enabled: boolPtr(false)}, func(cfg *config.Config) { cfg.SendTelemetry = c.send })
			testsupport.WaitFor(t, "provisioning finished", func() bool {
				_, err := os.Stat(filepath.Join(h.cfg.LatchKeyFolder, "provisioned.tag"))
				return err == nil
			})
			var got status.ModuleStatus
			testsupport.WaitFor(t, "telemetryLoggerStatus "+c.want, func() bool {
				got = h.aggregate().ProxyAgentStatus.TelemetryLoggerStatus
				return got.Message == c.want
			})
			if got.Status != status.Unknown {
				t.Errorf("telemetryLoggerStatus %+v, want state UNKNOWN", got)
			}
		})
	}
}

// Log lines at or above fileLogLevelForEvents become telemetry events;
// without the key, or with sendTelemetry off (no queue), none do.
func TestLogLinesBecomeEvents(t *testing.T) {
	cases := []struct {
		name, level string
		queue       bool
		want        int // of one Info and one Warn line
	}{
		{"Info", "Info", true, 2},
		{"Warn", "Warn", true, 1},
		{"absent", "", true, 0},
		{"telemetry off", "Info", false, 0},
	}
	for _, c := range cases {
		cfg := config.Default()
		cfg.LogFolder = ""
		cfg.FileLogLevelForEvents = c.level
		var q *telemetry.Queue
		if c.queue {
			q = telemetry.NewQueue("1.0.0")
		}
		log, closeLogs, err := openLogs(cfg, io.Discard, q)
		if err != nil {
			t.Fatal(err)
		}
		log.Info("info line")
		log.Warn("warn line")
		closeLogs()
		if q == nil {
			continue
		}
		tel := telemetry.New(telemetry.Options{Queue: q})
		if got := tel.Counts().Queued; got != c.want {
			t.Errorf("%s: %d events queued, want %d", c.name, got, c.want)
		}
	}
}
