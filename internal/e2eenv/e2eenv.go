// Package e2eenv runs the real azure-proxy-agent and azure-host-sim
// binaries end to end: both inside a private network namespace whose
// loopback carries the Azure service addresses (168.63.129.16 and
// 169.254.169.254), the agent's eBPF programs attached to a private cgroup
// v2 group and pinned in a private bpffs, and clients (curl, shells) run
// inside that namespace and group as root or as an unprivileged user.
//
// Nothing it starts can reach the machine's real network: every service
// address lives on the namespace's loopback, and the programs attach to the
// test's own cgroup, never to the cgroup2 root. Env.Close (or the test
// cleanup installed by New) kills every process it started, removes the
// group, unmounts the bpffs and deletes the namespace.
//
// It needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF), ip(8), a cgroup v2
// mount and curl for the Curl helper. Tests call
// testenv.RequirePrivileged first.
package e2eenv

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/opengpa/gpa/hostsim"
	"github.com/opengpa/gpa/internal/testenv"
	"github.com/opengpa/gpa/proxyagent/audit"
	"github.com/opengpa/gpa/proxyagent/msp"
	"github.com/opengpa/gpa/proxyagent/status"
)

// Service addresses as the VM sees them; inside the namespace they are
// served by the host simulator on loopback.
var (
	WireServerAddr = msp.WireServerAddr.String()
	IMDSAddr       = msp.IMDSAddr.String()
	HostGAAddr     = msp.HostGAPluginAddr.String()
)

const (
	// ControlAddr is the host simulator's control endpoint inside the
	// namespace.
	ControlAddr = "127.0.0.1:8930"
)

// Settings documents for the host simulator (its proxyAgentSettings).
const (
	// EnforceSettings: WireServer (and so HostGAPlugin) and IMDS in
	// Enforce, without rules.
	EnforceSettings = `{"enabled":true,"keyIncarnationId":1,"wireServer":{"mode":"Enforce"},"imds":{"mode":"Enforce"}}`
	// IMDSDisabledSettings: WireServer in Enforce, IMDS not protected (the
	// agent must not redirect it).
	IMDSDisabledSettings = `{"enabled":true,"keyIncarnationId":1,"wireServer":{"mode":"Enforce"},"imds":{"mode":"Disabled"}}`
)

// NobodyUID is the unprivileged user clients run as (nobody/nogroup).
const NobodyUID = 65534

// Binaries are the paths of the two programs under test.
type Binaries struct {
	Agent   string // azure-proxy-agent
	HostSim string // azure-host-sim
}

// Build compiles cmd/azure-proxy-agent and cmd/azure-host-sim of the module
// in moduleDir (statically, CGO_ENABLED=0) into outDir.
func Build(ctx context.Context, moduleDir, outDir string) (Binaries, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	b := Binaries{Agent: filepath.Join(outDir, "azure-proxy-agent"), HostSim: filepath.Join(outDir, "azure-host-sim")}
	for _, p := range []struct{ out, pkg string }{{b.Agent, "./cmd/azure-proxy-agent"}, {b.HostSim, "./cmd/azure-host-sim"}} {
		cmd := exec.CommandContext(ctx, goTool, "build", "-o", p.out, p.pkg)
		cmd.Dir = moduleDir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return Binaries{}, fmt.Errorf("e2eenv: go build %s: %w: %s", p.pkg, err, bytes.TrimSpace(out))
		}
	}
	return b, nil
}

// ModuleRoot returns the directory of the go.mod enclosing dir.
func ModuleRoot(dir string) (string, error) {
	d, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("e2eenv: no go.mod above %s", dir)
		}
		d = parent
	}
}

// Config describes one environment. Only Bin is required.
type Config struct {
	Bin Binaries
	// Settings is the host's initial proxyAgentSettings JSON; ""
	// means EnforceSettings.
	Settings string
	// IMDSRateLimit is the host's IMDS limit per client IP and second; 0
	// turns it off (the default: e2e clients share one address).
	IMDSRateLimit int
	// HostSimArgs are extra azure-host-sim flags.
	HostSimArgs []string
	// PollInterval is the agent's key status poll interval; 0 means
	// 500 ms.
	PollInterval time.Duration
	// AgentConfig overrides or adds keys of the agent's configuration file.
	AgentConfig map[string]any
	// AgentEnv is added to the agent's environment ("KEY=value"; a later
	// entry wins, "KEY=" clears an inherited value).
	AgentEnv []string
	// Dir holds configs, logs, keys and the bpffs mount point; "" creates
	// (and Close removes) a temporary directory.
	Dir string
	// NoAgent leaves the agent unstarted (its configuration file is still
	// written): the caller starts it another way, e.g. by installing the
	// VM extension with processes started through Start, which then run
	// in the namespace and the attached group and are killed by Close.
	NoAgent bool
}

