// Package identity defines the caller identity the kernel records when a
// process connects to a metadata endpoint, and the interface through which
// the proxy finds that record for an accepted connection. The production
// source is the eBPF redirector; tests supply their own.
package identity

import (
	"net/netip"
	"sync"
)

// Record is what the kernel captured at connect() time for one redirected
// connection.
type Record struct {
	PID uint32 // thread-group id (the process id users see)
	// UID and GID are the caller's real user and group at connect time.
	UID      uint32
	GID      uint32
	CgroupID uint64
	// Netns is the cookie of the connecting socket's network namespace;
	// OtherNetns is true when that is not the agent's (a container).
	Netns      uint64
	OtherNetns bool
	// StartTime is the process start time in clock ticks since boot, as in
	// field 22 of /proc/<pid>/stat; 0 when unknown. A /proc read whose start
	// time differs belongs to another process (pid reuse).
	StartTime uint64
	// ExecID is the process's execve count as the kernel keeps it
	// (task_struct.self_exec_id of the thread-group leader); with PID and
	// StartTime it names one process image: it changes on every execve.
	// Meaningful only together with a non-zero StartTime.
	ExecID uint64
	// ExeIno and ExeMnt are the inode number of the executable the
	// process ran at connect time (0: unknown) and the id of the mount it
	// ran it from (statx's stx_mnt_id; a memfd's is 0), known when
	// ExeMntKnown. A /proc read whose executable is another file comes
	// after an execve: it describes a later program.
	ExeIno, ExeMnt uint64
	ExeMntKnown    bool
	Comm           string
	// OrigDst is the destination the process asked for before the
	// redirect; zero (not valid) for a connection made straight to the
	// agent's listener, which the kernel records but does not redirect.
	OrigDst netip.AddrPort
}

// VMRoot reports whether a caller with uid, in the agent's network
// namespace or (otherNetns) another one, is the VM's own root: waagent,
// the extension, an administrator. The per-caller limits and budgets
// exempt it, and only it may read the agent's aggregate status. A
// container's root is not: it is otherNetns.
func VMRoot(uid uint64, otherNetns bool) bool { return uid == 0 && !otherNetns }

// Source finds, and consumes, the record for a connection accepted by the
// proxy listener. client is the accepted connection's remote address
// (127.0.0.1:<ephemeral port> for a redirected connection) and local its
// local address (the listener's): one client address and port can be
// connected to both of the agent's listeners at once. ok is false for a
// connection that was not redirected (a direct connection).
type Source interface {
	Lookup(client, local netip.AddrPort) (rec Record, ok bool)
}

// MapSource is a Source for tests and tools: Add registers the record for
// a client address (whatever the local address), and Lookup returns it
// once and forgets it, as the kernel record is consumed at accept. Safe
// for concurrent use.
type MapSource struct {
	mu sync.Mutex
	m  map[netip.AddrPort]Record // guarded by mu
}

// Add registers rec for connections from client.
func (s *MapSource) Add(client netip.AddrPort, rec Record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[netip.AddrPort]Record)
	}
	s.m[client] = rec
}

// Lookup implements Source.
func (s *MapSource) Lookup(client, _ netip.AddrPort) (Record, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, ok := s.m[client]
	delete(s.m, client)
	return rec, ok
}

// SourceFunc adapts a function to Source.
type SourceFunc func(client, local netip.AddrPort) (Record, bool)

// Lookup implements Source.
func (f SourceFunc) Lookup(client, local netip.AddrPort) (Record, bool) { return f(client, local) }
