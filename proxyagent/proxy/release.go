package proxy

import (
	"os"
	"sync"
	"time"
)

// releaseDelay is how long a finished client connection's descriptor may
// wait before its batch is closed.
const releaseDelay = 20 * time.Millisecond

// fdReleaser closes the descriptors of finished client connections in
// batches, at most releaseDelay after the first of a batch. Their sockets
// are already closed (rawIOConn.closeOwned moved each descriptor onto
// /dev/null with one raw call); what is left is giving the number back
// through os.File.Close, whose close(2) takes the syscall package's
// blocking path. From a process that was idle that path wakes the
// runtime's monitor thread, which then polls every 20 µs until the process
// idles again: per connection that cost more CPU than the rest of the
// close (perf, issue 13); per batch it is paid once. The zero value is
// ready to use.
type fdReleaser struct {
	mu    sync.Mutex
	files []*os.File
	timer *time.Timer // armed while files are pending
}

// add queues f to be closed within releaseDelay.
func (r *fdReleaser) add(f *os.File) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.files = append(r.files, f)
	if r.timer == nil {
		r.timer = time.AfterFunc(releaseDelay, r.flush)
	}
}

// flush closes every queued file now.
func (r *fdReleaser) flush() {
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