// Env is one running environment. Its methods are safe for concurrent
// use.
type Env struct {
	Netns  *testenv.Netns
	Cgroup *testenv.Cgroup
	// BPFFS is the private bpffs mount; the agent pins below it.
	BPFFS string
	// Dir holds everything the environment writes.
	Dir string
	// AgentConfigPath is the agent's --config file.
	AgentConfigPath string
	// LogFolder, StatusFolder and KeyFolder are the agent's folders.
	LogFolder, StatusFolder, KeyFolder string
	// ConsoleLog stands in for the agent's /dev/console (its consoleLog).
	ConsoleLog string
	// Bin are the binaries the environment runs.
	Bin Binaries
	// AgentEnv is added to the agent's environment (Config.AgentEnv).
	AgentEnv []string

	removeDir bool
	control   *http.Client

	mu sync.Mutex
	// containers made by AddContainer, removed by Close; guarded by mu.
	containers []*testenv.Container
	agent      *proc
	host       *proc
	closed     bool
	starts     int
}

// proc is a started daemon with its log file.
type proc struct {
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
	err  error
}

func (p *proc) wait() { <-p.done }

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

var seq atomic.Uint64

// Setup creates the namespace, group and bpffs, starts the host simulator
// and the agent, and returns once the host answers on its control
// endpoint. It does not wait for provisioning (see WaitProvisioned). On
// error everything created so far is removed.
func Setup(ctx context.Context, cfg Config) (_ *Env, err error) {
	if cfg.Bin.Agent == "" || cfg.Bin.HostSim == "" {
		return nil, errors.New("e2eenv: Config.Bin is required")
	}
	e := &Env{Dir: cfg.Dir, Bin: cfg.Bin, AgentEnv: cfg.AgentEnv}
	defer func() {
		if err != nil {
			_ = e.Close()
		}
	}()
	if e.Dir == "" {
		if e.Dir, err = os.MkdirTemp("", "gpa-e2e-"); err != nil {
			return nil, fmt.Errorf("e2eenv: %w", err)
		}
		e.removeDir = true
	}
	name := fmt.Sprintf("gpa-e2e-%d-%d", os.Getpid(), seq.Add(1))
	ws := msp.WireServerAddr.Addr()
	im := msp.IMDSAddr.Addr()
	if e.Netns, err = testenv.CreateNetns(name, ws, im); err != nil {
		return nil, err
	}
	if e.Cgroup, err = testenv.CreateCgroup(name); err != nil {
		return nil, err
	}
	bpffs := filepath.Join(e.Dir, "bpffs")
	if err = os.MkdirAll(bpffs, 0o700); err != nil {
		return nil, fmt.Errorf("e2eenv: %w", err)
	}
	if err = unix.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
		return nil, fmt.Errorf("e2eenv: mount bpffs on %s: %w", bpffs, err)
	}
	e.BPFFS = bpffs
	e.control = &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			Proxy:             nil,
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return e.Netns.Dial(ctx, network, addr)
			},
		},
	}

	// Host simulator.
	settings := cfg.Settings
	if settings == "" {
		settings = EnforceSettings
	}
	settingsPath := filepath.Join(e.Dir, "host-settings.json")
	if err = os.WriteFile(settingsPath, []byte(settings), 0o600); err != nil {
		return nil, fmt.Errorf("e2eenv: %w", err)
	}
	args := []string{"-settings", settingsPath, "-wireserver", WireServerAddr, "-imds", IMDSAddr,
		"-hostga", HostGAAddr, "-control", ControlAddr, "-imds-rate-limit", strconv.Itoa(cfg.IMDSRateLimit)}
	args = append(args, cfg.HostSimArgs...)
	if e.host, err = e.startDaemon("hostsim.log", nil, cfg.Bin.HostSim, args...); err != nil {
		return nil, err
	}
	if err = e.waitControl(ctx); err != nil {
		return nil, err
	}

	// Agent configuration.
	e.LogFolder = filepath.Join(e.Dir, "log")
	e.StatusFolder = filepath.Join(e.Dir, "status")
	e.KeyFolder = filepath.Join(e.Dir, "keys")
	e.ConsoleLog = filepath.Join(e.Dir, "console.log")
	poll := cfg.PollInterval
	if poll <= 0 {
		poll = 500 * time.Millisecond
	}
	ac := map[string]any{
		"cgroupRoot":                     e.Cgroup.Path,
		"bpfPinPath":                     filepath.Join(bpffs, "azure-proxy-agent"),
		"latchKeyFolder":                 e.KeyFolder,
		"logFolder":                      e.LogFolder,
		"eventFolder":                    filepath.Join(e.Dir, "events"),
		"consoleLog":                     e.ConsoleLog,
		"statusFolder":                   e.StatusFolder,
		"pollKeyStatusIntervalInSeconds": poll.Seconds(),
		"monitorIntervalInSeconds":       1,
		"fileLogLevel":                   "Info",
		"fileLogLevelForSystemEvents":    "Info",
		"hostRequestTimeoutInSeconds":    5,
	}
	for k, v := range cfg.AgentConfig {
		ac[k] = v
	}
	b, err := json.MarshalIndent(ac, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("e2eenv: agent config: %w", err)
	}
	e.AgentConfigPath = filepath.Join(e.Dir, "proxy-agent.json")
	if err = os.WriteFile(e.AgentConfigPath, b, 0o600); err != nil {
		return nil, fmt.Errorf("e2eenv: %w", err)
	}
	if cfg.NoAgent {
		return e, nil
	}
	if err = e.StartAgent(); err != nil {
		return nil, err
	}
	return e, nil
}

