package handler

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/opengpa/gpa/internal/atomicfile"
	"github.com/opengpa/gpa/internal/serdejson"

	"github.com/opengpa/gpa/proxyagent/config"
	"github.com/opengpa/gpa/proxyagent/msp"
	"github.com/opengpa/gpa/proxyagent/redirector"
)

// ErrNoBackup reports a restore without a backup.
var ErrNoBackup = errors.New("setup: no backup to restore")

// Setup installs the agent payload bundled in an extension directory onto
// the machine and manages the service (upstream's proxy_agent_setup).
type Setup struct {
	ExtDir  string
	Layout  Layout
	Service Service
	Opts    Options
	Log     *slog.Logger
	// SelfExe is this binary; the supervisor service installs a copy.
	SelfExe string
}

func (s *Setup) ext(rel string) string { return filepath.Join(s.ExtDir, filepath.FromSlash(rel)) }

// AgentVersion runs "<path> --version" (10 s timeout) and returns the
// trimmed output.
func AgentVersion(ctx context.Context, path string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, path, "--version")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s --version: %v: %s", path, err, strings.TrimSpace(stderr.String()))
	}
	v := strings.TrimSpace(stdout.String())
	if v == "" {
		return "", fmt.Errorf("%s --version printed nothing", path)
	}
	return v, nil
}

// BundledVersion is the version of the agent shipped in the extension.
func (s *Setup) BundledVersion(ctx context.Context) (string, error) {
	return AgentVersion(ctx, s.ext(bundledAgent(s.ExtDir)))
}

// copyFile copies src to dst with mode through a temporary file and a
// rename, so a running dst binary is replaced rather than rewritten.
func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	data, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(dst, data, mode)
}

// RenderConfig returns the agent config to install: the bundled config
// (a JSON object) with every path value under a relocated directory moved
// under the layout root, then overlay (a JSON object, may be nil) merged
// over it, objects recursively, other values replaced.
func RenderConfig(bundled []byte, l Layout, overlay []byte) ([]byte, error) {
	var cfg map[string]any
	if err := json.Unmarshal(serdejson.TrimBOM(bundled), &cfg); err != nil || cfg == nil {
		return nil, fmt.Errorf("setup: bundled config is not a JSON object: %v", err)
	}
	for k, v := range cfg {
		if str, ok := v.(string); ok {
			cfg[k] = l.Relocate(str)
		}
	}
	if len(bytes.TrimSpace(overlay)) > 0 {
		var ov map[string]any
		if err := json.Unmarshal(overlay, &ov); err != nil || ov == nil {
			return nil, fmt.Errorf("setup: config overlay is not a JSON object: %v", err)
		}
		mergeJSON(cfg, ov)
	}
	out, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

func mergeJSON(dst, src map[string]any) {
	for k, v := range src {
		if sv, ok := v.(map[string]any); ok {
			if dv, ok := dst[k].(map[string]any); ok {
				mergeJSON(dv, sv)
				continue
			}
		}
		dst[k] = v
	}
}

// StatusJSONPath is the agent's status.json according to the installed
// config's statusFolder, defaulting to <LogDir>/status.json.
func StatusJSONPath(l Layout) string {
	dir := l.LogDir()
	if data, err := os.ReadFile(l.AgentConfig()); err == nil {
		var cfg struct {
			StatusFolder string `json:"statusFolder"`
		}
		if json.Unmarshal(data, &cfg) == nil && cfg.StatusFolder != "" {
			dir = cfg.StatusFolder
		}
	}
	return filepath.Join(dir, "status.json")
}

// Install stops the service, copies the bundled binary (0755), config
// (0644, relocated and overlaid), eBPF object, man page and unit file
// (0644) into place, enables and starts the service, and then requires the
// agent to stay up for Opts.ServiceSettle. Any failure to put the binary,
// config or unit in place, to start, or to stay up is returned.
func (s *Setup) Install(ctx context.Context) error {
	log := s.Log
	if err := s.Service.Stop(); err != nil {
		log.Info("stop before install", "err", err)
	}
	ver, err := s.BundledVersion(ctx)
	if err != nil {
		return fmt.Errorf("setup install: bundled agent unusable: %w", err)
	}
	if err := copyFile(s.ext(bundledAgent(s.ExtDir)), s.Layout.AgentBinary(), 0o755); err != nil {
		return fmt.Errorf("setup install: agent binary: %w", err)
	}
	bundledCfg, err := os.ReadFile(s.ext(BundledConfig))
	if err != nil {
		return fmt.Errorf("setup install: bundled config: %w", err)
	}
	var overlay []byte
	if s.Opts.ConfigOverlay != "" {
		if overlay, err = os.ReadFile(s.Opts.ConfigOverlay); err != nil {
			return fmt.Errorf("setup install: config overlay: %w", err)
		}
	}
	cfg, err := RenderConfig(bundledCfg, s.Layout, overlay)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(s.Layout.AgentConfig()), 0o755); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(s.Layout.AgentConfig(), cfg, 0o644); err != nil {
		return fmt.Errorf("setup install: config: %w", err)
	}
	if _, err := os.Stat(s.ext(BundledEBPF)); err == nil {
		if err := copyFile(s.ext(BundledEBPF), s.Layout.EBPFObject(), 0o644); err != nil {
			return fmt.Errorf("setup install: eBPF object: %w", err)
		}
	} else {
		log.Warn("bundle has no eBPF object", "path", s.ext(BundledEBPF))
	}
	if _, err := os.Stat(s.ext(BundledManPage)); err == nil {
		if err := copyFile(s.ext(BundledManPage), s.Layout.ManPage(), 0o644); err != nil {
			log.Warn("man page not installed", "err", err)
		}
	}
	tmpl, err := os.ReadFile(s.ext(BundledUnit))
	if err != nil {
		return fmt.Errorf("setup install: bundled unit: %w", err)
	}
	if err := os.MkdirAll(s.Layout.UnitDir(), 0o755); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(s.Layout.UnitFile(), RenderUnit(tmpl, s.Layout), 0o644); err != nil {
		return fmt.Errorf("setup install: unit: %w", err)
	}
	for _, d := range []string{s.Layout.LogDir(), s.Layout.StateDir()} {
		os.MkdirAll(d, 0o755)
	}
	if s.Service.Kind() == "supervisor" {
		if err := copyFile(s.SelfExe, s.Layout.SupervisorBinary(), 0o755); err != nil {
			return fmt.Errorf("setup install: supervisor: %w", err)
		}
	}
	if err := s.Service.Reload(); err != nil {
		log.Warn("daemon-reload failed", "err", err)
	}
	if err := s.Service.Enable(); err != nil {
		log.Warn("enable failed", "err", err)
	}
	if err := s.Service.Start(); err != nil {
		return fmt.Errorf("setup install: start: %w", err)
	}
	if err := s.waitUp(ctx); err != nil {
		return fmt.Errorf("setup install: agent %s: %w", ver, err)
	}
	log.Info("agent installed", "version", ver, "service", s.Service.Kind())
	return nil
}

