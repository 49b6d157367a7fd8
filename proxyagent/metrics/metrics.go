// Package metrics exposes the proxy agent's figures at /metrics in the
// Prometheus text exposition format, for the monitoring operators already
// run on their VMs: requests by service, decision, mode and status,
// latency histograms per service, upstream failures, requests without
// identity, the kernel identity map's occupancy, audit records written and
// dropped, the key latch, rule epoch and key-status polls, module states,
// and the Go runtime and process figures.
//
// The request path calls Request and UpstreamFailure, which only update
// in-memory series (an atomic counter and a histogram behind a briefly
// held mutex; no I/O, no allocation once a label set has been seen). Everything that
// other parts of the agent already know (key latch, modes, epoch, map
// occupancy, audit counts, module states) is read at scrape time through
// the functions in Sources, so those parts need no call sites.
//
// Names follow Prometheus conventions: prefix azure_proxy_agent_, base
// units (seconds, bytes), counters end in _total, and every family has
// HELP and TYPE lines (families.go defines them all, once), so
// `promtool check metrics` passes. Counters and histograms are
// github.com/VictoriaMetrics/metrics, which also reads the Go runtime and
// process figures; the official client cost 3.6 MiB of idle RSS just by
// being linked (README's Dependencies table has the measurements).
package metrics

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	vm "github.com/VictoriaMetrics/metrics"

	"github.com/opengpa/gpa/proxyagent/audit"
)

// Namespace is the prefix of every metric the agent defines.
const Namespace = "azure_proxy_agent"

// Path is where the metrics handler answers.
const Path = "/metrics"

// ContentType is the text exposition format's media type.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// LatencyBuckets are the upper bounds (seconds) of the request latency
// histogram: from 100 µs (the agent's own overhead) to 10 s (the host
// request timeout).
var LatencyBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// Sources are read at every scrape. A nil function leaves its metric out.
type Sources struct {
	// Version is the agent version (azure_proxy_agent_build_info).
	Version string
	// IdentityMap returns the kernel identity map's entries and capacity.
	IdentityMap func() (entries, capacity int, err error)
	// KeyLatched reports whether a key is latched in memory.
	KeyLatched func() bool
	// SecureChannel returns the secure-channel state string and each
	// service's mode ("disabled", "audit", "enforce"), keyed by service
	// name (WireServer, IMDS, HostGAPlugin).
	SecureChannel func() (state string, modes map[string]string)
	// RuleEpoch is the version of the installed rule snapshot.
	RuleEpoch func() uint64
	// Audit returns the records written to and dropped from each audit
	// sink ("file", "syslog").
	Audit func() []SinkCount
	// ConnectionsRefused returns how many connections were refused before
	// any request was read, by reason (caller_limit_connect: the kernel
	// refused the connect, the caller holding maxConnectionsPerCaller;
	// max_connections_connect: the kernel refused it, the callers in the
	// agent's namespace other than root holding their share of the slots;
	// caller_limit and max_connections: closed at accept for those
	// reasons, max_connections also for containers holding their share or
	// every slot taken).
	ConnectionsRefused func() map[string]uint64
	// Modules returns each status module's state (keyLatchStatus,
	// ebpfProgramStatus, proxyListenerStatus → RUNNING, STOPPED, UNKNOWN).
	Modules func() map[string]string
	// AuditSuppressed returns the audit records not written because their
	// caller exceeded its record budget.
	AuditSuppressed func() uint64
}

// SinkCount is one audit sink's record counts.
type SinkCount struct {
	Sink             string
	Written, Dropped uint64
}

// Metrics holds the agent's metrics. Create it with New. A nil *Metrics
// is valid and records nothing. Safe for concurrent use.
type Metrics struct {
	src Sources
	set *vm.Set // every series updated by calls; families.go names them

	// cache maps a request's label values to its counter and histogram,
	// sparing the request path building the series name.
	cache sync.Map // reqKey → *reqSeries

	lastPoll     *vm.Gauge
	latchChanges *vm.Counter

	mu          sync.Mutex // guards latched
	latched     *bool      // last key latch state told to KeyLatched
	everLatched bool       // KeyLatched(true) was told since start
}

type reqKey struct {
	service, decision, mode string
	status                  int
}

type reqSeries struct {
	count   *vm.Counter
	latency *vm.PrometheusHistogram
}

