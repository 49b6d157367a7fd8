package status

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/opengpa/gpa/internal/atomicfile"
)

// Summarizer supplies the aggregated connection summaries: requests that
// went through (conn) and those whose authorization failed (failed).
type Summarizer interface {
	Summaries() (conn, failed []SummaryEntry)
}

// Reporter builds the aggregate status from its sources. Every field but
// Registry is optional.
type Reporter struct {
	Registry *Registry
	// Version is proxyAgentStatus.version.
	Version string
	// Summaries supplies both summary lists; nil reports empty lists.
	Summaries Summarizer
	// ConnectionsCount returns the number of requests handled since start.
	ConnectionsCount func() uint64
	// Now is the clock of the timestamp; nil means time.Now.
	Now func() time.Time
}

// Aggregate returns the current status document.
func (r *Reporter) Aggregate() Aggregate {
	now := time.Now
	if r.Now != nil {
		now = r.Now
	}
	reg := r.Registry
	if reg == nil {
		reg = NewRegistry()
	}
	a := AgentStatus{
		Version:               r.Version,
		MonitorStatus:         reg.Get(Monitor),
		KeyLatchStatus:        reg.Get(KeyLatch),
		EbpfProgramStatus:     reg.Get(EbpfProgram),
		ProxyListenerStatus:   reg.Get(ProxyListener),
		TelemetryLoggerStatus: reg.Get(TelemetryLogger),
	}
	// The monitor is the status report itself: RUNNING whenever there is a
	// report, also before its first write has set the module (upstream
	// hard-codes it; protocol.md §5.1).
	a.MonitorStatus.Status = Running
	// Only the key keeper reports states.
	a.MonitorStatus.States = nil
	a.EbpfProgramStatus.States = nil
	a.ProxyListenerStatus.States = nil
	a.TelemetryLoggerStatus.States = nil
	a.Status = Overall(a.KeyLatchStatus.Status, a.EbpfProgramStatus.Status, a.ProxyListenerStatus.Status)
	if r.ConnectionsCount != nil {
		a.ProxyConnectionsCount = r.ConnectionsCount()
	}
	var conn, failed []SummaryEntry
	if r.Summaries != nil {
		conn, failed = r.Summaries.Summaries()
	}
	return Aggregate{
		Timestamp:                 FormatTimestamp(now()),
		ProxyAgentStatus:          a,
		ProxyConnectionSummary:    conn,
		FailedAuthenticateSummary: failed,
	}
}

// Writer keeps status.json current: it rewrites the file every Interval
// and shortly after any registry change, atomically (status.tmp then
// rename) with mode 0640. The monitor module reports each write's outcome.
type Writer struct {
	Reporter *Reporter
	// Path is the status file, normally <statusFolder>/status.json.
	Path string
	// Interval between periodic writes; 0 means 60 s.
	Interval time.Duration
	// MinGap is the least time between two change-triggered writes; 0 means
	// 100 ms. It keeps a chatty module from rewriting the file constantly.
	MinGap time.Duration
	Logger *slog.Logger
}

// WriteOnce writes the status file now and records the outcome in the
// monitor module.
func (w *Writer) WriteOnce() error {
	err := w.write()
	reg := w.Reporter.Registry
	if err != nil {
		if reg != nil {
			reg.Set(Monitor, Running, "Error writing aggregate status to status file: "+err.Error())
		}
		return err
	}
	if reg != nil {
		reg.Set(Monitor, Running, "Aggregate status written to status file: "+w.Path)
	}
	return nil
}

func (w *Writer) write() error {
	if w.Path == "" {
		return fmt.Errorf("status: no status file path")
	}
	data, err := json.Marshal(w.Reporter.Aggregate())
	if err != nil {
		return fmt.Errorf("status: encode: %w", err)
	}
	dir := filepath.Dir(w.Path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("status: create %s: %w", dir, err)
	}
	if err := atomicfile.WriteFile(w.Path, data, 0o640); err != nil {
		return fmt.Errorf("status: %w", err)
	}
	return nil
}

// Run writes the file at once, then on every tick and change, until ctx
// ends. Write errors are logged and reported, never fatal.
func (w *Writer) Run(ctx context.Context) {
	log := w.Logger
	if log == nil {
		log = slog.Default()
	}
	interval := w.Interval
	if interval <= 0 {
		interval = 60 * time.Second
	}
	gap := w.MinGap
	if gap <= 0 {
		gap = 100 * time.Millisecond
	}
	var changed <-chan struct{}
	if w.Reporter.Registry != nil {
		changed = w.Reporter.Registry.Changed()
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		if err := w.WriteOnce(); err != nil {
			log.Warn("status file not written", "path", w.Path, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-changed:
			select {
			case <-ctx.Done():
				return
			case <-time.After(gap):
			}
		}
	}
}
