package redirector

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opengpa/gpa/internal/testenv"
	"github.com/opengpa/gpa/proxyagent/claims"
	"github.com/opengpa/gpa/proxyagent/identity"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// The kernel record names a process image: a process that connects,
// execs another binary under the same pid and connects again gets a new
// exec count, and the claims resolver (with its image cache) gives each
// connection the identity of the image that made it; once the process is
// gone no cached identity is served.
func TestRecordFollowsExec(t *testing.T) {
	e, r, ln, bash, data := execEnv(t)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other-shell")
	if err := os.WriteFile(other, data, 0o755); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Connect, wait for a line, exec the copy, connect again, wait for EOF.
	cmd := exec.CommandContext(ctx, bash, "-c",
		`exec 3<>/dev/tcp/169.254.169.254/80 && read -r _ && exec `+other+
			` -c 'exec 4<>/dev/tcp/169.254.169.254/80 && { read -r _ || :; }'`)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdin := e.startClient(cmd)
	accept := func() identity.Record {
		t.Helper()
		return acceptRecord(t, ln, r, &stderr)
	}
	var res claims.Resolver
	resolve := func(rec identity.Record) *claims.Claims {
		t.Helper()
		c, err := res.Resolve(rec, netip.AddrPort{})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	inode := func(path string) uint64 {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*syscall.Stat_t).Ino
	}
	first := accept()
	if first.PID != uint32(cmd.Process.Pid) || first.StartTime == 0 || first.ExecID == 0 || first.ExeIno != inode(bash) {
		t.Fatalf("first record %+v: want pid %d, a start time, an exec count and %s's inode %d", first, cmd.Process.Pid, bash, inode(bash))
	}
	for range 2 { // read, then from the cache
		if c := resolve(first); c.ProcessFullPath != bash || !strings.HasPrefix(c.ProcessCmdLine, bash+" -c") && !strings.HasPrefix(c.ProcessCmdLine, "bash -c") {
			t.Fatalf("before exec: %q %q, want %s", c.ProcessFullPath, c.ProcessCmdLine, bash)
		}
	}

	io.WriteString(stdin, "\n")
	second := accept()
	if second.PID != first.PID || second.StartTime != first.StartTime || second.ExecID == first.ExecID {
		t.Fatalf("after exec: record %+v, first %+v: want the same pid and start time, another exec count", second, first)
	}
	if c := resolve(second); c.ProcessFullPath != other || second.ExeIno != inode(other) {
		t.Fatalf("after exec: %q (inode %d), want the new image %s (%d)", c.ProcessFullPath, second.ExeIno, other, inode(other))
	}
	// The first connection read only now, after the execve, by a resolver
	// that has not cached it: /proc shows the new program, whose inode is
	// not the one recorded at connect, so the caller is not judged as it.
	var fresh claims.Resolver
	if c, err := fresh.Resolve(first, netip.AddrPort{}); err != nil || c.ProcessFullPath != "" || c.ProcessName != "" ||
		c.ProcessCmdLine != claims.Undefined {
		t.Fatalf("pre-exec connection read after the exec: %q %q %q, %v; want no executable", c.ProcessFullPath, c.ProcessName, c.ProcessCmdLine, err)
	}

	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("client: %v", err)
	}
	for _, rec := range []identity.Record{first, second} {
		if c := resolve(rec); c.ProcessFullPath != "" || c.ProcessCmdLine != claims.Undefined {
			t.Fatalf("after exit: %q %q, want no process identity", c.ProcessFullPath, c.ProcessCmdLine)
		}
	}
}

