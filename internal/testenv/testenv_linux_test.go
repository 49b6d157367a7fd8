package testenv

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// recorder is a testing.TB that records Skip and Fatal instead of stopping.
type recorder struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (r *recorder) Helper()                           {}
func (r *recorder) Skip(args ...any)                  { r.skipped = true; r.msg = strings.TrimSpace(fmtArgs(args)) }
func (r *recorder) Fatalf(format string, args ...any) { r.failed = true; r.msg = format }

func fmtArgs(args []any) string {
	var b strings.Builder
	for _, a := range args {
		if s, ok := a.(string); ok {
			b.WriteString(s + " ")
		}
	}
	return b.String()
}

func TestSkipOrFail(t *testing.T) {
	for _, tc := range []struct {
		ci       string
		wantSkip bool
		wantFail bool
	}{
		{ci: "", wantSkip: true},
		{ci: "false", wantSkip: true},
		{ci: "true", wantFail: true},
	} {
		t.Run("CI="+tc.ci, func(t *testing.T) {
			t.Setenv("CI", tc.ci)
			r := &recorder{TB: t}
			SkipOrFail(r, "needs %s", "root")
			if r.skipped != tc.wantSkip || r.failed != tc.wantFail {
				t.Errorf("skipped=%v failed=%v, want skipped=%v failed=%v", r.skipped, r.failed, tc.wantSkip, tc.wantFail)
			}
			if tc.wantSkip && !strings.Contains(r.msg, "needs root") {
				t.Errorf("skip reason %q does not give the reason", r.msg)
			}
		})
	}
}

func TestCgroup2Mount(t *testing.T) {
	p, err := Cgroup2Mount()
	if err != nil {
		t.Skipf("no cgroup2 here: %v", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(p, &st); err != nil {
		t.Fatal(err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		t.Errorf("%s has file system magic %#x, want cgroup2", p, st.Type)
	}
}

var (
	imds = netip.MustParseAddr("169.254.169.254")
	ws   = netip.MustParseAddr("168.63.129.16")
)

func TestNetns(t *testing.T) {
	RequirePrivileged(t)
	n := NewNetns(t, imds, ws)
	if _, err := os.Stat(n.Path); err != nil {
		t.Fatalf("netns path: %v", err)
	}

	// A server on a service address inside the namespace is reachable from
	// inside, over the namespace's loopback.
	l, err := n.Listen("tcp", "169.254.169.254:0")
	if err != nil {
		t.Fatalf("listen on service address inside netns: %v", err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			io.WriteString(c, "hello")
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := n.Dial(ctx, "tcp", l.Addr().String())
	if err != nil {
		t.Fatalf("dial inside netns: %v", err)
	}
	b, _ := io.ReadAll(c)
	c.Close()
	if string(b) != "hello" {
		t.Errorf("read %q, want hello", b)
	}

	// The namespace is not ours: its loopback has the addresses, ours need not.
	out, err := Run(ctx, Options{Netns: n}, "ip", "-o", "addr", "show", "dev", "lo")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"169.254.169.254/32", "168.63.129.16/32", "127.0.0.1/8"} {
		if !strings.Contains(string(out), a) {
			t.Errorf("lo in netns lacks %s:\n%s", a, out)
		}
	}
	if err := n.Delete(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(n.Path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("netns path still there after Delete: %v", err)
	}
	if err := n.Delete(); err != nil {
		t.Errorf("second Delete: %v", err)
	}
}

func TestRunInNetnsCgroupAsUser(t *testing.T) {
	RequirePrivileged(t)
	n := NewNetns(t, imds)
	cg := NewCgroup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// The child reports its uid, gid, cgroup and network namespace.
	out, err := Run(ctx, Options{
		Netns:      n,
		Cgroup:     cg,
		Credential: &syscall.Credential{Uid: 65534, Gid: 65534},
		Env:        []string{"GPA_TESTENV=1"},
	}, "sh", "-c", `id -u; id -g; cat /proc/self/cgroup | grep '^0::'; readlink /proc/self/ns/net; echo $GPA_TESTENV`)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 5 {
		t.Fatalf("unexpected output:\n%s", out)
	}
	root, _ := Cgroup2Mount()
	rel, _ := filepath.Rel(root, cg.Path)
	// This thread's namespace: /proc/self names the main thread, which a
	// Netns.Do goroutine may have run on (the runtime then keeps the
	// thread, wedged, in that namespace).
	runtime.LockOSThread()
	wantNS, err := os.Readlink("/proc/thread-self/ns/net")
	runtime.UnlockOSThread()
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(n.Path, &st); err != nil {
		t.Fatal(err)
	}
	checks := []struct{ name, got, want string }{
		{"uid", lines[0], "65534"},
		{"gid", lines[1], "65534"},
		{"cgroup", lines[2], "0::/" + rel},
		{"netns", lines[3], "net:[" + strconv.FormatUint(st.Ino, 10) + "]"},
		{"env", lines[4], "1"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.name, c.got, c.want)
		}
	}
	if lines[3] == wantNS {
		t.Errorf("child ran in the test's own network namespace %s", wantNS)
	}

	// A failing command's error quotes its standard error.
	_, err = Run(ctx, Options{Netns: n}, "sh", "-c", "echo boom >&2; exit 3")
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("failing command: err = %v, want one quoting stderr", err)
	}
}

func TestCgroupDeleteKillsProcesses(t *testing.T) {
	RequirePrivileged(t)
	cg, err := CreateCgroup(uniqueName("gpa-test"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cg.Delete() })
	var st unix.Stat_t
	if err := unix.Stat(cg.Path, &st); err != nil || st.Ino != cg.ID {
		t.Fatalf("cgroup id %d, stat %v ino %d", cg.ID, err, st.Ino)
	}
	cmd := exec.Command("sleep", "60")
	if err := Start(cmd, Options{Cgroup: cg}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	pids, err := cg.Procs()
	if err != nil || len(pids) != 1 || pids[0] != cmd.Process.Pid {
		t.Fatalf("procs = %v, %v; want [%d]", pids, err, cmd.Process.Pid)
	}
	if err := cg.Delete(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("process in deleted cgroup still running")
	}
	if _, err := os.Stat(cg.Path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup dir still there: %v", err)
	}
}

func TestNewBPFFS(t *testing.T) {
	RequirePrivileged(t)
	dir := NewBPFFS(t)
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		t.Errorf("%s has magic %#x, want bpffs", dir, st.Type)
	}
}
