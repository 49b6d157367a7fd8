package keykeeper

import (
	"net/http"
	"sync"
	"time"

	"github.com/opengpa/gpa/proxyagent/msp"
)

// DefaultClockResync is how old the last host-clock sync must be before a
// status response re-syncs it (protocol.md §1.9).
const DefaultClockResync = 15 * time.Minute

// HostClock is the host-synced clock of protocol.md §1.9: the host time of
// the last sync plus the monotonic time elapsed since, or local UTC before
// any sync. Safe for concurrent use; its mutex owns the sync point.
type HostClock struct {
	mu     sync.Mutex
	synced bool
	host   time.Time // host time at the sync
	local  time.Time // local time (with monotonic reading) at the sync
	// local clock, replaceable in tests
	localNow func() time.Time
}

// NewHostClock returns an unsynced clock.
func NewHostClock() *HostClock { return &HostClock{localNow: time.Now} }

// Now returns the host-synced time in UTC.
func (c *HostClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.localNow()
	if !c.synced {
		return now.UTC()
	}
	return c.host.Add(now.Sub(c.local)).UTC()
}

// Synced reports whether the clock was synced and when (local time).
func (c *HostClock) Synced() (bool, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.synced, c.local
}

// SyncFromHeaders syncs the clock from a response's headers when the last
// sync is older than maxAge (or never happened): the x-ms-azure-host-date
// header is preferred; if it is present but not RFC 1123 there is no sync
// and no fallback; without it the standard Date header is used. It reports
// whether the clock was synced.
func (c *HostClock) SyncFromHeaders(h http.Header, maxAge time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.localNow()
	if c.synced && now.Sub(c.local) < maxAge {
		return false
	}
	var text string
	if v, ok := h[http.CanonicalHeaderKey(msp.HeaderDate)]; ok && len(v) > 0 {
		text = v[0]
	} else if v := h.Get("Date"); v != "" {
		text = v
	} else {
		return false
	}
	t, err := msp.ParseDate(text)
	if err != nil {
		return false
	}
	c.synced, c.host, c.local = true, t, now
	return true
}