// BuildExtension compiles cmd/ProxyAgentExt of the module in moduleDir
// (statically, CGO_ENABLED=0) into outDir and returns its path.
func BuildExtension(ctx context.Context, moduleDir, outDir string) (string, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(outDir, "ProxyAgentExt")
	cmd := exec.CommandContext(ctx, goTool, "build", "-o", out, "./cmd/ProxyAgentExt")
	cmd.Dir = moduleDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("e2eenv: go build ./cmd/ProxyAgentExt: %w: %s", err, bytes.TrimSpace(b))
	}
	return out, nil
}

// PackageExtension builds the VM extension zip for version with the
// module's packaging/package.sh from the agent and extension binaries
// given, into outDir, and returns the zip's path
// (outDir/Microsoft.CPlat.ProxyAgent.ProxyAgentLinux-<version>.zip).
func PackageExtension(ctx context.Context, moduleDir, version, agent, ext, outDir string) (string, error) {
	stage, err := os.MkdirTemp("", "gpa-pkg-bin-")
	if err != nil {
		return "", fmt.Errorf("e2eenv: %w", err)
	}
	defer os.RemoveAll(stage)
	for _, b := range []string{agent, ext} {
		data, err := os.ReadFile(b)
		if err != nil {
			return "", fmt.Errorf("e2eenv: package: %w", err)
		}
		name := "azure-proxy-agent"
		if b == ext {
			name = "ProxyAgentExt"
		}
		if err := os.WriteFile(filepath.Join(stage, name), data, 0o755); err != nil {
			return "", fmt.Errorf("e2eenv: package: %w", err)
		}
	}
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(moduleDir, "packaging", "package.sh"), version, stage, outDir)
	cmd.Dir = moduleDir
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("e2eenv: package.sh: %w: %s", err, bytes.TrimSpace(b))
	}
	zipPath := filepath.Join(outDir, "Microsoft.CPlat.ProxyAgent.ProxyAgentLinux-"+version+".zip")
	if _, err := os.Stat(zipPath); err != nil {
		return "", fmt.Errorf("e2eenv: package.sh wrote no zip: %w", err)
	}
	return zipPath, nil
}

// CleanEnv is the process environment without proxy variables (http_proxy
// and the like), so no client sends service traffic to a proxy outside
// the namespace.
func CleanEnv() []string { return cleanEnv() }

// New is Setup for tests: it skips or fails through
// testenv.RequirePrivileged when the test cannot run, fails the test on a
// setup error, and removes everything when the test ends, logging the tails
// of both daemons' logs if the test failed.
func New(t testing.TB, cfg Config) *Env {
	t.Helper()
	testenv.RequirePrivileged(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := Setup(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("environment logs:\n%s", e.LogTails(60))
		}
		if err := e.Close(); err != nil {
			t.Errorf("e2eenv close: %v", err)
		}
	})
	return e
}

