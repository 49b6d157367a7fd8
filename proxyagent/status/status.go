// Package status holds the agent's aggregate status (shared/spec/protocol.md
// §5.1): the wire types of status.json and /gpa-aggregated-status in
// upstream's exact field order, a registry of per-module states and
// messages, and a writer that keeps status.json current.
package status

import (
	"encoding/json"
	"maps"
	"sync"
	"time"
	"unicode/utf8"
)

// ModuleState is a module's state: UNKNOWN, RUNNING or STOPPED.
type ModuleState string

// Module states.
const (
	Unknown ModuleState = "UNKNOWN"
	Running ModuleState = "RUNNING"
	Stopped ModuleState = "STOPPED"
)

// OverallState is the agent's overall state.
type OverallState string

// Overall states; UNKNOWN exists upstream but is never produced.
const (
	Success      OverallState = "SUCCESS"
	Error        OverallState = "ERROR"
	UnknownState OverallState = "UNKNOWN"
)

// InitialMessage is every module's message before the module reports.
const InitialMessage = "Status unknown."

// MaxMessageBytes is the longest message reported; longer ones are cut
// and end in "...".
const MaxMessageBytes = 1024

// TimestampLayout is the UTC timestamp format of status.json and the
// provisioning tag file: milliseconds, no zone suffix.
const TimestampLayout = "2006-01-02T15:04:05.000"

// FormatTimestamp renders t in UTC with TimestampLayout.
func FormatTimestamp(t time.Time) string { return t.UTC().Format(TimestampLayout) }

// ModuleStatus is one module's entry: state, message and, for the key
// keeper only, its states map (omitted elsewhere).
type ModuleStatus struct {
	Status  ModuleState       `json:"status"`
	Message string            `json:"message"`
	States  map[string]string `json:"states,omitempty"`
}

// AgentStatus is the proxyAgentStatus object.
type AgentStatus struct {
	Version               string       `json:"version"`
	Status                OverallState `json:"status"`
	MonitorStatus         ModuleStatus `json:"monitorStatus"`
	KeyLatchStatus        ModuleStatus `json:"keyLatchStatus"`
	EbpfProgramStatus     ModuleStatus `json:"ebpfProgramStatus"`
	ProxyListenerStatus   ModuleStatus `json:"proxyListenerStatus"`
	TelemetryLoggerStatus ModuleStatus `json:"telemetryLoggerStatus"`
	ProxyConnectionsCount uint64       `json:"proxyConnectionsCount"`
}

// SummaryEntry is one aggregated connection summary (protocol.md §4.7):
// the requests that share user, destination, process and response status,
// counted over the live time buckets. A nil UserGroups is written as null,
// as upstream writes a missing group list.
type SummaryEntry struct {
	UserName        string   `json:"userName"`
	IP              string   `json:"ip"`
	Port            uint16   `json:"port"`
	ProcessCmdLine  string   `json:"processCmdLine"`
	ResponseStatus  string   `json:"responseStatus"`
	Count           uint64   `json:"count"`
	UserGroups      []string `json:"userGroups"`
	ProcessFullPath string   `json:"processFullPath"`
}

// Aggregate is the whole status document. Both summary lists are always
// arrays ([] when empty), never null.
type Aggregate struct {
	Timestamp                 string         `json:"timestamp"`
	ProxyAgentStatus          AgentStatus    `json:"proxyAgentStatus"`
	ProxyConnectionSummary    []SummaryEntry `json:"proxyConnectionSummary"`
	FailedAuthenticateSummary []SummaryEntry `json:"failedAuthenticateSummary"`
}

// MarshalJSON writes the document with empty summary lists as [].
func (a Aggregate) MarshalJSON() ([]byte, error) {
	type plain Aggregate
	p := plain(a)
	if p.ProxyConnectionSummary == nil {
		p.ProxyConnectionSummary = []SummaryEntry{}
	}
	if p.FailedAuthenticateSummary == nil {
		p.FailedAuthenticateSummary = []SummaryEntry{}
	}
	return json.Marshal(p)
}

