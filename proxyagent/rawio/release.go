// Package rawio gives a Go server the socket calls of a C event loop: TCP
// connections whose reads and writes, accepts and closes are raw system
// calls issued inside the runtime poller's callbacks (Wrap, Listen,
// CloseOwned), instead of calls through the syscall package's blocking
// path. The sockets are non-blocking, so nothing can block; what is saved
// is the runtime's bookkeeping around each call, which in a process that
// idles between short bursts of work wakes the runtime's monitor thread
// and hands processors between threads (perf, issue 13). The proxy uses
// it for client and host connections; the benchmark's Go floor uses it to
// measure what these techniques are worth without the proxy's work. Wrap
// takes TCP connections and Listen IPv4 TCP listeners; anything else, and
// everything on other systems, is returned as it is (CloseOwned then
// closes at once).
package rawio

import (
	"os"
	"sync"
	"time"
)

// releaseDelay is how long a finished client connection's descriptor may
// wait before its batch is closed.
const releaseDelay = 20 * time.Millisecond

// Releaser closes the descriptors of finished client connections in
// batches, at most releaseDelay after the first of a batch. Their sockets
// are already closed (CloseOwned moved each descriptor onto
// /dev/null with one raw call); what is left is giving the number back
// through os.File.Close, whose close(2) takes the syscall package's
// blocking path. From a process that was idle that path wakes the
// runtime's monitor thread, which then polls every 20 µs until the process
// idles again: per connection that cost more CPU than the rest of the
// close (perf, issue 13); per batch it is paid once. The zero value is
// ready to use.
type Releaser struct {
	mu    sync.Mutex
	files []*os.File
	timer *time.Timer // armed while files are pending
}

// add queues f to be closed within releaseDelay.
func (r *Releaser) add(f *os.File) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.files = append(r.files, f)
	if r.timer == nil {
		r.timer = time.AfterFunc(releaseDelay, r.Flush)
	}
}

// Flush closes every queued file now (a server calls it when it stops).
func (r *Releaser) Flush() {
	r.mu.Lock()
	files := r.files
	r.files = nil
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
	r.mu.Unlock()
	for _, f := range files {
		f.Close()
	}
}
