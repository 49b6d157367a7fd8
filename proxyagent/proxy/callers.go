package proxy

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/opengpa/gpa/proxyagent/identity"
)

// callerKey is whose connections a per-caller limit counts: a user in a
// network namespace, or (unidentified) every connection without a kernel
// record — direct connections to the listener when the kernel hooks do
// not record them (no redirector, or a record lost).
type callerKey struct {
	uid          uint32
	netns        uint64
	other        bool // in another network namespace than the agent's (a container)
	unidentified bool
}

// keyOf is the key of a connection with the kernel record rec (ok: a
// record was found, for a redirected connection or one made straight to
// the listener); exempt is true for root in the agent's own network
// namespace (waagent, the extension, the platform's own tools,
// azure-proxy-agent --status), which no other caller may lock out and
// which the limit never stops.
func keyOf(rec identity.Record, ok bool) (key callerKey, exempt bool) {
	if !ok {
		return callerKey{unidentified: true}, false
	}
	if identity.VMRoot(uint64(rec.UID), rec.OtherNetns) {
		return callerKey{}, true
	}
	return callerKey{uid: rec.UID, netns: rec.Netns, other: rec.OtherNetns}, false
}

// callerLimit bounds the connections one caller holds at once, so one
// unprivileged user (or one container, or a flood of direct connections)
// cannot take every connection slot (MaxConns) and lock everybody else out
// of the metadata services, and the connections such callers hold
// together, so several at their limit cannot either: the callers in the
// agent's namespace (maxAll, the kernel's limit too) and the containers
// (maxOther; 0: they count in maxAll) each have their own share
// (ConnShares), so containers at their limits cannot lock out the host's
// users, nor these the containers. mu guards n, all and other.
type callerLimit struct {
	max      int // per caller; 0: no limit (and no shares)
	maxAll   int // callers in the agent's namespace together
	maxOther int // callers in other namespaces together; 0: in maxAll
	mu       sync.Mutex
	n        map[callerKey]int
	all      int
	other    int
	refused  atomic.Uint64 // closed at accept: the caller's own limit
	full     atomic.Uint64 // closed at accept: the caller's group's share
	lastWarn atomic.Int64  // unix nanos of the last warning
}

// acquire counts one more connection of key and reports whether it is
// within the limits (full: not, because all callers together hold maxAll);
// a refused one is not counted.
func (l *callerLimit) acquire(key callerKey) (ok, full bool) {
	if l.max <= 0 {
		return true, false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	total, limit := &l.all, l.maxAll
	if key.other && l.maxOther > 0 {
		total, limit = &l.other, l.maxOther
	}
	if *total >= limit {
		return false, true
	}
	if l.n[key] >= l.max {
		return false, false
	}
	if l.n == nil {
		l.n = make(map[callerKey]int)
	}
	l.n[key]++
	*total++
	return true, false
}

// release counts one connection of key less.
func (l *callerLimit) release(key callerKey) {
	if l.max <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if key.other && l.maxOther > 0 {
		l.other--
	} else {
		l.all--
	}
	if l.n[key] <= 1 {
		delete(l.n, key)
		return
	}
	l.n[key]--
}

// rootReserve is how many of n connection slots (MaxConns) only exempt
// callers (root in the agent's namespace) may take: a few callers at their
// per-caller limit together (eight containers at 64 fill 500) must not
// lock out waagent. A single slot is not reserved (everybody may take it).
func rootReserve(n int) int {
	if n <= 1 {
		return 0
	}
	return max(n/16, 1)
}

// ConnShares splits the maxConns connection slots not kept for root
// (rootReserve) between the callers other than root in the agent's
// namespace (own; the kernel's limit of them is the same number) and the
// callers in other namespaces (containers), half and half, so neither
// group can lock the other out. Without split (the kernel cannot tell
// namespaces apart: no netns cookie before Linux 5.14), or with fewer than
// two such slots, they share one pool: own is all of them, containers 0.
// While the per-caller limit (maxPerCaller) is off there is no limit of
// all callers: both are 0.
func ConnShares(maxConns, maxPerCaller int, split bool) (own, containers int) {
	if maxPerCaller <= 0 {
		return 0, 0
	}
	limited := maxConns - rootReserve(maxConns)
	if !split || limited < 2 {
		return limited, 0
	}
	return limited - limited/2, limited / 2
}

// refuse counts a refused connection and tells whether to log it: at most
// one warning a second, so a flood cannot flood the log.
func (l *callerLimit) refuse(now time.Time, full bool) (total uint64, warn bool) {
	if full {
		l.full.Add(1)
	} else {
		l.refused.Add(1)
	}
	total = l.refused.Load() + l.full.Load()
	last := l.lastWarn.Load()
	return total, now.UnixNano()-last >= int64(time.Second) && l.lastWarn.CompareAndSwap(last, now.UnixNano())
}

// Refused returns how many accepted connections the server closed unread
// since it started: perCaller because their caller held MaxConnsPerCaller
// connections, full because their group's share (ConnShares) or every
// slot (MaxConns) was taken.
func (s *Server) Refused() (perCaller, full uint64) {
	return s.callers.refused.Load(), s.callers.full.Load() + s.refusedFull.Load()
}
