package hostsim

import (
	"sync"
	"time"

	"github.com/opengpa/gpa/proxyagent/msp"
)

// Service names the host service a request was received by.
type Service string

// The three simulated services.
const (
	WireServer Service = "wireserver"
	IMDS       Service = "imds"
	HostGA     Service = "hostga"
)

// Verdict is the host's judgement of a request's signature.
type Verdict string

// Verdicts. Valid, Exempt and NotRequired are the only ones served in
// Enforce.
const (
	// VerdictValid: the signature verifies under the key it names, that key
	// is the latched one (or, for an attestation, the key being attested),
	// and the date is within the skew.
	VerdictValid Verdict = "valid"
	// VerdictUnsigned: no x-ms-azure-host-authorization header.
	VerdictUnsigned Verdict = "unsigned"
	// VerdictInvalid: a malformed header, an unknown key GUID or a signature
	// that does not verify.
	VerdictInvalid Verdict = "invalid"
	// VerdictBadDate: the signature verifies but x-ms-azure-host-date is
	// missing, unparsable or outside the allowed skew.
	VerdictBadDate Verdict = "bad-date"
	// VerdictExempt: one of the two uploads that are never signed.
	VerdictExempt Verdict = "exempt"
	// VerdictNotRequired: a secure-channel call that needs no signature
	// (status, key issue).
	VerdictNotRequired Verdict = "not-required"
)

// Accepted reports whether a request with this verdict is served in
// Enforce.
func (v Verdict) Accepted() bool {
	return v == VerdictValid || v == VerdictExempt || v == VerdictNotRequired
}

// Entry is one request as the host received it and how it answered.
type Entry struct {
	// Seq numbers entries from 1 in arrival order; it survives Clear.
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Service Service   `json:"service"`
	Remote  string    `json:"remote"`
	Method  string    `json:"method"`
	// Target is the raw request-target as received.
	Target string `json:"target"`
	// Headers are every received header, Host included, in arrival order
	// per name.
	Headers []msp.Field `json:"headers"`
	BodyLen int64       `json:"bodyLen"`
	// Mode is the service's mode when the request arrived.
	Mode    msp.Mode `json:"mode"`
	Verdict Verdict  `json:"verdict"`
	// KeyGUID is the key named by the signature header, if any.
	KeyGUID string `json:"keyGuid,omitempty"`
	Status  int    `json:"status"`
}

// ServedUnaccepted reports whether the host served (status below 400) a
// request it should have refused: Enforce mode and a verdict that is not
// Accepted. End-to-end tests assert that no entry satisfies it.
func (e Entry) ServedUnaccepted() bool {
	return e.Mode == msp.ModeEnforce && !e.Verdict.Accepted() && e.Status < 400
}

// DefaultJournalSize is the journal's capacity when Config.JournalSize is 0.
const DefaultJournalSize = 100_000

// Journal is a bounded, concurrency-safe record of requests: when full, the
// oldest entry is dropped. Its mutex owns all fields.
type Journal struct {
	mu      sync.Mutex
	buf     []Entry
	start   int // index of the oldest entry
	n       int // number of entries
	seq     uint64
	dropped uint64
}

// NewJournal returns an empty journal holding at most size entries
// (DefaultJournalSize when size <= 0).
func NewJournal(size int) *Journal {
	if size <= 0 {
		size = DefaultJournalSize
	}
	return &Journal{buf: make([]Entry, size)}
}

// Add appends e, assigning its Seq, and returns the assigned Seq.
func (j *Journal) Add(e Entry) uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.seq++
	e.Seq = j.seq
	if j.n == len(j.buf) {
		j.buf[j.start] = e
		j.start = (j.start + 1) % len(j.buf)
		j.dropped++
		return e.Seq
	}
	j.buf[(j.start+j.n)%len(j.buf)] = e
	j.n++
	return e.Seq
}

// Entries returns a copy of the retained entries, oldest first.
func (j *Journal) Entries() []Entry {
	j.mu.Lock()
	defer j.mu.Unlock()
	out := make([]Entry, j.n)
	for i := range j.n {
		out[i] = j.buf[(j.start+i)%len(j.buf)]
	}
	return out
}

// Dropped returns how many entries were evicted because the journal was
// full.
func (j *Journal) Dropped() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.dropped
}

// Clear removes all entries; sequence numbers keep increasing.
func (j *Journal) Clear() {
	j.mu.Lock()
	defer j.mu.Unlock()
	clear(j.buf)
	j.start, j.n = 0, 0
}
