package redirector

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
	e := newEnv(t)
	r := e.load()
	if err := r.SetPolicy(true, true, true); err != nil {
		t.Fatal(err)
	}
	ln, err := e.ns.Listen("tcp", msp.ListenerAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal(err)
	}
	bash, err = filepath.EvalSymlinks(bash)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other-shell")
	data, err := os.ReadFile(bash)
	if err != nil {
		t.Fatal(err)
	}
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
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := testenv.Start(cmd, testenv.Options{Netns: e.ns, Cgroup: e.cg}); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() }()

	accept := func() identity.Record {
		t.Helper()
		if tl, ok := ln.(*net.TCPListener); ok {
			tl.SetDeadline(time.Now().Add(10 * time.Second))
		}
		c, err := ln.Accept()
		if err != nil {
			t.Fatalf("%v (client stderr: %q)", err, stderr.String())
		}
		t.Cleanup(func() { c.Close() })
		rec, ok := r.Lookup(c.RemoteAddr().(*net.TCPAddr).AddrPort())
		if !ok {
			t.Fatal("no record for the connection")
		}
		return rec
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

	first := accept()
	if first.PID != uint32(cmd.Process.Pid) || first.StartTime == 0 || first.ExecID == 0 {
		t.Fatalf("first record %+v: want pid %d, a start time and an exec count", first, cmd.Process.Pid)
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
	if c := resolve(second); c.ProcessFullPath != other {
		t.Fatalf("after exec: %q, want the new image %s", c.ProcessFullPath, other)
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
