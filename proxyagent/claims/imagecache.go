package claims

import (
	"container/list"
	"sync"

	"github.com/opengpa/gpa/proxyagent/identity"
)

// DefaultImageCacheSize is how many process images a Resolver remembers.
const DefaultImageCacheSize = 1024

// imageKey names one process image as the kernel's connect-time record
// proves it: the pid, the process start time (the pid is not reused while
// the process lives) and the execve count (changes on every execve of the
// process), plus the cgroup it connected from (a process can be moved
// without exec) and the executable recorded (PR_SET_MM_MAP replaces it
// without exec).
type imageKey struct {
	pid            uint32
	start          uint64
	execID         uint64
	cgroupID       uint64
	exeIno, exeMnt uint64
}

// image is what a Resolver reads from /proc for one process image: every
// part of Claims that belongs to the process rather than to the
// connection or the user. Its slices are shared by the Claims built from
// it and never modified.
type image struct {
	fullPath, name, cmdLine string
	ancestry                []Process
	workload                Workload
	otherUserNS             bool
	// pidfd pins the process the image was read from (openProcess), or
	// -1. The cache owns it: closed when the entry is dropped, replaced
	// or evicted.
	pidfd int
}

// imageCache is a bounded LRU of process images. Safe for concurrent use.
type imageCache struct {
	mu    sync.Mutex
	ll    *list.List // of *imageEntry, most recent first; guarded by mu
	items map[imageKey]*list.Element
}

type imageEntry struct {
	key imageKey
	img *image
}

// imageKeyOf returns the cache key of rec, or false when the record
// cannot name a process image (no start time or exec count: not from the
// kernel hook).
func imageKeyOf(rec identity.Record) (imageKey, bool) {
	if rec.StartTime == 0 || rec.ExecID == 0 {
		return imageKey{}, false
	}
	return imageKey{pid: rec.PID, start: rec.StartTime, execID: rec.ExecID, cgroupID: rec.CgroupID,
		exeIno: rec.ExeIno, exeMnt: rec.ExeMnt}, true
}

// get returns the image cached under k, or nil. An image with a pidfd is
// returned only while its process lives (checked under the lock, so the
// pidfd cannot be closed meanwhile); otherwise it is dropped. An image
// without one is returned as it is, for the caller to verify.
func (c *imageCache) get(k imageKey) *image {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.items[k]
	if !ok {
		return nil
	}
	img := e.Value.(*imageEntry).img
	if img.pidfd >= 0 && !processAlive(img.pidfd) {
		c.removeLocked(e)
		return nil
	}
	c.ll.MoveToFront(e)
	return img
}

func (c *imageCache) put(k imageKey, img *image, size int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.items == nil {
		c.items = make(map[imageKey]*list.Element)
		c.ll = list.New()
	}
	if e, ok := c.items[k]; ok {
		c.removeLocked(e)
	}
	c.items[k] = c.ll.PushFront(&imageEntry{k, img})
	for c.ll.Len() > size {
		c.removeLocked(c.ll.Back())
	}
}

// drop forgets k (its process is gone).
func (c *imageCache) drop(k imageKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[k]; ok {
		c.removeLocked(e)
	}
}

func (c *imageCache) removeLocked(e *list.Element) {
	ie := e.Value.(*imageEntry)
	c.ll.Remove(e)
	delete(c.items, ie.key)
	if ie.img.pidfd >= 0 {
		closeProcess(ie.img.pidfd)
	}
}

// len returns the number of cached images.
func (c *imageCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.items)
}
