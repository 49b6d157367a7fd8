package e2eenv

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/opengpa/gpa/handler"
	"github.com/opengpa/gpa/hostsim"
)

// The real Azure Linux Agent (waagent) as the Debian package installs it.
const (
	WaagentPython = "/usr/bin/python3"
	WaagentScript = "/usr/sbin/waagent"
	// WaagentPackageDir is where its Python package lives; deps.sh
	// installs the package when this directory is missing.
	WaagentPackageDir = "/usr/lib/python3/dist-packages/azurelinuxagent"
)

// StorageAddr is the host simulator's storage account inside the
// namespace (extension manifests and packages, the status blob).
const StorageAddr = "127.0.0.1:8931"

// EnvWaagentSource names the variable that, when set, points at a
// WALinuxAgent source tree (a checkout of Azure/WALinuxAgent, e.g. 2.15,
// which Debian does not package) to run instead of Debian's waagent:
// its bin/waagent with the tree on PYTHONPATH.
const EnvWaagentSource = "GPA_WAAGENT_SRC"

// waagentSource returns the waagent script that runs and what its Python
// needs in its environment: Debian's, or bin/waagent of $GPA_WAAGENT_SRC
// with the tree on PYTHONPATH.
func waagentSource() (script string, env []string) {
	if src := os.Getenv(EnvWaagentSource); src != "" {
		return filepath.Join(src, "bin", "waagent"), []string{"PYTHONPATH=" + src}
	}
	return WaagentScript, nil
}

// WaagentAvailable reports why the real waagent cannot run here, or nil.
func WaagentAvailable() error {
	if script, env := waagentSource(); env != nil {
		if _, err := os.Stat(script); err != nil {
			return fmt.Errorf("%s is not a WALinuxAgent source tree: %w", EnvWaagentSource, err)
		}
	}
	for _, p := range []string{WaagentPython, WaagentScript, WaagentPackageDir} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("waagent not installed (scripts/deps.sh installs Debian's waagent): %w", err)
		}
	}
	for _, p := range []string{"/var/lib/waagent", "/etc/waagent.conf"} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("waagent's %s is missing (the mount namespace covers it): %w", p, err)
		}
	}
	return nil
}

