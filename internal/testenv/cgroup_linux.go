package testenv

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/opengpa/gpa/internal/mountinfo"
)

// Cgroup2Mount returns the mount point of the cgroup v2 hierarchy, as listed
// in /proc/self/mounts (/sys/fs/cgroup on a unified system,
// /sys/fs/cgroup/unified on a hybrid one). It is the directory the agent
// would attach to by default.
func Cgroup2Mount() (string, error) {
	return mountinfo.Find("cgroup2")
}

// Cgroup is a cgroup v2 group created for a test.
type Cgroup struct {
	Path string // absolute directory of the group
	ID   uint64 // cgroup id, as bpf_get_current_cgroup_id reports it
}

// CreateCgroup creates the group name directly below the cgroup v2 mount.
// The caller must Delete it.
func CreateCgroup(name string) (*Cgroup, error) {
	root, err := Cgroup2Mount()
	if err != nil {
		return nil, err
	}
	if name == "" || strings.ContainsRune(name, '/') || name == "." || name == ".." {
		return nil, fmt.Errorf("testenv: bad cgroup name %q", name)
	}
	return mkCgroup(filepath.Join(root, name))
}

// mkCgroup creates the group directory p and reads its id.
func mkCgroup(p string) (*Cgroup, error) {
	if err := os.Mkdir(p, 0o755); err != nil {
		return nil, fmt.Errorf("testenv: create cgroup: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		_ = os.Remove(p)
		return nil, fmt.Errorf("testenv: stat cgroup: %w", err)
	}
	return &Cgroup{Path: p, ID: st.Ino}, nil
}

// NewCgroup creates a uniquely named group below the cgroup v2 mount and
// deletes it (killing anything left in it) when the test ends.
func NewCgroup(t testing.TB) *Cgroup {
	t.Helper()
	c, err := CreateCgroup(uniqueName("gpa-test"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Delete(); err != nil {
			t.Errorf("delete cgroup: %v", err)
		}
	})
	return c
}

// Procs returns the ids of the processes in the group.
func (c *Cgroup) Procs() ([]int, error) {
	b, err := os.ReadFile(filepath.Join(c.Path, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("testenv: cgroup.procs: %w", err)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// Delete kills every process left in the group, waits for them to leave
// (up to 5 s) and removes the group. Deleting a group that is already gone
// is not an error.
func (c *Cgroup) Delete() error {
	if _, err := os.Stat(c.Path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids, err := c.Procs()
		if err != nil {
			return fmt.Errorf("testenv: delete cgroup %s: %w", c.Path, err)
		}
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("testenv: delete cgroup %s: processes %v do not exit", c.Path, pids)
		}
		// cgroup.kill (Linux 5.14) kills atomically, including processes
		// forked meanwhile; signal each process where it is missing.
		if err := os.WriteFile(filepath.Join(c.Path, "cgroup.kill"), []byte("1"), 0); err != nil {
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	for {
		err := os.Remove(c.Path)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("testenv: delete cgroup: %w", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
