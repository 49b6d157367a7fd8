package redirector

import (
	"errors"

	"github.com/cilium/ebpf"

	"github.com/opengpa/gpa/bpf"
)

// IdentityMapUsage returns how many identity records the kernel's LRU map
// holds (connections redirected but not yet accepted by the agent, or
// never accepted) and its capacity. Counting walks the keys, one system
// call each; with the agent accepting promptly the map is nearly empty.
func (r *Redirector) IdentityMapUsage() (entries, capacity int, err error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.objs == nil {
		return 0, 0, errors.New("redirector: closed")
	}
	m := r.objs.ConnRecords
	capacity = int(m.MaxEntries())
	var key, next bpf.RedirectConnKey
	var prev any // nil asks for the first key
	for entries < 2*capacity {
		if err := m.NextKey(prev, &next); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return entries, capacity, nil
			}
			return entries, capacity, err
		}
		entries++
		key = next
		prev = &key
	}
	// The kernel kept inserting while we walked; report the capacity.
	return capacity, capacity, nil
}

// LimitRefusals returns how many connects the kernel refused since Load:
// perCaller because their caller already held Config.MaxConnsPerCaller
// redirected connections, all because the limited callers together held
// Config.MaxLimitedConns.
func (r *Redirector) LimitRefusals() (perCaller, all uint64, err error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.objs == nil {
		return 0, 0, errors.New("redirector: closed")
	}
	// Indexes as in redirect.c (REFUSED_CALLER, REFUSED_ALL).
	if err := r.objs.LimitRefusals.Lookup(uint32(0), &perCaller); err != nil {
		return 0, 0, err
	}
	err = r.objs.LimitRefusals.Lookup(uint32(1), &all)
	return perCaller, all, err
}