// WaagentVersion is the installed waagent's version ("2.7.3.0").
func WaagentVersion() (string, error) {
	cmd := exec.Command(WaagentPython, "-c", "from azurelinuxagent.common.version import AGENT_VERSION; print(AGENT_VERSION)")
	if _, env := waagentSource(); env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("e2eenv: waagent version: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// Waagent is the real, unmodified waagent running its extension handler
// (`waagent -run-exthandlers`) against the host simulator, in the Env's
// namespace and attached group (so once the agent runs, its traffic is
// redirected and signed) and in a private mount namespace: /var/log,
// /var/lib/waagent and /etc/waagent.conf are bind mounts of directories
// below Root, so nothing of the machine changes. Its configuration
// (Lib.Dir and Extension.LogDir below Root, as the handler's GPA_ROOT
// layout expects them; no provisioning, firewall, cgroups, resource disk,
// self-update or Fast Track; a 1 s goal-state period) is Root's
// etc/waagent.conf, and Lib.Dir's WireServerEndpoint names 168.63.129.16
// as DHCP would. Handler commands inherit its environment: GPA_ROOT=Root,
// the agent configuration overlay and short handler intervals.
type Waagent struct {
	Env *Env
	// Root is GPA_ROOT and the root of everything waagent writes.
	Root string
	// LibDir is waagent's Lib.Dir; LogPath its own log (waagent.log).
	LibDir, LogPath string
	// ExtLogDir is Extension.LogDir.
	ExtLogDir string
	// PinDir is where the agent pins its eBPF links and maps.
	PinDir string

	confPath, varLog, overlay string
	env                       []string
	proc                      *proc
}

// WaagentConfig configures NewWaagent.
type WaagentConfig struct {
	// Overlay holds extra keys of the agent configuration overlay.
	Overlay map[string]any
	// MonitorInterval is the extension monitor's tick; 0: 500 ms.
	MonitorInterval time.Duration
}

// NewWaagent prepares the simulated VM root, waagent's configuration and
// Lib.Dir; Start runs waagent.
func (e *Env) NewWaagent(cfg WaagentConfig) (*Waagent, error) {
	if err := WaagentAvailable(); err != nil {
		return nil, err
	}
	root := filepath.Join(e.Dir, "vm")
	l := handler.NewLayout(root)
	w := &Waagent{Env: e, Root: root, LibDir: l.WaagentDir(), ExtLogDir: l.Path("/var/log/azure"),
		varLog: filepath.Join(root, "var", "log"), confPath: filepath.Join(root, "etc", "waagent.conf"),
		PinDir: filepath.Join(e.BPFFS, "azure-proxy-agent")}
	w.LogPath = filepath.Join(w.varLog, "waagent.log")
	for _, d := range []string{w.LibDir, w.ExtLogDir, w.varLog, filepath.Dir(w.confPath)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("e2eenv: %w", err)
		}
	}
	files := map[string]string{
		filepath.Join(root, "etc", "os-release"): DefaultOSRelease,
		w.confPath: strings.Join([]string{
			"Provisioning.Agent=disabled",
			"Provisioning.Enabled=n",
			"Provisioning.MonitorHostName=n",
			"ResourceDisk.Format=n",
			"ResourceDisk.EnableSwap=n",
			"Lib.Dir=" + w.LibDir,
			"Extension.LogDir=" + w.ExtLogDir,
			"Pid.File=" + filepath.Join(root, "waagent.pid"),
			"Extensions.Enabled=y",
			"Extensions.GoalStatePeriod=1",
			"Extensions.InitialGoalStatePeriod=1",
			"AutoUpdate.Enabled=n",
			"Debug.EnableFastTrack=n",
			"CGroups.EnforceLimits=n",
			"CGroups.Enabled=n",
			"OS.EnableFirewall=n",
			"OS.EnableRDMA=n",
			"Logs.Verbose=n",
			"Logs.Console=n",
			"Logs.Collect=n",
			"HttpProxy.Host=None",
			"",
		}, "\n"),
		// What waagent's DHCP handling and protocol detection would leave.
		filepath.Join(w.LibDir, "WireServerEndpoint"): strings.Split(WireServerAddr, ":")[0],
		filepath.Join(w.LibDir, "Protocol"):           "WireProtocol",
	}
	for p, data := range files {
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			return nil, fmt.Errorf("e2eenv: %w", err)
		}
	}
	mon := cfg.MonitorInterval
	if mon <= 0 {
		mon = 500 * time.Millisecond
	}
	var err error
	if w.overlay, err = e.writeOverlay(w.PinDir, 500*time.Millisecond, cfg.Overlay); err != nil {
		return nil, err
	}
	// The handler's production settle time: waagent reads the heartbeat
	// while the monitor's first install is still settling.
	for _, kv := range handlerEnv(root, w.overlay, mon) {
		if !strings.HasPrefix(kv, handler.EnvServiceSettle+"=") {
			w.env = append(w.env, kv)
		}
	}
	w.env = append(w.env, handler.EnvServiceSettle+"="+handler.DefaultOptions().ServiceSettle.String())
	return w, nil
}

// Start runs `waagent -run-exthandlers` (-debug: it has no daemon parent
// to watch) in its private mount namespace. Its output goes to
// Env.Dir/waagent.out.
func (w *Waagent) Start() error {
	if w.proc != nil && !w.proc.exited() {
		return errors.New("e2eenv: waagent already running")
	}
	waagent, pyEnv := waagentSource()
	script := strings.Join([]string{
		"set -e",
		"mount --bind " + shellQuote(w.varLog) + " /var/log",
		"mount --bind " + shellQuote(w.LibDir) + " /var/lib/waagent",
		"mount --bind " + shellQuote(w.confPath) + " /etc/waagent.conf",
		"exec " + WaagentPython + " -u " + shellQuote(waagent) + " -run-exthandlers -debug -configuration-path:/etc/waagent.conf",
	}, "\n")
	f, err := os.OpenFile(filepath.Join(w.Env.Dir, "waagent.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("e2eenv: %w", err)
	}
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(append([]string(nil), w.env...), pyEnv...)
	// A private mount namespace: Go makes every mount in it private, so
	// the bind mounts stay inside.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	if err := w.Env.Start(cmd, Root); err != nil {
		f.Close()
		return fmt.Errorf("e2eenv: start waagent: %w", err)
	}
	p := &proc{cmd: cmd, log: f, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	w.proc = p
	return nil
}

// Stop stops waagent (SIGTERM, then SIGKILL after 10 s) and waits for it.
// The extension's monitor and agent keep running, as on a VM whose
// walinuxagent service restarts.
func (w *Waagent) Stop() error {
	if w.proc == nil || w.proc.exited() {
		return nil
	}
	w.proc.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-w.proc.done:
	case <-time.After(10 * time.Second):
		w.proc.cmd.Process.Kill()
		<-w.proc.done
	}
	return nil
}

// Running reports whether waagent runs.
func (w *Waagent) Running() bool { return w.proc != nil && !w.proc.exited() }