// startDaemon starts a long-running program inside the namespace, outside
// the attached group, as root, with env added to its environment and
// stdout and stderr appended to Dir/logName.
func (e *Env) startDaemon(logName string, env []string, path string, args ...string) (*proc, error) {
	f, err := os.OpenFile(filepath.Join(e.Dir, logName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("e2eenv: %w", err)
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(cleanEnv(), env...)
	// No Pdeathsig: it fires when the forking thread ends, and Netns.Do
	// discards that thread at once.
	if err := testenv.Start(cmd, testenv.Options{Netns: e.Netns}); err != nil {
		f.Close()
		return nil, fmt.Errorf("e2eenv: start %s: %w", filepath.Base(path), err)
	}
	p := &proc{cmd: cmd, log: f, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// cleanEnv is the process environment without proxy variables, so no
// client sends service traffic to a proxy outside the namespace.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToLower(k) {
		case "http_proxy", "https_proxy", "all_proxy", "no_proxy":
			continue
		}
		out = append(out, kv)
	}
	return out
}

func (e *Env) waitControl(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for {
		if _, err := e.HostState(ctx); err == nil {
			return nil
		}
		if e.host.exited() {
			return fmt.Errorf("e2eenv: azure-host-sim exited: %v\n%s", e.host.err, tailFiles(20, filepath.Join(e.Dir, "hostsim.log")))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("e2eenv: host simulator control endpoint not answering: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// StartAgent starts azure-proxy-agent with AgentConfigPath inside the
// namespace (outside the attached group), as root. Its output goes to
// Dir/agent.log. It is an error if the agent is already running.
func (e *Env) StartAgent() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return errors.New("e2eenv: closed")
	}
	if e.agent != nil && !e.agent.exited() {
		return errors.New("e2eenv: agent already running")
	}
	e.starts++
	p, err := e.startDaemon("agent.log", e.AgentEnv, e.Bin.Agent, "--config", e.AgentConfigPath)
	if err != nil {
		return err
	}
	fmt.Fprintf(p.log, "=== e2eenv: agent start #%d, pid %d, %s\n", e.starts, p.cmd.Process.Pid, time.Now().UTC().Format(time.RFC3339Nano))
	e.agent = p
	return nil
}

// AgentPID returns the running agent's pid, or 0 when it is not running.
func (e *Env) AgentPID() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.agent == nil || e.agent.exited() {
		return 0
	}
	return e.agent.cmd.Process.Pid
}

// KillAgent sends SIGKILL to the agent and waits until it is gone.
func (e *Env) KillAgent() error { return e.signalAgent(syscall.SIGKILL) }

// StopAgent sends SIGTERM to the agent and waits until it has exited.
func (e *Env) StopAgent() error { return e.signalAgent(syscall.SIGTERM) }

// PauseAgent stops the agent with SIGSTOP: connections still complete in
// the kernel (the listen backlog) but the agent accepts nothing until
// ResumeAgent.
func (e *Env) PauseAgent() error { return e.sendAgent(syscall.SIGSTOP) }

// ResumeAgent continues an agent stopped by PauseAgent (SIGCONT).
func (e *Env) ResumeAgent() error { return e.sendAgent(syscall.SIGCONT) }

// PauseHost stops the host simulator with SIGSTOP: connections to the
// services still complete in the kernel, but nothing is answered until
// ResumeHost.
func (e *Env) PauseHost() error { return e.send("host simulator", e.host, syscall.SIGSTOP) }

// ResumeHost continues a host simulator stopped by PauseHost (SIGCONT).
func (e *Env) ResumeHost() error { return e.send("host simulator", e.host, syscall.SIGCONT) }

func (e *Env) sendAgent(sig syscall.Signal) error {
	e.mu.Lock()
	p := e.agent
	e.mu.Unlock()
	return e.send("agent", p, sig)
}

func (e *Env) send(name string, p *proc, sig syscall.Signal) error {
	if p == nil || p.exited() {
		return fmt.Errorf("e2eenv: %s not running", name)
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("e2eenv: signal %s: %w", name, err)
	}
	if sig == syscall.SIGSTOP {
		// A signal is delivered asynchronously: return once the process
		// is stopped, so what the caller does next happens while it is.
		return waitStopped(name, p.cmd.Process.Pid)
	}
	return nil
}

// waitStopped waits (up to 5 s) until every thread of pid is in the
// stopped state (T in /proc/<pid>/task/<tid>/stat).
func waitStopped(name string, pid int) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			return fmt.Errorf("e2eenv: %s: %w", name, err)
		}
		stopped := len(tasks) > 0
		for _, t := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, t.Name()))
			if err != nil {
				continue // the thread ended
			}
			if i := bytes.LastIndexByte(b, ')'); i < 0 || i+2 >= len(b) || (b[i+2] != 'T' && b[i+2] != 't') {
				stopped = false
				break
			}
		}
		if stopped {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("e2eenv: %s did not stop", name)
		}
		time.Sleep(time.Millisecond)
	}
}

