// Package waagentsim plays the Azure Linux guest agent's (waagent's) part
// towards a VM extension handler, as exactly as tests and the demo need:
//
//   - Unpack does what waagent's download() and initialize() do with a
//     package zip: unzip into <lib>/<Name>-<Version>, make every file
//     owner-executable, create config/ and status/ (0700) and write
//     HandlerEnvironment.json with waagent's own code;
//   - WriteSettings writes config/<seq>.settings as update_settings does;
//   - Run runs one HandlerManifest command like launch_command: through
//     /bin/sh from the handler root, in a new session, with waagent's
//     environment variables, killed as a process group on waagent's
//     timeout;
//   - ParseStatus, ReadHeartbeat, CheckEvents and ReadManifest judge the
//     handler's files with waagent's own parser.
//
// The judging is done by waagent's Python code (the Debian waagent
// package, azurelinuxagent, imported by Python = /usr/bin/python3) through
// an embedded shim fed to the interpreter on standard input, so no file is
// left behind. Available says whether that code can be imported.
//
// The real waagent drives the extension end to end in e2e.TestRealWaagent
// (internal/e2eenv's Waagent against hostsim's fabric). This package stays
// for what the real agent cannot do in a test: run one handler command on
// demand and observe it (exit codes, timings), force waagent's command
// time-outs and kill the process group, replay an interrupted upgrade in
// waagent's exact order, and judge a handler's files with waagent's parser
// without a whole VM.
package waagentsim

import (
	"archive/zip"
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/opengpa/gpa/proxyagent/msp"

	"github.com/opengpa/gpa/extension"
)

// Python is the interpreter of the Debian waagent package.
const Python = "/usr/bin/python3"

//go:embed waagent_shim.py
var shimSource string

// Timeouts are waagent's command timeouts (exthandlers.py).
var Timeouts = map[string]time.Duration{
	"install": 900 * time.Second, "update": 900 * time.Second, "disable": 900 * time.Second,
	"enable": 300 * time.Second, "uninstall": 300 * time.Second, "reset": 300 * time.Second,
}

// Available returns nil when waagent's Python package can be imported with
// Python, else an error saying why not.
func Available() error {
	out, err := exec.Command(Python, "-c", "import azurelinuxagent.ga.exthandlers").CombinedOutput()
	if err != nil {
		return fmt.Errorf("waagentsim: waagent's python package not importable with %s: %v: %s", Python, err, bytes.TrimSpace(out))
	}
	return nil
}

// Shim runs the embedded shim in mode with args and decodes its JSON
// output into out (a string output is stored as is when out is *string).
// A failing shim is an error quoting its standard error.
func Shim(ctx context.Context, out any, mode string, args ...string) error {
	cmd := exec.CommandContext(ctx, Python, append([]string{"-", mode}, args...)...)
	cmd.Stdin = strings.NewReader(shimSource)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("waagentsim: shim %s %v: %v: %s", mode, args, err, bytes.TrimSpace(stderr.Bytes()))
	}
	if s, ok := out.(*string); ok {
		*s = stdout.String()
		return nil
	}
	if err := json.Unmarshal(stdout.Bytes(), out); err != nil {
		return fmt.Errorf("waagentsim: shim %s output: %v: %q", mode, err, stdout.Bytes())
	}
	return nil
}

// Agent is waagent on one (simulated) machine. Only LibDir and LogDir are
// required.
type Agent struct {
	// LibDir is waagent's /var/lib/waagent, where handlers are unpacked.
	LibDir string
	// LogDir is the handler's log folder (/var/log/azure/<Name>); its
	// events/ subfolder is the events folder.
	LogDir string
	// Env is the environment every command starts from; nil: os.Environ().
	// waagent's variables are added after it (later entries win).
	Env []string
	// Start starts a prepared command (it already has Setsid set); nil:
	// cmd.Start. Tests use it to start commands in a namespace or cgroup.
	Start func(*exec.Cmd) error
	// Timeouts override the package's Timeouts per command; nil: Timeouts.
	Timeouts map[string]time.Duration
}

// Dir returns the handler directory waagent uses for name and version.
func (a *Agent) Dir(name, version string) string {
	return filepath.Join(a.LibDir, name+"-"+version)
}

