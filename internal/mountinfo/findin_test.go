package mountinfo

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestFindIn(t *testing.T) {
	p := filepath.Join(t.TempDir(), "mounts")
	os.WriteFile(p, []byte("tmpfs /sys/fs/cgroup tmpfs ro 0 0\ncgroup2 /sys/fs/cgroup/uni\\040fied cgroup2 rw 0 0\n"), 0o644)
	if got, err := FindIn(p, "cgroup2"); err != nil || got != "/sys/fs/cgroup/uni fied" {
		t.Errorf("FindIn = %q, %v", got, err)
	}
	if _, err := FindIn(p, "bpf"); !errors.Is(err, ErrNotMounted) {
		t.Errorf("absent type: %v, want ErrNotMounted", err)
	}
	if _, err := FindIn(filepath.Join(t.TempDir(), "none"), "bpf"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing table: %v, want ErrNotExist", err)
	}
}
