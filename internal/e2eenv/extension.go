package e2eenv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/opengpa/gpa/extension"
	"github.com/opengpa/gpa/handler"
	"github.com/opengpa/gpa/internal/waagentsim"
	"github.com/opengpa/gpa/proxyagent/status"
)

// ExtensionConfig describes one VM extension installation into an Env.
type ExtensionConfig struct {
	// Zip is the extension package (see PackageExtension); Version is the
	// version waagent unpacks it as.
	Zip, Version string
	// OSRelease is $GPA_ROOT/etc/os-release; "" means Ubuntu 22.04.
	OSRelease string
	// PollInterval is the agent's key status poll interval; 0: 500 ms.
	PollInterval time.Duration
	// MonitorInterval is the monitor's tick (GPA_MONITOR_INTERVAL); 0:
	// 500 ms.
	MonitorInterval time.Duration
	// Overlay holds extra keys of the agent configuration overlay.
	Overlay map[string]any
	// Env are extra handler environment variables (KEY=VALUE), after the
	// ones Install sets.
	Env []string
}

// Extension is the VM extension unpacked into an Env as waagent does it,
// with its handler commands run by Run inside the namespace and the
// attached group, as root. GPA_ROOT is Root (below Env.Dir), the service
// manager is the supervisor, the agent attaches to the Env's group and pins
// in the Env's bpffs, and GPA_AGGREGATE_STATUS_URL keeps its production
// value: the monitor's call to 168.63.129.16 is redirected to the agent.
// Everything the handler starts stays in the group, so Env.Close kills it.
type Extension struct {
	Env *Env
	// Root is GPA_ROOT.
	Root string
	// Layout is the handler's layout under Root.
	Layout handler.Layout
	// Waagent plays waagent's part.
	Waagent *waagentsim.Agent
	// Dir is the handler directory (<Root>/var/lib/waagent/<Name>-<Version>).
	Dir string
	// PinDir is where the agent pins its eBPF links and maps.
	PinDir string
	// OverlayPath is GPA_CONFIG_OVERLAY.
	OverlayPath string
}

// DefaultOSRelease is an os-release the handler supports (Ubuntu 22.04).
const DefaultOSRelease = "NAME=\"Ubuntu\"\nVERSION_ID=\"22.04\"\nID=ubuntu\n"

// InstallExtension prepares a simulated VM root below e.Dir, unpacks the
// extension zip into it as waagent's download() and initialize() do, and
// writes waagent's empty config/0.settings. It runs no handler command
// (see Extension.Run).
func (e *Env) InstallExtension(cfg ExtensionConfig) (*Extension, error) {
	if cfg.Zip == "" || cfg.Version == "" {
		return nil, errors.New("e2eenv: ExtensionConfig.Zip and Version are required")
	}
	root := filepath.Join(e.Dir, "vm")
	x := &Extension{Env: e, Root: root, Layout: handler.NewLayout(root),
		PinDir: filepath.Join(e.BPFFS, "azure-proxy-agent")}
	osr := cfg.OSRelease
	if osr == "" {
		osr = DefaultOSRelease
	}
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		return nil, fmt.Errorf("e2eenv: %w", err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "os-release"), []byte(osr), 0o644); err != nil {
		return nil, fmt.Errorf("e2eenv: %w", err)
	}
	poll := cfg.PollInterval
	if poll <= 0 {
		poll = 500 * time.Millisecond
	}
	mon := cfg.MonitorInterval
	if mon <= 0 {
		mon = 500 * time.Millisecond
	}
	var err error
	if x.OverlayPath, err = e.writeOverlay(x.PinDir, poll, cfg.Overlay); err != nil {
		return nil, err
	}
	env := handlerEnv(root, x.OverlayPath, mon)
	x.Waagent = &waagentsim.Agent{
		LibDir: x.Layout.WaagentDir(),
		LogDir: x.Layout.Path(filepath.Join("/var/log/azure", handler.HandlerName)),
		Env:    append(env, cfg.Env...),
		Start:  func(cmd *exec.Cmd) error { return e.Start(cmd, Root) },
	}
	if x.Dir, err = x.Waagent.Unpack(cfg.Zip, handler.HandlerName, cfg.Version); err != nil {
		return nil, err
	}
	if err := waagentsim.WriteSettings(x.Dir, 0, ""); err != nil {
		return nil, err
	}
	return x, nil
}

// writeOverlay writes Dir/config-overlay.json, the configuration overlay
// (GPA_CONFIG_OVERLAY) that makes the installed agent attach to the Env's
// group, pin below pinDir and poll every poll, with extra keys over it,
// and returns its path.
func (e *Env) writeOverlay(pinDir string, poll time.Duration, extra map[string]any) (string, error) {
	overlay := map[string]any{
		"cgroupRoot":                     e.Cgroup.Path,
		"bpfPinPath":                     pinDir,
		"pollKeyStatusIntervalInSeconds": poll.Seconds(),
		"monitorIntervalInSeconds":       1,
		"consoleLog":                     e.ConsoleLog,
		"hostRequestTimeoutInSeconds":    5,
	}
	for k, v := range extra {
		overlay[k] = v
	}
	b, err := json.MarshalIndent(overlay, "", "  ")
	if err != nil {
		return "", fmt.Errorf("e2eenv: overlay: %w", err)
	}
	path := filepath.Join(e.Dir, "config-overlay.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return "", fmt.Errorf("e2eenv: %w", err)
	}
	return path, nil
}