// The inode number and mount id the kernel records for the executable are
// the ones statx shows through /proc/<pid>/exe on the filesystems callers
// run from (ext4 or whatever holds the test's temp dir, tmpfs, overlayfs as
// container images are, and a memfd), so a caller that did not exec is
// never taken for one that did; a record of a memfd with the same inode
// number is not taken for the file.
func TestExeInodeMatchesStat(t *testing.T) {
	e, r, ln, bash, data := execEnv(t)
	mount := func(t *testing.T, fstype, source, target, opts string) {
		t.Helper()
		if err := syscall.Mount(source, target, fstype, 0, opts); err != nil {
			t.Fatalf("mount %s: %v", fstype, err)
		}
		t.Cleanup(func() { syscall.Unmount(target, syscall.MNT_DETACH) })
	}
	for _, fs := range []string{"tempdir", "tmpfs", "overlay", "memfd"} {
		t.Run(fs, func(t *testing.T) {
			dir := t.TempDir()
			os.Chmod(dir, 0o755)
			run := dir
			switch fs {
			case "tmpfs":
				mount(t, "tmpfs", "tmpfs", dir, "mode=0755")
			case "overlay":
				for _, d := range []string{"lower", "upper", "work", "merged"} {
					os.Mkdir(filepath.Join(dir, d), 0o755)
				}
				if err := os.WriteFile(filepath.Join(dir, "lower", "shell"), data, 0o755); err != nil {
					t.Fatal(err)
				}
				run = filepath.Join(dir, "merged")
				mount(t, "overlay", "overlay", run, "lowerdir="+filepath.Join(dir, "lower")+",upperdir="+
					filepath.Join(dir, "upper")+",workdir="+filepath.Join(dir, "work"))
			}
			shell := filepath.Join(run, "shell")
			if fs != "overlay" && fs != "memfd" {
				if err := os.WriteFile(shell, data, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, shell, "-c", `exec 3<>/dev/tcp/169.254.169.254/80 && read -r _`)
			if fs == "memfd" {
				// The test binary copies bash into a memfd and runs it
				// from there (its mount's id is 0).
				cmd = exec.CommandContext(ctx, os.Args[0])
				cmd.Env = append(os.Environ(), "GPA_REDIRECTOR_HELPER=memfd-exec", "GPA_HELPER_ADDR="+bash)
			}
			e.startClient(cmd)
			rec := acceptRecord(t, ln, r, nil)
			ino, mnt := exeFile(uint32(cmd.Process.Pid))
			if rec.ExeIno != ino || rec.ExeMnt != mnt || !rec.ExeMntKnown || ino == 0 || (mnt == 0) != (fs == "memfd") {
				t.Errorf("%s: recorded exe inode %d mount %d (known %v), statx says %d, %d", fs, rec.ExeIno, rec.ExeMnt, rec.ExeMntKnown, ino, mnt)
			}
			want := shell
			if fs == "memfd" {
				// "/memfd:bash (deleted)" names no file in the caller's
				// root: no executable (claims.Resolver's path check).
				want = ""
			}
			var res claims.Resolver
			if cl, err := res.Resolve(rec, netip.AddrPort{}); err != nil || cl.ProcessFullPath != want {
				t.Errorf("%s: claims path %q, %v; want %s", fs, cl.ProcessFullPath, err, want)
			}
			// The same inode number from a memfd (mount id 0) is another
			// file: a record with it is not this executable.
			forged := rec
			forged.ExeMnt, forged.ExeMntKnown = 0, true
			if fs != "memfd" {
				if cl, err := (&claims.Resolver{}).Resolve(forged, netip.AddrPort{}); err != nil || cl.ProcessFullPath != "" {
					t.Errorf("%s: a record of a memfd with the same inode number resolved to %q, %v", fs, cl.ProcessFullPath, err)
				}
			}
		})
	}
}

// execEnv is a redirecting env with a listener at the agent's address,
// the real path of bash and its bytes (to copy it elsewhere).
func execEnv(t *testing.T) (e *env, r *Redirector, ln net.Listener, bash string, data []byte) {
	t.Helper()
	e = newEnv(t)
	r = e.loadRedirecting()
	ln = e.listenAgent(msp.ListenerAddr)
	var err error
	if bash, err = exec.LookPath("bash"); err == nil {
		bash, err = filepath.EvalSymlinks(bash)
	}
	if err == nil {
		data, err = os.ReadFile(bash)
	}
	if err != nil {
		t.Fatal(err)
	}
	return e, r, ln, bash, data
}

// startClient starts cmd in e's namespace and cgroup with a stdin pipe,
// and ends it when the test does.
func (e *env) startClient(cmd *exec.Cmd) io.WriteCloser {
	e.t.Helper()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := testenv.Start(cmd, testenv.Options{Netns: e.ns, Cgroup: e.cg}); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	return stdin
}

// acceptRecord accepts the next connection on ln (within 10 s) and takes
// its kernel record; the connection closes when the test ends. stderr, if
// set, is the client's, reported when nothing arrives.
func acceptRecord(t *testing.T, ln net.Listener, r *Redirector, stderr fmt.Stringer) identity.Record {
	t.Helper()
	if tl, ok := ln.(*net.TCPListener); ok {
		tl.SetDeadline(time.Now().Add(10 * time.Second))
	}
	c, err := ln.Accept()
	if err != nil {
		if stderr != nil {
			t.Fatalf("%v (client stderr: %q)", err, stderr.String())
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rec, ok := r.Lookup(ends(c))
	if !ok {
		t.Fatal("no record for the connection")
	}
	return rec
}
