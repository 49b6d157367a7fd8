package claims

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/opengpa/gpa/proxyagent/identity"
)

// replace makes pid a different process image in the fake /proc.
func (p *fakeProc) replace(pid int, exe, cmdline string, ppid uint32, start uint64) {
	p.t.Helper()
	must(p.t, os.RemoveAll(filepath.Join(p.root, fmt.Sprint(pid))))
	p.add(pid, exe, cmdline, ppid, start)
}

// A process image's claims are read once and reused while the image
// lives; an execve (new exec count) or a new process under the same pid
// (new start time) never gets them.
func TestImageCache(t *testing.T) {
	p := newFakeProc(t)
	p.add(500, "/usr/bin/curl", "curl\x00http://x/\x00", 1, 9000)
	r := &Resolver{ProcRoot: p.root}
	rec := identity.Record{PID: 500, UID: 1000, StartTime: 9000, ExecID: 3, CgroupID: 7, Comm: "curl"}

	resolve := func(rec identity.Record) *Claims {
		t.Helper()
		c, err := r.Resolve(rec, client)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if c := resolve(rec); c.ProcessFullPath != "/usr/bin/curl" || c.ProcessCmdLine != "curl http://x/" {
		t.Fatalf("first resolve: %+v", c)
	}
	if r.images.len() != 1 {
		t.Fatalf("%d images cached, want 1", r.images.len())
	}

	// The same image, its files rewritten in place (the cmdline a
	// process may overwrite): the cached claims are served.
	must(t, os.WriteFile(filepath.Join(p.root, "500", "cmdline"), []byte("rewritten\x00"), 0o644))
	if c := resolve(rec); c.ProcessCmdLine != "curl http://x/" || c.ClientPort != client.Port() {
		t.Fatalf("same image: %+v, want the cached claims with this connection's fields", c)
	}

	t.Run("execve", func(t *testing.T) {
		p.replace(500, "/usr/bin/python3", "python3\x00-c\x00pass\x00", 1, 9000)
		exec := rec
		exec.ExecID++
		if c := resolve(exec); c.ProcessFullPath != "/usr/bin/python3" || c.ProcessCmdLine != "python3 -c pass" {
			t.Fatalf("after execve: %+v, want the new image", c)
		}
	})

	t.Run("moved to another cgroup", func(t *testing.T) {
		moved := rec
		moved.CgroupID = 8
		if c := resolve(moved); c.ProcessFullPath != "/usr/bin/python3" {
			t.Fatalf("new cgroup: %+v, want read afresh", c)
		}
	})

	t.Run("pid reuse", func(t *testing.T) {
		// pid 500 exits and a new process gets the pid, with the same
		// exec count (forked from a parent with that count).
		p.replace(500, "/usr/bin/wget", "wget\x00", 1, 9500)
		if _, err := r.Resolve(rec, client); !errors.Is(err, ErrPIDReused) {
			t.Fatalf("old image's record after pid reuse: err = %v, want ErrPIDReused (no stale identity)", err)
		}
		reused := rec
		reused.StartTime = 9500
		if c := resolve(reused); c.ProcessFullPath != "/usr/bin/wget" {
			t.Fatalf("new process under the pid: %+v, want wget", c)
		}
	})

	t.Run("exited", func(t *testing.T) {
		must(t, os.RemoveAll(filepath.Join(p.root, "500")))
		gone := rec
		gone.StartTime = 9500
		c := resolve(gone)
		if c.ProcessFullPath != "" || c.ProcessCmdLine != Undefined || c.ProcessName != "" {
			t.Fatalf("exited process: %+v, want no /proc data (no cached identity)", c)
		}
	})
}

func TestImageCacheBoundedAndOptional(t *testing.T) {
	p := newFakeProc(t)
	for pid := 600; pid < 605; pid++ {
		p.add(pid, "/usr/bin/curl", "curl\x00", 1, uint64(pid))
	}
	r := &Resolver{ProcRoot: p.root, ImageCacheSize: 2}
	for pid := uint32(600); pid < 605; pid++ {
		if _, err := r.Resolve(identity.Record{PID: pid, StartTime: uint64(pid), ExecID: 1}, client); err != nil {
			t.Fatal(err)
		}
	}
	if n := r.images.len(); n != 2 {
		t.Fatalf("%d images cached, want the bound 2", n)
	}
	// Records that cannot name an image (no exec count or start time:
	// not from the kernel hook) are never cached, nor is anything with a
	// negative size.
	r = &Resolver{ProcRoot: p.root}
	r.Resolve(identity.Record{PID: 600, StartTime: 600}, client)
	r.Resolve(identity.Record{PID: 600, ExecID: 1}, client)
	off := &Resolver{ProcRoot: p.root, ImageCacheSize: -1}
	off.Resolve(identity.Record{PID: 600, StartTime: 600, ExecID: 1}, client)
	if r.images.len() != 0 || off.images.len() != 0 {
		t.Fatalf("cached %d and %d images, want none", r.images.len(), off.images.len())
	}
}

// BenchmarkResolveCachedImage is Resolve for a later connection of a
// process image already seen (this process, four ancestors): one stat
// read instead of every /proc file of the caller and its ancestry.
func BenchmarkResolveCachedImage(b *testing.B) {
	var r Resolver
	self := uint32(os.Getpid())
	st, err := r.readStat(self)
	if err != nil {
		b.Skip(err)
	}
	rec := identity.Record{PID: self, UID: uint32(os.Getuid()), StartTime: st.StartTime, ExecID: 1}
	for b.Loop() {
		if _, err := r.Resolve(rec, client); err != nil {
			b.Fatal(err)
		}
	}
}