// Unpack unpacks the package zip for name and version the way waagent's
// download() and initialize() do and returns the handler directory: every
// file with its zip permissions plus u+x, config/ and status/ 0700, and
// HandlerEnvironment.json as create_handler_env writes it (log, config,
// status, heartbeat and events folders).
func (a *Agent) Unpack(zipPath, name, version string) (string, error) {
	base := a.Dir(name, version)
	zr, err := zip.OpenReader(zipPath)
	if err != nil {
		return "", fmt.Errorf("waagentsim: %w", err)
	}
	defer zr.Close()
	for _, f := range zr.File {
		dst := filepath.Join(base, filepath.FromSlash(f.Name))
		if !strings.HasPrefix(dst, base+string(filepath.Separator)) {
			return "", fmt.Errorf("waagentsim: zip entry %q escapes the handler directory", f.Name)
		}
		if f.FileInfo().IsDir() {
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return "", fmt.Errorf("waagentsim: %w", err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return "", fmt.Errorf("waagentsim: %w", err)
		}
		rc, err := f.Open()
		if err != nil {
			return "", fmt.Errorf("waagentsim: %s: %w", f.Name, err)
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return "", fmt.Errorf("waagentsim: %s: %w", f.Name, err)
		}
		// initialize(): u+x on every file.
		if err := os.WriteFile(dst, data, f.Mode().Perm()|0o100); err != nil {
			return "", fmt.Errorf("waagentsim: %w", err)
		}
		if err := os.Chmod(dst, f.Mode().Perm()|0o100); err != nil {
			return "", fmt.Errorf("waagentsim: %w", err)
		}
	}
	for _, d := range []string{"config", "status"} {
		if err := os.MkdirAll(filepath.Join(base, d), 0o700); err != nil {
			return "", fmt.Errorf("waagentsim: %w", err)
		}
	}
	if err := os.MkdirAll(filepath.Join(a.LogDir, "events"), 0o755); err != nil {
		return "", fmt.Errorf("waagentsim: %w", err)
	}
	var env string
	if err := Shim(context.Background(), &env, "handler-env", name, base, a.LogDir); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(base, extension.HandlerEnvironmentFile), []byte(env), 0o644); err != nil {
		return "", fmt.Errorf("waagentsim: %w", err)
	}
	return base, nil
}

// WriteSettings writes config/<seq>.settings under the handler directory
// as update_settings does ("" is the empty file waagent writes for a
// handler without settings).
func WriteSettings(extDir string, seq int, content string) error {
	p := extension.SettingsPath(filepath.Join(extDir, "config"), seq)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		return fmt.Errorf("waagentsim: %w", err)
	}
	return nil
}

// StatusPath is the status file waagent reads for seq.
func StatusPath(extDir string, seq int) string {
	return extension.StatusPath(filepath.Join(extDir, "status"), seq)
}

// Manifest is HandlerManifest.json as waagent's HandlerManifest reads it.
type Manifest struct {
	Install                    string `json:"install"`
	Uninstall                  string `json:"uninstall"`
	Update                     string `json:"update"`
	Enable                     string `json:"enable"`
	Disable                    string `json:"disable"`
	ReportHeartbeat            bool   `json:"reportHeartbeat"`
	UpdateWithInstall          bool   `json:"updateWithInstall"`
	ContinueOnUpdateFailure    bool   `json:"continueOnUpdateFailure"`
	SupportsMultipleExtensions bool   `json:"supportsMultipleExtensions"`
	Services                   []any  `json:"services"`
}

// Command returns the manifest's command line for verb ("" if none).
func (m Manifest) Command(verb string) string {
	switch verb {
	case "install":
		return m.Install
	case "uninstall":
		return m.Uninstall
	case "update":
		return m.Update
	case "enable":
		return m.Enable
	case "disable":
		return m.Disable
	}
	return ""
}

// ReadManifest reads extDir/HandlerManifest.json with waagent's code.
func ReadManifest(extDir string) (Manifest, error) {
	var m Manifest
	err := Shim(context.Background(), &m, "manifest", filepath.Join(extDir, "HandlerManifest.json"))
	return m, err
}

// Result is one finished (or killed) handler command.
type Result struct {
	Verb     string
	ExitCode int // -1 when killed on timeout or cancellation
	TimedOut bool
	Output   string // standard output and error, combined
	Elapsed  time.Duration
}