// handlerEnv is the handler's environment: the caller's without proxy
// and GPA_* variables, then GPA_ROOT=root, the agent configuration overlay,
// the supervisor as service manager and short intervals.
func handlerEnv(root, overlay string, monitorInterval time.Duration) []string {
	var env []string
	for _, kv := range cleanEnv() {
		if !strings.HasPrefix(kv, "GPA_") {
			env = append(env, kv)
		}
	}
	return append(env,
		handler.EnvRoot+"="+root,
		handler.EnvConfigOverlay+"="+overlay,
		handler.EnvServiceManager+"=supervisor",
		handler.EnvMonitorInterval+"="+monitorInterval.String(),
		handler.EnvHeartbeatInterval+"=5s",
		handler.EnvRetryInterval+"=200ms",
		handler.EnvServiceSettle+"=1s",
		handler.EnvHTTPTimeout+"=2s",
	)
}

// Run runs one handler command as waagent's launch_command does, inside
// the namespace and the attached group, as root (see waagentsim.Agent.Run).
func (x *Extension) Run(ctx context.Context, verb string, seq int, extra map[string]string) (waagentsim.Result, error) {
	return x.Waagent.Run(ctx, x.Dir, verb, seq, extra)
}

// StatusPath is the handler's status file for seq.
func (x *Extension) StatusPath(seq int) string { return waagentsim.StatusPath(x.Dir, seq) }

// WaitStatus polls the status file for seq until its top-level status is
// want with n substatuses, as both the handler's own reader and waagent's
// parser see it (the bytes that matched are judged by waagent, which must
// accept them), and returns waagent's reading. On timeout the error quotes
// the last status seen.
func (x *Extension) WaitStatus(ctx context.Context, seq int, want string, n int) (waagentsim.Status, error) {
	path := x.StatusPath(seq)
	var last extension.Status
	for {
		data, err := os.ReadFile(path)
		if err == nil {
			var items []extension.StatusItem
			if json.Unmarshal(data, &items) == nil && len(items) == 1 {
				last = items[0].Status
				if last.Status == want && len(last.Substatus) == n {
					snap := filepath.Join(x.Env.Dir, "status-snapshot.json")
					if err := os.WriteFile(snap, data, 0o600); err != nil {
						return waagentsim.Status{}, err
					}
					st, err := waagentsim.ParseStatus(snap)
					if err != nil {
						return st, err
					}
					st.Path = path
					if err := st.Rejected(); err != nil {
						return st, err
					}
					if st.Status == want && len(st.Substatus) == n {
						return st, nil
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			msg := ""
			if last.FormattedMessage != nil {
				msg = last.FormattedMessage.Message
			}
			return waagentsim.Status{}, fmt.Errorf("e2eenv: status %s with %d substatuses not reached: last %q (code %d, %d substatuses): %q",
				want, n, last.Status, last.Code, len(last.Substatus), msg)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// AgentStatus decodes the agent's status from substatus[1] (ProxyAgentStatus)
// of a status as waagent parsed it.
func AgentStatus(st waagentsim.Status) (status.AgentStatus, error) {
	var a status.AgentStatus
	if len(st.Substatus) != 3 || st.Substatus[1].Name != handler.SubAgentStatus {
		return a, fmt.Errorf("e2eenv: no %s substatus in %+v", handler.SubAgentStatus, st.Substatus)
	}
	if err := json.Unmarshal([]byte(st.Substatus[1].Message), &a); err != nil {
		return a, fmt.Errorf("e2eenv: %s message is not JSON: %w", handler.SubAgentStatus, err)
	}
	return a, nil
}

// AgentLogFolder is the installed agent's log folder (audit log,
// status.json).
func (x *Extension) AgentLogFolder() string { return x.Layout.LogDir() }

// Processes returns the running processes whose executable lives under
// Root (monitor, supervisor, agent).
func (x *Extension) Processes() []handler.Proc { return procsUnder(x.Root) }

// Pins returns the names of the entries in PinDir (nil when it is gone).
func (x *Extension) Pins() []string { return entries(x.PinDir) }

// procsUnder returns the running processes whose executable lives under
// root.
func procsUnder(root string) []handler.Proc {
	var out []handler.Proc
	for _, p := range handler.ListProcs() {
		if strings.HasPrefix(p.Exe, root+"/") {
			out = append(out, p)
		}
	}
	return out
}

// entries returns the names in dir (nil when it is missing).
func entries(dir string) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// Logs returns the handler's, monitor's and supervisor's log files (paths
// that exist), for a failure report.
func (x *Extension) Logs() []string {
	var out []string
	for _, p := range []string{
		filepath.Join(x.Waagent.LogDir, handler.HandlerLogName),
		filepath.Join(x.Waagent.LogDir, handler.MonitorLogName),
		filepath.Join(x.Layout.LogDir(), "supervisor.log"),
		filepath.Join(x.Layout.LogDir(), "ProxyAgent.log"),
	} {
		if _, err := os.Stat(p); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// LogTails returns the last n lines of each of Logs.
func (x *Extension) LogTails(n int) string { return tailFiles(n, x.Logs()...) }