// waitUp requires the service to be active throughout Opts.ServiceSettle.
func (s *Setup) waitUp(ctx context.Context) error {
	settle := s.Opts.ServiceSettle
	step := settle / 10
	if step < 50*time.Millisecond {
		step = 50 * time.Millisecond
	}
	deadline := time.Now().Add(settle)
	for {
		if !s.Service.Active() {
			return errors.New("did not stay running after start")
		}
		if !time.Now().Before(deadline) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(step):
		}
	}
}

// Backup copies the installed binary, config and eBPF object into
// <ext>/ProxyAgent/ProxyAgent/Backup/Package and the unit file and man page
// into Backup/. With nothing installed it does nothing.
func (s *Setup) Backup() error {
	if _, err := os.Stat(s.Layout.AgentBinary()); err != nil {
		s.Log.Info("nothing installed to back up")
		return nil
	}
	pkg := s.ext(BackupPackageDir)
	files := []struct {
		src, dst string
		mode     os.FileMode
		required bool
	}{
		{s.Layout.AgentBinary(), filepath.Join(pkg, AgentBinaryName), 0o755, true},
		{s.Layout.AgentConfig(), filepath.Join(pkg, "proxy-agent.json"), 0o644, false},
		{s.Layout.EBPFObject(), filepath.Join(pkg, "ebpf_cgroup.o"), 0o644, false},
		{s.Layout.UnitFile(), filepath.Join(s.ext(BackupDir), UnitName), 0o644, false},
		{s.Layout.ManPage(), filepath.Join(s.ext(BackupDir), "azure-proxy-agent.8"), 0o644, false},
	}
	for _, f := range files {
		if _, err := os.Stat(f.src); err != nil && !f.required {
			continue
		}
		if err := copyFile(f.src, f.dst, f.mode); err != nil {
			return fmt.Errorf("setup backup: %w", err)
		}
	}
	s.Log.Info("backup taken", "dir", s.ext(BackupDir))
	return nil
}

// HasBackup reports whether a backup of a previous agent exists.
func (s *Setup) HasBackup() bool {
	_, err := os.Stat(filepath.Join(s.ext(BackupPackageDir), AgentBinaryName))
	return err == nil
}