// New returns the agent's metrics, reading src at every scrape.
func New(src Sources) *Metrics {
	m := &Metrics{src: src, set: vm.NewSet()}
	m.lastPoll = m.set.NewGauge(Namespace+"_key_status_last_success_timestamp_seconds", nil)
	m.latchChanges = m.set.NewCounter(Namespace + "_key_latch_changes_total")
	// Series that can be predicted exist from the start at 0, so a rate()
	// over a fresh agent is 0, not absent.
	for _, r := range []string{"direct", "no_claims"} {
		m.set.GetOrCreateCounter(unidentified(r))
	}
	for _, r := range []string{"ok", "error"} {
		m.set.GetOrCreateCounter(polls(r))
	}
	return m
}

func unidentified(reason string) string {
	return Namespace + `_unidentified_requests_total{reason="` + reason + `"}`
}

func polls(result string) string {
	return Namespace + `_key_status_polls_total{result="` + result + `"}`
}

// Handler serves the exposition.
func (m *Metrics) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b bytes.Buffer
		m.Render(&b)
		w.Header().Set("Content-Type", ContentType)
		w.Header().Set("Content-Length", strconv.Itoa(b.Len()))
		w.Write(b.Bytes())
	})
}

// Render appends the whole exposition to b: the agent's families, then
// the Go runtime's and the process's, each with its HELP and TYPE.
func (m *Metrics) Render(b *bytes.Buffer) {
	var raw bytes.Buffer
	m.set.WritePrometheus(&raw)
	m.writeScraped(&raw)
	vm.WriteProcessMetrics(&raw)
	vm.WriteFDMetrics(&raw)
	annotate(b, raw.Bytes())
}

// Request counts one finished request (every audit.Event the proxy
// produces).
func (m *Metrics) Request(ev *audit.Event) {
	if m == nil {
		return
	}
	k := reqKey{service: serviceOf(ev), decision: audit.DecisionNone, mode: "none", status: ev.Status}
	if ev.Authorized {
		k.decision = ev.Decision.Result.String()
		if ev.Decision.Mode != "" {
			k.mode = string(ev.Decision.Mode)
		}
	}
	s, ok := m.cache.Load(k)
	if !ok {
		s, _ = m.cache.LoadOrStore(k, &reqSeries{
			count: m.set.GetOrCreateCounter(Namespace + `_requests_total{service="` + label(k.service) +
				`",decision="` + label(k.decision) + `",mode="` + label(k.mode) + `",status="` + strconv.Itoa(k.status) + `"}`),
			latency: m.set.GetOrCreatePrometheusHistogramExt(
				Namespace+`_request_duration_seconds{service="`+label(k.service)+`"}`, LatencyBuckets),
		})
	}
	rs := s.(*reqSeries)
	rs.count.Inc()
	rs.latency.Update(ev.Latency.Seconds())
	if ev.Status == http.StatusMisdirectedRequest {
		reason := "direct"
		if ev.Dest.IsValid() {
			reason = "no_claims"
		}
		m.set.GetOrCreateCounter(unidentified(reason)).Inc()
	}
}

// UpstreamFailure counts a forwarded request that failed with err on the
// way to or from the host.
func (m *Metrics) UpstreamFailure(ev *audit.Event, err error) {
	if m == nil {
		return
	}
	kind := "error"
	if isTimeout(err) {
		kind = "timeout"
	}
	m.set.GetOrCreateCounter(Namespace + `_upstream_errors_total{service="` + label(serviceOf(ev)) + `",kind="` + kind + `"}`).Inc()
}

// Polled counts one key-status poll; at is its time when it succeeded.
func (m *Metrics) Polled(ok bool, at time.Time) {
	if m == nil {
		return
	}
	if !ok {
		m.set.GetOrCreateCounter(polls("error")).Inc()
		return
	}
	m.set.GetOrCreateCounter(polls("ok")).Inc()
	m.lastPoll.Set(float64(at.UnixNano()) / 1e9)
}

// KeyLatched tells the current key latch state; a change from the last
// state told is counted in key_latch_changes_total once a key has been
// latched: the first latch after start (not latched until the host
// answered) is no flap.
func (m *Metrics) KeyLatched(latched bool) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.latched != nil && *m.latched != latched && m.everLatched {
		m.latchChanges.Inc()
	}
	m.latched = &latched
	m.everLatched = m.everLatched || latched
}

// serviceOf names the request's service for labels: the authorizer's
// service, else the one its original destination was classified as, else
// "none" (a direct connection).
func serviceOf(ev *audit.Event) string {
	if ev.Authorized && ev.Decision.Service != "" {
		return string(ev.Decision.Service)
	}
	if ev.Service != "" {
		return string(ev.Service)
	}
	return "none"
}

func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
