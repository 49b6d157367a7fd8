package hostsim

import (
	"sync"
	"time"
)

// rateLimiter admits at most limit requests per client in any one-second
// window (a sliding window on the caller's clock). A negative limit admits
// everything. Its mutex owns all fields.
type rateLimiter struct {
	mu      sync.Mutex
	limit   int
	clients map[string][]time.Time // admitted times within the last second, oldest first
	sweeps  int
}

func newRateLimiter(limit int) *rateLimiter {
	return &rateLimiter{limit: limit, clients: map[string][]time.Time{}}
}

func (l *rateLimiter) setLimit(limit int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.limit = limit
	l.clients = map[string][]time.Time{}
}

// allow records a request from client at now and reports whether it is
// within the limit. Refused requests do not count.
func (l *rateLimiter) allow(client string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.limit < 0 {
		return true
	}
	cutoff := now.Add(-time.Second)
	times := l.clients[client]
	i := 0
	for i < len(times) && !times[i].After(cutoff) {
		i++
	}
	times = times[i:]
	if len(times) >= l.limit {
		l.clients[client] = times
		return false
	}
	l.clients[client] = append(times, now)
	// Forget idle clients now and then so the map stays bounded by the
	// number of recently active clients.
	if l.sweeps++; l.sweeps >= 1024 {
		l.sweeps = 0
		for c, ts := range l.clients {
			if len(ts) == 0 || !ts[len(ts)-1].After(cutoff) {
				delete(l.clients, c)
			}
		}
	}
	return true
}