// Overall returns SUCCESS iff the key latch, eBPF program and proxy
// listener modules are all RUNNING, else ERROR.
func Overall(keyLatch, ebpf, listener ModuleState) OverallState {
	if keyLatch == Running && ebpf == Running && listener == Running {
		return Success
	}
	return Error
}

// Truncate cuts msg to at most MaxMessageBytes bytes (at a UTF-8 boundary)
// followed by "..."; shorter messages are returned unchanged.
func Truncate(msg string) string {
	if len(msg) <= MaxMessageBytes {
		return msg
	}
	cut := MaxMessageBytes
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut] + "..."
}

// Module names a status entry.
type Module int

// The modules of proxyAgentStatus.
const (
	Monitor Module = iota
	KeyLatch
	EbpfProgram
	ProxyListener
	TelemetryLogger
	numModules
)

// String returns the module's JSON field name.
func (m Module) String() string {
	switch m {
	case Monitor:
		return "monitorStatus"
	case KeyLatch:
		return "keyLatchStatus"
	case EbpfProgram:
		return "ebpfProgramStatus"
	case ProxyListener:
		return "proxyListenerStatus"
	case TelemetryLogger:
		return "telemetryLoggerStatus"
	}
	return "unknown"
}

// Registry holds each module's current status, set by the module's owner
// (the key keeper's state is copied in by its change callback). It is
// safe for concurrent use; its mutex owns all entries.
type Registry struct {
	mu      sync.Mutex
	entries [numModules]ModuleStatus
	changed chan struct{}
}

// NewRegistry returns a registry with every module UNKNOWN and
// "Status unknown.".
func NewRegistry() *Registry {
	r := &Registry{changed: make(chan struct{}, 1)}
	for i := range r.entries {
		r.entries[i] = ModuleStatus{Status: Unknown, Message: InitialMessage}
	}
	return r
}

func valid(m Module) bool { return m >= 0 && m < numModules }

// Set records a module's state and message. Changed is signalled only when
// either differs from what was recorded, and never for the monitor module
// (whose message reports the status writes themselves).
func (r *Registry) Set(m Module, state ModuleState, message string) {
	if !valid(m) {
		return
	}
	r.mu.Lock()
	s := r.entries[m]
	s.Status, s.Message = state, message
	r.mu.Unlock()
	r.SetStatus(m, s)
}

// SetStatus records a module's whole status, its states map included (a
// copy is kept). Changed is signalled as by Set.
func (r *Registry) SetStatus(m Module, s ModuleStatus) {
	if !valid(m) {
		return
	}
	s.States = maps.Clone(s.States)
	r.mu.Lock()
	e := &r.entries[m]
	diff := e.Status != s.Status || e.Message != s.Message || !maps.Equal(e.States, s.States)
	*e = s
	r.mu.Unlock()
	if diff && m != Monitor {
		r.touch()
	}
}

// SetMessage records a module's message and keeps its state.
func (r *Registry) SetMessage(m Module, message string) {
	if !valid(m) {
		return
	}
	r.mu.Lock()
	state := r.entries[m].Status
	r.mu.Unlock()
	r.Set(m, state, message)
}

// SetState records a module's state and keeps its message.
func (r *Registry) SetState(m Module, state ModuleState) {
	if !valid(m) {
		return
	}
	r.mu.Lock()
	msg := r.entries[m].Message
	r.mu.Unlock()
	r.Set(m, state, msg)
}

// Get returns module m's status with its message truncated per Truncate.
// The states map is a copy.
func (r *Registry) Get(m Module) ModuleStatus {
	if !valid(m) {
		return ModuleStatus{Status: Unknown, Message: InitialMessage}
	}
	r.mu.Lock()
	s := r.entries[m]
	r.mu.Unlock()
	s.Message = Truncate(s.Message)
	s.States = maps.Clone(s.States)
	return s
}

func (r *Registry) touch() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// Changed receives a value after any status change (coalesced: several
// changes may produce one signal).
func (r *Registry) Changed() <-chan struct{} { return r.changed }