// Restore reinstalls the backed-up agent, starts it and deletes the
// backup. It returns ErrNoBackup when there is none.
func (s *Setup) Restore(ctx context.Context) error {
	if !s.HasBackup() {
		return ErrNoBackup
	}
	s.Service.Stop()
	pkg := s.ext(BackupPackageDir)
	files := []struct {
		src, dst string
		mode     os.FileMode
	}{
		{filepath.Join(pkg, AgentBinaryName), s.Layout.AgentBinary(), 0o755},
		{filepath.Join(pkg, "proxy-agent.json"), s.Layout.AgentConfig(), 0o644},
		{filepath.Join(pkg, "ebpf_cgroup.o"), s.Layout.EBPFObject(), 0o644},
		{filepath.Join(s.ext(BackupDir), UnitName), s.Layout.UnitFile(), 0o644},
		{filepath.Join(s.ext(BackupDir), "azure-proxy-agent.8"), s.Layout.ManPage(), 0o644},
	}
	for _, f := range files {
		if _, err := os.Stat(f.src); err != nil {
			continue
		}
		if err := copyFile(f.src, f.dst, f.mode); err != nil {
			return fmt.Errorf("setup restore: %w", err)
		}
	}
	s.Service.Reload()
	s.Service.Enable()
	if err := s.Service.Start(); err != nil {
		return fmt.Errorf("setup restore: start: %w", err)
	}
	s.Log.Info("previous agent restored")
	return s.Purge()
}

// Purge deletes the backup.
func (s *Setup) Purge() error {
	return os.RemoveAll(s.ext(BackupDir))
}

// Uninstall stops and disables the service, removes the unit file,
// reloads the manager and removes the agent's pinned eBPF redirect. The
// binary, config and eBPF object stay (upstream's "service" mode). It tries
// every step and returns their errors joined.
func (s *Setup) Uninstall() error {
	var errs []error
	errs = append(errs, s.Service.Stop(), s.Service.Disable())
	if err := os.Remove(s.Layout.UnitFile()); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	errs = append(errs, s.Service.Reload())
	// With the agent gone for good, its pinned redirect would refuse every
	// metadata connection from now on: detach and remove it. (While the
	// agent is only restarting, the pins stay, so nothing goes direct.)
	errs = append(errs, redirector.RemovePinned(s.pinDir()))
	// The container listener's address goes too (the agent leaves it on lo
	// across restarts, so containers are refused rather than let through).
	if e, err := s.endpoints(); err == nil && e.ContainerListener.IsValid() {
		errs = append(errs, redirector.RemoveLoopbackAddr(e.ContainerListener.Addr()))
	}
	return errors.Join(errs...)
}

// RemovePackage deletes what install copied besides the unit (which
// Uninstall removes): the agent binary, its config, the eBPF object and
// the man page (upstream's "uninstall package"). Missing files are fine.
func (s *Setup) RemovePackage() error {
	var errs []error
	for _, p := range []string{s.Layout.AgentBinary(), s.Layout.AgentConfig(), s.Layout.EBPFObject(), s.Layout.ManPage()} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// aggregateAccess returns how the monitor may ask rawURL for the
// aggregate status. For a URL naming a WireServer address (the installed
// config's, or Azure's own whatever the config says): redirected checks
// the agent's pinned redirect for that address (true while the kernel
// hands connections to it to the agent) and dial is nil (dialRedirected:
// the connection must have been redirected). For any other URL
// (GPA_AGGREGATE_STATUS_URL pointing at a listener or a test's stand-in
// agent), which cannot reach the real WireServer, the URL is always asked
// first, as upstream asks: redirected always says yes, and dial refuses
// only a connection whose peer is a WireServer address (a host name that
// resolves to it). An unparsable URL gets nil for both and is never
// reached.
func (s *Setup) aggregateAccess(rawURL string) (redirected func() bool, dial func(ctx context.Context, network, addr string) (net.Conn, error)) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, nil
	}
	// The WireServer's addresses: the installed config's and Azure's own
	// (a config that moves it leaves the real one where it is).
	wireServers := []netip.AddrPort{msp.DefaultEndpoints().WireServer}
	if e, err := s.endpoints(); err == nil && e.WireServer != wireServers[0] {
		wireServers = append(wireServers, e.WireServer)
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "80"
	}
	ap, err := netip.ParseAddrPort(net.JoinHostPort(host, port))
	if err == nil && slices.Contains(wireServers, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())) {
		return func() bool {
			ok, err := redirector.Redirects(s.pinDir(), ap)
			return err == nil && ok
		}, nil
	}
	return func() bool { return true }, dialAvoiding(wireServers...)
}

// endpoints are the installed agent's addresses: from its config, else the
// defaults.
func (s *Setup) endpoints() (msp.Endpoints, error) {
	cfg, err := config.Load(s.Layout.AgentConfig())
	if err != nil {
		cfg = config.Default()
	}
	return cfg.Endpoints()
}

// pinDir is the bpffs directory the installed agent pins its redirect
// under: bpfPinPath from the installed config, else the default.
func (s *Setup) pinDir() string {
	if cfg, err := config.Load(s.Layout.AgentConfig()); err == nil && cfg.BpfPinPath != "" {
		return cfg.BpfPinPath
	}
	return redirector.DefaultPinDir
}