func (e *Env) signalAgent(sig syscall.Signal) error {
	e.mu.Lock()
	p := e.agent
	e.mu.Unlock()
	if p == nil || p.exited() {
		return errors.New("e2eenv: agent not running")
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("e2eenv: signal agent: %w", err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		p.wait()
		return fmt.Errorf("e2eenv: agent did not exit on %v", sig)
	}
}

// WaitProvisioned runs `azure-proxy-agent --config … --status --wait
// wait` inside the namespace and returns its exit code (0: provisioned)
// and output.
func (e *Env) WaitProvisioned(ctx context.Context, wait time.Duration) (int, string, error) {
	secs := strconv.FormatFloat(wait.Seconds(), 'f', -1, 64)
	cmd := exec.CommandContext(ctx, e.Bin.Agent, "--config", e.AgentConfigPath, "--status", "--wait", secs)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Env = cleanEnv()
	if err := testenv.Start(cmd, testenv.Options{Netns: e.Netns}); err != nil {
		return -1, "", fmt.Errorf("e2eenv: start agent --status: %w", err)
	}
	err := cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), out.String(), nil
	}
	if err != nil {
		return -1, out.String(), fmt.Errorf("e2eenv: agent --status: %w", err)
	}
	return 0, out.String(), nil
}

// Close stops the agent and the host simulator (SIGTERM, then SIGKILL
// after 5 s), kills everything left in the group and removes it, unmounts
// the bpffs (dropping the pins), deletes the namespace and, if Setup
// created it, the directory. It is safe to call more than once.
func (e *Env) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	agent, host, containers := e.agent, e.host, e.containers
	e.mu.Unlock()
	var errs []error
	// Containers first: their groups are children of the attached one.
	for _, k := range containers {
		if err := k.Delete(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range []*proc{agent, host} {
		if p == nil {
			continue
		}
		if !p.exited() {
			_ = p.cmd.Process.Signal(syscall.SIGCONT) // in case it is paused
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(5 * time.Second):
				_ = p.cmd.Process.Kill()
				p.wait()
			}
		}
		p.log.Close()
	}
	if e.Cgroup != nil {
		if err := e.Cgroup.Delete(); err != nil {
			errs = append(errs, err)
		}
	}
	if e.BPFFS != "" {
		if err := unix.Unmount(e.BPFFS, unix.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("e2eenv: unmount bpffs: %w", err))
		}
	}
	if e.Netns != nil {
		if err := e.Netns.Delete(); err != nil {
			errs = append(errs, err)
		}
	}
	if e.removeDir && e.Dir != "" {
		if err := os.RemoveAll(e.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// LogTails returns the last n lines of the agent's and the host
// simulator's logs.
func (e *Env) LogTails(n int) string {
	return tailFiles(n, filepath.Join(e.Dir, "agent.log"), filepath.Join(e.Dir, "hostsim.log"))
}

// tailFiles returns the last n lines of each file, each under a "--- path"
// line (for test failure messages; an unreadable file shows empty).
func tailFiles(n int, paths ...string) string {
	var b bytes.Buffer
	for _, p := range paths {
		data, _ := os.ReadFile(p)
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > n {
			lines = lines[len(lines)-n:]
		}
		fmt.Fprintf(&b, "--- %s\n%s\n", p, strings.Join(lines, "\n"))
	}
	return b.String()
}

// AgentLog returns the agent's stdout and stderr so far (all runs).
func (e *Env) AgentLog() string {
	b, _ := os.ReadFile(filepath.Join(e.Dir, "agent.log"))
	return string(b)
}

// StatusFile reads the agent's status.json.
func (e *Env) StatusFile() (status.Aggregate, error) {
	var a status.Aggregate
	b, err := os.ReadFile(filepath.Join(e.StatusFolder, "status.json"))
	if err != nil {
		return a, err
	}
	if err := json.Unmarshal(b, &a); err != nil {
		return a, fmt.Errorf("e2eenv: status.json: %w", err)
	}
	return a, nil
}

// Audit reads every record of the agent's audit log (ProxyAgent.Audit.jsonl).
// A corrupt line is an error; a missing log is no records.
func (e *Env) Audit() ([]audit.Record, error) {
	f, err := os.Open(filepath.Join(e.LogFolder, audit.AuditLogName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []audit.Record
	err = audit.ReadLog(f, func(_ int, r audit.Record) error {
		out = append(out, r)
		return nil
	})
	return out, err
}

// WaitAudit polls the audit log (the agent flushes it about once a
// second) until a record satisfies match, and returns it.
func (e *Env) WaitAudit(ctx context.Context, match func(audit.Record) bool) (audit.Record, error) {
	for {
		recs, err := e.Audit()
		if err != nil && !audit.IsCorrupt(err) {
			return audit.Record{}, err
		}
		for _, r := range recs {
			if match(r) {
				return r, nil
			}
		}
		select {
		case <-ctx.Done():
			return audit.Record{}, fmt.Errorf("e2eenv: no matching audit record among %d: %w", len(recs), ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Control makes a call to the host simulator's control endpoint inside the
// namespace. body, when not nil, is sent as JSON (a string or []byte is
// sent as is). A status of 400 or above is an error quoting the answer.
func (e *Env) Control(ctx context.Context, method, path string, body any) ([]byte, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+ControlAddr+path, rd)
	if err != nil {
		return nil, err
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := e.control.Do(req)
	if err != nil {
		return nil, fmt.Errorf("e2eenv: control %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return nil, fmt.Errorf("e2eenv: control %s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 400 {
		return out, fmt.Errorf("e2eenv: control %s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(out))
	}
	return out, nil
}

// HostState returns the host simulator's GET /state.
func (e *Env) HostState(ctx context.Context) (hostsim.State, error) {
	var st hostsim.State
	b, err := e.Control(ctx, http.MethodGet, "/state", nil)
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(b, &st)
}

// SetSettings replaces the host's proxyAgentSettings (PUT /settings).
func (e *Env) SetSettings(ctx context.Context, settings string) error {
	_, err := e.Control(ctx, http.MethodPut, "/settings", settings)
	return err
}

// Journal returns the host's journal entries with a sequence number above
// since.
func (e *Env) Journal(ctx context.Context, since uint64) ([]hostsim.Entry, error) {
	b, err := e.Control(ctx, http.MethodGet, "/journal?since="+strconv.FormatUint(since, 10), nil)
	if err != nil {
		return nil, err
	}
	var out []hostsim.Entry
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("e2eenv: journal: %w", err)
	}
	return out, nil
}

// LastSeq returns the sequence number of the host's newest journal entry
// (0 if none), to read only later entries with Journal.
func (e *Env) LastSeq(ctx context.Context) (uint64, error) {
	j, err := e.Journal(ctx, 0)
	if err != nil || len(j) == 0 {
		return 0, err
	}
	return j[len(j)-1].Seq, nil
}

// Caller says how a client process runs. The zero value is root inside the
// namespace and the attached group, so its service connections are
// redirected to the agent.
type Caller struct {
	// Credential is the uid/gid to run as; nil: root.
	Credential *syscall.Credential
	// Bypass runs the process in the namespace but outside the attached
	// group, so nothing redirects it.
	Bypass bool
	// Container runs the process in that container (its network namespace
	// and, unless Bypass, its group, a child of the attached one) instead
	// of the VM's.
	Container *testenv.Container
}

// Root and Nobody are the two callers the tests use.
var (
	Root   = Caller{}
	Nobody = Caller{Credential: &syscall.Credential{Uid: NobodyUID, Gid: NobodyUID}}
)

// Outside returns c running outside the attached group.
func (c Caller) Outside() Caller { c.Bypass = true; return c }

// In returns c running in container k.
func (c Caller) In(k *testenv.Container) Caller { c.Container = k; return c }

// AddContainer wires a container to the environment's namespace below its
// attached group (testenv.CreateContainer); Close removes it. The n-th
// container (0 ≤ n < 60) gets 169.254.231.(4n+2)/30 behind
// 169.254.231.(4n+1), link-local addresses that exist only on its veth
// pair.
func (e *Env) AddContainer(n int) (*testenv.Container, error) {
	if n < 0 || n >= 60 {
		return nil, fmt.Errorf("e2eenv: container number %d out of range", n)
	}
	base := byte(4 * n)
	gw := netip.PrefixFrom(netip.AddrFrom4([4]byte{169, 254, 231, base + 1}), 30)
	addr := netip.PrefixFrom(netip.AddrFrom4([4]byte{169, 254, 231, base + 2}), 30)
	k, err := testenv.CreateContainer(e.Netns, e.Cgroup, fmt.Sprintf("gpc%d", n), gw, addr)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.containers = append(e.containers, k)
	e.mu.Unlock()
	return k, nil
}

// NewContainer is AddContainer for a test: a failure fails the test.
func (e *Env) NewContainer(t testing.TB, n int) *testenv.Container {
	t.Helper()
	k, err := e.AddContainer(n)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// Start starts cmd as c says, inside the namespace. The process enters the
// group (unless c.Bypass) before its first instruction. The caller waits
// for cmd.
func (e *Env) Start(cmd *exec.Cmd, c Caller) error {
	if cmd.Env == nil {
		cmd.Env = cleanEnv()
	}
	o := testenv.Options{Netns: e.Netns, Credential: c.Credential}
	if !c.Bypass {
		o.Cgroup = e.Cgroup
	}
	if k := c.Container; k != nil {
		o.Netns, o.Cgroup = k.Netns, nil
		if !c.Bypass {
			o.Cgroup = k.Cgroup
		}
	}
	return testenv.Start(cmd, o)
}

// Result is one finished client command.
type Result struct {
	PID      int
	ExitCode int
	Stdout   []byte
	Stderr   string
}

// Run runs name with args as c says and returns its pid, exit code and
// output. A non-zero exit is a Result, not an error.
func (e *Env) Run(ctx context.Context, c Caller, name string, args ...string) (Result, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := e.Start(cmd, c); err != nil {
		return Result{}, fmt.Errorf("e2eenv: start %s: %w", name, err)
	}
	err := cmd.Wait()
	r := Result{PID: cmd.Process.Pid, Stdout: stdout.Bytes(), Stderr: stderr.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.ExitCode = ee.ExitCode()
		if r.ExitCode < 0 {
			return r, fmt.Errorf("e2eenv: %s: %w", name, err)
		}
	} else if err != nil {
		return r, fmt.Errorf("e2eenv: %s: %w", name, err)
	}
	return r, nil
}

// Response is one curl call's outcome.
type Response struct {
	Result
	// Status is the HTTP status, 0 when no response was parsed (see
	// ExitCode: 7 is "connection refused").
	Status int
	Header http.Header
	Body   []byte
}

// Marked reports whether the response carries the agent's marker
// (x-ms-azure-host-authorization: value), i.e. it passed through the agent.
func (r Response) Marked() bool {
	return r.Header.Get("x-ms-azure-host-authorization") == "value"
}

// CurlArgs are the arguments Curl passes before the caller's: silent with
// errors, headers in the output, no URL globbing (IPv6 literals), no proxy,
// a 10 s limit.
var CurlArgs = []string{"-sS", "-i", "-g", "--noproxy", "*", "--max-time", "10"}

// Curl runs curl as c says (GET url, each header as -H) and parses the
// response.
func (e *Env) Curl(ctx context.Context, c Caller, url string, headers ...string) (Response, error) {
	args := append([]string{}, CurlArgs...)
	for _, h := range headers {
		args = append(args, "-H", h)
	}
	args = append(args, url)
	res, err := e.Run(ctx, c, "curl", args...)
	r := Response{Result: res}
	if err != nil || res.ExitCode != 0 {
		return r, err
	}
	resp, perr := http.ReadResponse(bufio.NewReader(bytes.NewReader(res.Stdout)), nil)
	if perr != nil {
		return r, fmt.Errorf("e2eenv: parse curl output: %w: %q", perr, res.Stdout)
	}
	r.Status, r.Header = resp.StatusCode, resp.Header
	r.Body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	return r, nil
}
