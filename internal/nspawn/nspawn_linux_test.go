package nspawn

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/internal/testenv"
)

func TestAptMirror(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "sources.list.d"), 0o755)
	if got := AptMirror(dir, "bookworm"); got != DefaultMirror {
		t.Errorf("no sources: %q, want %q", got, DefaultMirror)
	}
	os.WriteFile(filepath.Join(dir, "sources.list.d", "debian.sources"), []byte(
		"Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n"+
			"Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"), 0o644)
	if got := AptMirror(dir, "bookworm"); got != "http://mirror.example/debian" {
		t.Errorf("deb822: %q", got)
	}
	if got := AptMirror(dir, "trixie"); got != DefaultMirror {
		t.Errorf("other suite: %q, want the default", got)
	}
	os.WriteFile(filepath.Join(dir, "sources.list"), []byte(
		"# comment\ndeb-src http://src.example/debian bookworm main\ndeb [arch=amd64 signed-by=/k.gpg] http://list.example/debian bookworm main\n"), 0o644)
	if got := AptMirror(dir, "bookworm"); got != "http://list.example/debian" {
		t.Errorf("one-line style with options: %q", got)
	}
}

// TestBoot boots a machine and checks what the tier relies on: systemd is
// PID 1 and running, the network namespace has nothing but loopback, a
// bpffs is mounted, and Close removes the machine's group.
func TestBoot(t *testing.T) {
	testenv.RequirePrivileged(t)
	if err := Available(); err != nil {
		testenv.SkipOrFail(t, "%v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	m, err := Boot(ctx, Config{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			m.Close()
		}
	}()
	t.Logf("booted in %v", time.Since(start).Round(time.Millisecond))
	out, err := m.Run(ctx, "cat", "/proc/1/comm")
	if err != nil || strings.TrimSpace(string(out)) != "systemd" {
		t.Errorf("PID 1 is %q (%v), want systemd", out, err)
	}
	out, err = m.Run(ctx, "ip", "-o", "link", "show")
	if err != nil {
		t.Fatal(err)
	}
	if links := strings.Split(strings.TrimSpace(string(out)), "\n"); len(links) != 1 || !strings.Contains(links[0], " lo:") {
		t.Errorf("links inside: %q, want loopback only", links)
	}
	out, err = m.Run(ctx, "stat", "-f", "-c", "%T", "/sys/fs/bpf")
	if err != nil || strings.TrimSpace(string(out)) != "bpf_fs" {
		t.Errorf("/sys/fs/bpf is %q (%v), want bpf_fs", out, err)
	}
	group := m.Cgroup.Path
	if !strings.HasPrefix(m.Root, group+"/") {
		t.Errorf("machine's cgroup root %s is not below the test's group %s", m.Root, group)
	}
	closed = true
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(group); !os.IsNotExist(err) {
		t.Errorf("group %s left after Close: %v", group, err)
	}
}
