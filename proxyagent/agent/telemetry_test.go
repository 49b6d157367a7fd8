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
		log, closeLogs, err := openLogs(cfg, io.Discard, q)
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