// Log returns waagent's own log.
func (w *Waagent) Log() string {
	b, _ := os.ReadFile(w.LogPath)
	return string(b)
}

// LogTail returns the last n lines of waagent's log and its output.
func (w *Waagent) LogTail(n int) string {
	return tailFiles(n, w.LogPath, filepath.Join(w.Env.Dir, "waagent.out"))
}

// HandlerDir is the directory waagent unpacks version of the extension
// into.
func (w *Waagent) HandlerDir(version string) string {
	return filepath.Join(w.LibDir, handler.HandlerName+"-"+version)
}

// Processes returns the running processes whose executable lives under
// Root (monitor, supervisor, agent).
func (w *Waagent) Processes() []handler.Proc { return procsUnder(w.Root) }

// Pins returns the names of the entries in PinDir (nil when it is gone).
func (w *Waagent) Pins() []string { return entries(w.PinDir) }

// PublishPackage publishes an extension zip on the host simulator as
// version of the ProxyAgent handler.
func (e *Env) PublishPackage(ctx context.Context, version, zipPath string) error {
	data, err := os.ReadFile(zipPath)
	if err != nil {
		return fmt.Errorf("e2eenv: %w", err)
	}
	_, err = e.Control(ctx, http.MethodPut, "/packages/"+handler.HandlerName+"/"+version, data)
	return err
}

// SetVM applies a VM model on the host simulator (a new goal state when
// its extensions change) and returns the goal state's incarnation.
func (e *Env) SetVM(ctx context.Context, model any) (int, error) {
	b, err := e.Control(ctx, http.MethodPut, "/vm", model)
	if err != nil {
		return 0, err
	}
	var r struct {
		Incarnation int `json:"incarnation"`
	}
	return r.Incarnation, json.Unmarshal(b, &r)
}

// InstanceView reads the instance view from the host simulator.
func (e *Env) InstanceView(ctx context.Context) (hostsim.InstanceView, error) {
	var iv hostsim.InstanceView
	b, err := e.Control(ctx, http.MethodGet, "/instanceView", nil)
	if err != nil {
		return iv, err
	}
	return iv, json.Unmarshal(b, &iv)
}

// WaitInstanceView polls the instance view until ok accepts it, and
// returns it; on timeout the error shows the last view.
func (e *Env) WaitInstanceView(ctx context.Context, ok func(hostsim.InstanceView) bool) (hostsim.InstanceView, error) {
	var last hostsim.InstanceView
	for {
		iv, err := e.InstanceView(ctx)
		if err == nil {
			last = iv
			if ok(iv) {
				return iv, nil
			}
		}
		select {
		case <-ctx.Done():
			b, _ := json.MarshalIndent(last, "", "  ")
			return last, fmt.Errorf("e2eenv: instance view not reached: %w; last:\n%s", ctx.Err(), b)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// WaitInstanceView is Env.WaitInstanceView while this waagent runs: when
// it has exited (it runs without the daemon that would restart it), the
// wait ends at once with the tail of its log, not at the deadline with a
// view that stopped changing.
func (w *Waagent) WaitInstanceView(ctx context.Context, ok func(hostsim.InstanceView) bool) (hostsim.InstanceView, error) {
	exited := false
	iv, err := w.Env.WaitInstanceView(ctx, func(iv hostsim.InstanceView) bool {
		if ok(iv) {
			return true
		}
		exited = !w.Running()
		return exited
	})
	if err == nil && exited {
		return iv, fmt.Errorf("e2eenv: waagent exited before the instance view was reached; its log ends:\n%s", w.LogTail(40))
	}
	return iv, err
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// BuildVersion compiles cmd/azure-proxy-agent and cmd/ProxyAgentExt of
// the module in moduleDir with version stamped into both (as the Makefile
// does), into outDir/<version>/, and returns their paths.
func BuildVersion(ctx context.Context, moduleDir, outDir, version string) (agent, ext string, err error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	dir := filepath.Join(outDir, version)
	agent, ext = filepath.Join(dir, "azure-proxy-agent"), filepath.Join(dir, "ProxyAgentExt")
	for _, p := range []struct{ out, pkg string }{{agent, "./cmd/azure-proxy-agent"}, {ext, "./cmd/ProxyAgentExt"}} {
		cmd := exec.CommandContext(ctx, goTool, "build", "-ldflags", "-X github.com/opengpa/gpa/internal/version.Version="+version,
			"-o", p.out, p.pkg)
		cmd.Dir = moduleDir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("e2eenv: go build %s %s: %w: %s", version, p.pkg, err, bytes.TrimSpace(b))
		}
	}
	return agent, ext, nil
}
