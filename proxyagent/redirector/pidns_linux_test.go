package redirector

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opengpa/gpa/internal/testenv"
	"github.com/opengpa/gpa/proxyagent/claims"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// pidnsResult is what the agent side of TestCallerInPIDNamespace saw.
type pidnsResult struct {
	ClientPID uint32 // the client's pid in the agent's PID namespace
	AgentPID  int    // the agent's own pid there (1)
	Status    string // the redirector's status message
	Claims    *claims.Claims
	Error     string
}

// TestCallerInPIDNamespace runs the agent's side (load, listen, look up
// the kernel's record, resolve the claims) as PID 1 of a new PID namespace
// with its own /proc (unshare --pid --fork --mount-proc), as in a
// container or systemd-nspawn, and a client it starts there: the claims
// must name the client's executable and command line, which the agent can
// only find under the pid its own /proc shows.
func TestCallerInPIDNamespace(t *testing.T) {
	e := newEnv(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		testenv.SkipOrFail(t, "unshare (util-linux) not installed: %v", err)
	}
	curlPath, err := exec.LookPath("curl")
	if err != nil {
		testenv.SkipOrFail(t, "curl not installed: %v", err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--pid", "--fork", "--mount-proc", exe)
	cmd.Env = append(os.Environ(), "GPA_REDIRECTOR_HELPER=pidns-agent",
		"GPA_HELPER_CGROUP="+e.cg.Path, "GPA_HELPER_PIN="+e.cfg.PinDir, "GPA_HELPER_CURL="+curlPath)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// The agent side runs outside the attached group, in the namespace.
	if err := testenv.Start(cmd, testenv.Options{Netns: e.ns}); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("agent in a PID namespace: %v: %s", err, stderr.String())
	}
	var res pidnsResult
	if err := json.Unmarshal([]byte(stdout.String()), &res); err != nil {
		t.Fatalf("agent output %q: %v (stderr %s)", stdout.String(), err, stderr.String())
	}
	if res.Error != "" {
		t.Fatal(res.Error)
	}
	if strings.Contains(res.Status, "not translated") {
		testenv.SkipOrFail(t, "this kernel cannot translate caller pids: %s", res.Status)
	}
	if res.AgentPID != 1 {
		t.Fatalf("the agent side ran as pid %d, want 1 in a new PID namespace", res.AgentPID)
	}
	c := res.Claims
	if c.ProcessID != res.ClientPID {
		t.Errorf("processId %d, want %d (the client's pid in the agent's namespace)", c.ProcessID, res.ClientPID)
	}
	if c.ProcessFullPath != curlPath || c.ProcessName != "curl" {
		t.Errorf("processFullPath %q processName %q, want %q", c.ProcessFullPath, c.ProcessName, curlPath)
	}
	if want := curlPath + " -sS --max-time 5"; c.ProcessCmdLine != want {
		t.Errorf("processCmdLine %q, want %q", c.ProcessCmdLine, want)
	}
}

// pidnsAgent is the agent side of TestCallerInPIDNamespace: it loads the
// redirector (attached to GPA_HELPER_CGROUP, pinned under GPA_HELPER_PIN),
// redirects WireServer, starts curl in the group, resolves the accepted
// connection's claims and prints a pidnsResult.
func pidnsAgent() int {
	res := pidnsResult{AgentPID: os.Getpid()}
	err := func() error {
		netns, err := NetnsCookie()
		if err != nil {
			return err
		}
		r, err := Load(Config{CgroupPath: os.Getenv("GPA_HELPER_CGROUP"), PinDir: os.Getenv("GPA_HELPER_PIN"),
			Netns: netns, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			return err
		}
		defer r.Remove()
		res.Status = r.Status().Message
		if err := r.SetPolicy(true, false, false); err != nil {
			return err
		}
		l, err := markedListenConfig().Listen(context.Background(), "tcp", msp.ListenerAddr.String())
		if err != nil {
			return err
		}
		defer l.Close()
		cg, err := os.Open(os.Getenv("GPA_HELPER_CGROUP"))
		if err != nil {
			return err
		}
		defer cg.Close()
		client := exec.Command(os.Getenv("GPA_HELPER_CURL"), "-sS", "--max-time", "5", "http://"+msp.WireServerAddr.String()+"/pidns")
		client.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
		if err := client.Start(); err != nil {
			return err
		}
		defer client.Wait()
		res.ClientPID = uint32(client.Process.Pid)
		l.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
		c, err := l.Accept()
		if err != nil {
			return err
		}
		defer c.Close()
		peer := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		rec, ok := r.Lookup(ends(c))
		if !ok {
			return fmt.Errorf("no kernel record for %s", peer)
		}
		// Resolve while the client waits for its answer, so it is alive.
		res.Claims, err = (&claims.Resolver{}).Resolve(rec, netip.AddrPortFrom(peer.Addr(), peer.Port()))
		if err != nil {
			return err
		}
		io.WriteString(c, "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
		return nil
	}()
	if err != nil {
		res.Error = err.Error()
	}
	json.NewEncoder(os.Stdout).Encode(res)
	return 0
}