// Run runs the manifest's command for verb in extDir like waagent's
// launch_command: `/bin/sh -c <extDir>/<command>` from extDir, in a new
// session, with the environment Env plus waagent's variables
// (AZURE_GUEST_AGENT_EXTENSION_PATH, _VERSION, _WIRE_PROTOCOL_ADDRESS,
// ConfigSequenceNumber, _SUPPORTED_FEATURES) plus extra. It waits for the
// command; on waagent's timeout for verb, or when ctx ends, it kills the
// whole process group and reports exit code -1. Processes the command
// detaches into their own session keep running. The error is only for a
// command that could not be started or a manifest that could not be read.
func (a *Agent) Run(ctx context.Context, extDir, verb string, seq int, extra map[string]string) (Result, error) {
	res := Result{Verb: verb, ExitCode: -1}
	man, err := ReadManifest(extDir)
	if err != nil {
		return res, err
	}
	cmdline := man.Command(verb)
	if cmdline == "" {
		return res, fmt.Errorf("waagentsim: manifest has no %s command", verb)
	}
	full := filepath.Join(extDir, strings.TrimLeft(cmdline, "/"))
	version := filepath.Base(extDir)
	if i := strings.LastIndex(version, "-"); i >= 0 {
		version = version[i+1:]
	}
	cmd := exec.Command("/bin/sh", "-c", full)
	cmd.Dir = extDir
	env := a.Env
	if env == nil {
		env = os.Environ()
	}
	env = append(append([]string{}, env...),
		extension.EnvExtensionPath+"="+extDir,
		extension.EnvExtensionVersion+"="+version,
		extension.EnvWireProtocolAddress+"="+msp.WireServerAddr.Addr().String(),
		extension.EnvSequenceNumber+"="+strconv.Itoa(seq),
		extension.EnvSupportedFeatures+`=[{"Key": "ExtensionTelemetryPipeline", "Value": "1.0"}]`,
	)
	for k, v := range extra {
		env = append(env, k+"="+v)
	}
	cmd.Env = env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	start := a.Start
	if start == nil {
		start = (*exec.Cmd).Start
	}
	began := time.Now()
	if err := start(cmd); err != nil {
		return res, fmt.Errorf("waagentsim: start %s: %w", verb, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	timeout := Timeouts[verb]
	if d, ok := a.Timeouts[verb]; ok {
		timeout = d
	}
	if timeout <= 0 {
		timeout = 300 * time.Second
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-done:
		res.ExitCode = cmd.ProcessState.ExitCode()
	case <-timer.C:
		res.TimedOut = true
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	case <-ctx.Done():
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	res.Elapsed = time.Since(began)
	res.Output = strings.TrimSpace(out.String())
	return res, nil
}

// Substatus is one substatus as waagent parsed it.
type Substatus struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// Status is one status file as waagent's collect_ext_status reads it:
// read and json.loads, parse_ext_status, the size check. A malformed file
// has Status "error", Code 1012 and ParseError set; an unreadable one has
// ReadError set.
type Status struct {
	Path       string      `json:"path"`
	Status     string      `json:"status"`
	Code       int         `json:"code"`
	Message    string      `json:"message"`
	Operation  string      `json:"operation"`
	ParseError string      `json:"parseError"`
	ReadError  string      `json:"readError"`
	TooBig     bool        `json:"tooBig"`
	Size       int         `json:"size"`
	Substatus  []Substatus `json:"substatus"`
}

// MalformedCode is waagent's PluginSettingsStatusInvalid, the code it
// reports for a status file it cannot parse.
const MalformedCode = 1012

// Rejected returns nil when waagent accepts the file as a status, else an
// error saying why not (read error, malformed (1012), too big).
func (s Status) Rejected() error {
	switch {
	case s.ReadError != "":
		return fmt.Errorf("waagent cannot read %s: %s", s.Path, s.ReadError)
	case s.ParseError != "" || s.Code == MalformedCode:
		return fmt.Errorf("waagent rejects %s (code %d): %s", s.Path, s.Code, s.ParseError)
	case s.TooBig:
		return fmt.Errorf("waagent rejects %s: larger than its limit (%d bytes)", s.Path, s.Size)
	}
	return nil
}

// ParseStatus parses the status file at path with waagent's code. The
// error is for a shim that could not run; what waagent thinks of the file
// is in the Status (see Rejected).
func ParseStatus(path string) (Status, error) {
	var res []Status
	if err := Shim(context.Background(), &res, "status", path); err != nil {
		return Status{}, err
	}
	if len(res) != 1 {
		return Status{}, errors.New("waagentsim: shim returned no status")
	}
	return res[0], nil
}

// Heartbeat is heartbeat.log as collect_heartbeat reads it.
type Heartbeat struct {
	Responsive bool           `json:"responsive"`
	Heartbeat  map[string]any `json:"heartbeat"`
}

// ReadHeartbeat reads the heartbeat file at path with waagent's code.
func ReadHeartbeat(path string) (Heartbeat, error) {
	var hb Heartbeat
	err := Shim(context.Background(), &hb, "heartbeat", path)
	return hb, err
}

// Events is the verdict of waagent's telemetry event collector on an
// events folder.
type Events struct {
	Files    int      `json:"files"`
	Valid    int      `json:"valid"`
	Invalid  []string `json:"invalid"`
	BadNames []string `json:"badNames"`
}

// CheckEvents validates every event file in dir with waagent's code.
func CheckEvents(dir string) (Events, error) {
	var ev Events
	err := Shim(context.Background(), &ev, "events", dir)
	return ev, err
}
