package redirector

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/opengpa/gpa/internal/mountinfo"
)

// Cgroup2Root returns the mount point of the cgroup v2 hierarchy listed in
// /proc/self/mounts: /sys/fs/cgroup on a unified system,
// /sys/fs/cgroup/unified on a hybrid one.
func Cgroup2Root() (string, error) {
	return mountinfo.Find("cgroup2")
}

// cgroupID returns the cgroup v2 id of dir (its inode number), after
// checking that dir is a cgroup v2 directory.
func cgroupID(dir string) (uint64, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", dir, err)
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("cgroup %s is not on a cgroup v2 file system", dir)
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", dir, err)
	}
	return st.Ino, nil
}

// ensureBPFFS makes sure dir exists on a bpffs. If the nearest existing
// ancestor is not a bpffs and dir lies under DefaultBPFFS, a bpffs is
// mounted there first (systemd normally does this; early boot may not).
func ensureBPFFS(dir string) error {
	dir = filepath.Clean(dir)
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("pin dir %q is not absolute", dir)
	}
	isBPF := func(p string) (bool, error) {
		for {
			var fs unix.Statfs_t
			err := unix.Statfs(p, &fs)
			if err == nil {
				return fs.Type == unix.BPF_FS_MAGIC, nil
			}
			if !errors.Is(err, unix.ENOENT) || p == "/" {
				return false, err
			}
			p = filepath.Dir(p)
		}
	}
	ok, err := isBPF(dir)
	if err != nil {
		return fmt.Errorf("pin dir %s: %w", dir, err)
	}
	if !ok {
		if dir != DefaultBPFFS && !strings.HasPrefix(dir, DefaultBPFFS+"/") {
			return fmt.Errorf("pin dir %s is not on a bpffs", dir)
		}
		if err := os.MkdirAll(DefaultBPFFS, 0o700); err != nil {
			return fmt.Errorf("mount bpffs: %w", err)
		}
		if err := unix.Mount("bpf", DefaultBPFFS, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount bpffs on %s: %w", DefaultBPFFS, err)
		}
		if ok, err := isBPF(dir); err != nil || !ok {
			return fmt.Errorf("pin dir %s is not on a bpffs after mounting %s (%v)", dir, DefaultBPFFS, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pin dir: %w", err)
	}
	return nil
}

// devOf returns the device number of the file behind fi.
func devOf(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Dev
	}
	return 0
}
