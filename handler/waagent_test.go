package handler

// Conformance tests that play waagent's part exactly: the package is built
// with packaging/package.sh, unzipped into <lib>/<Name>-<Ver> with every
// file made owner-executable, config/ and status/ created 0700,
// HandlerEnvironment.json written by waagent's own code shape, the
// environment variables waagent sets, commands run through a shell from
// the handler root in a new session and killed as a process group on
// waagent's timeouts, and every status, heartbeat and event file judged by
// waagent's own parser (package internal/waagentsim, which runs waagent's
// Python code under /usr/bin/python3).

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opengpa/gpa/extension"
	"github.com/opengpa/gpa/internal/testenv"
	"github.com/opengpa/gpa/internal/testsupport"
	"github.com/opengpa/gpa/internal/waagentsim"
	"github.com/opengpa/gpa/proxyagent/prereq"
	"golang.org/x/sys/unix"
)

var (
	pkgOnce  sync.Once
	pkgDir   string
	pkgErr   error
	realAgnt bool
)

// packages builds, once per test binary, the extension zip for versions
// 1.0.0 and 1.0.1 with packaging/package.sh. The agent inside is the real
// ./cmd/azure-proxy-agent when that package exists and builds, else the
// test-only stand-in in testdata/standin-agent (forceStandin always uses
// the stand-in, for scenarios that need its failure knobs).
func packages(t *testing.T) string {
	t.Helper()
	pkgOnce.Do(func() {
		pkgDir, pkgErr = os.MkdirTemp("", "gpa-ext-pkg-")
		if pkgErr != nil {
			return
		}
		for _, ver := range []string{"1.0.0", "1.0.1"} {
			ld := "-X github.com/opengpa/gpa/internal/version.Version=" + ver
			built := filepath.Join(pkgDir, "build-"+ver)
			// One go build for all main packages (linked in parallel).
			pkgs := []string{"./cmd/ProxyAgentExt", "./handler/testdata/standin-agent"}
			real := false
			if _, err := os.Stat("../cmd/azure-proxy-agent"); err == nil {
				real = goBuild(ld, built+"/", append(pkgs, "./cmd/azure-proxy-agent")...) == nil
			}
			if !real {
				if pkgErr = goBuild(ld, built+"/", pkgs...); pkgErr != nil {
					return
				}
			}
			realAgnt = real
			for _, kind := range []string{"auto", "standin"} {
				bin := filepath.Join(pkgDir, kind, ver, "bin")
				out := filepath.Join(pkgDir, kind, ver)
				os.MkdirAll(bin, 0o755)
				agent := filepath.Join(built, "standin-agent")
				if kind == "auto" && real {
					agent = filepath.Join(built, "azure-proxy-agent")
				}
				if pkgErr = os.Link(filepath.Join(built, "ProxyAgentExt"), filepath.Join(bin, "ProxyAgentExt")); pkgErr != nil {
					return
				}
				if pkgErr = os.Link(agent, filepath.Join(bin, "azure-proxy-agent")); pkgErr != nil {
					return
				}
				cmd := exec.Command("bash", "../packaging/package.sh", ver, bin, out)
				if b, err := cmd.CombinedOutput(); err != nil {
					pkgErr = fmt.Errorf("package.sh: %v\n%s", err, b)
					return
				}
			}
		}
	})
	if pkgErr != nil {
		t.Fatal(pkgErr)
	}
	return pkgDir
}

func goBuild(ldflags, out string, pkgs ...string) error {
	cmd := exec.Command("go", append([]string{"build", "-ldflags", ldflags, "-o", out}, pkgs...)...)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %v: %v\n%s", pkgs, err, b)
	}
	return nil
}

func TestMain(m *testing.M) {
	code := m.Run()
	if pkgDir != "" {
		os.RemoveAll(pkgDir)
	}
	os.Exit(code)
}

func requireWaagent(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("waagent conformance builds the extension and agent; skipped with -short")
	}
	if err := waagentsim.Available(); err != nil {
		t.Skip(err)
	}
	for _, tool := range []string{"zip", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
}

// vm is one simulated machine under its own GPA_ROOT.
type vm struct {
	t       *testing.T
	root    string
	lib     string
	logDir  string
	listen  string
	env     []string
	kind    string // "auto" or "standin"
	overlay string
	wa      *waagentsim.Agent
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func newVM(t *testing.T, kind string, osRelease string) *vm {
	requireWaagent(t)
	packages(t)
	root := t.TempDir()
	v := &vm{t: t, root: root, lib: filepath.Join(root, "var/lib/waagent"),
		logDir: filepath.Join(root, "var/log/azure", HandlerName), listen: freePort(t), kind: kind}
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/os-release"), []byte(osRelease), 0o644)
	os.MkdirAll(filepath.Join(v.logDir, "events"), 0o755)
	os.MkdirAll(v.lib, 0o755)
	// Addresses go to loopback ports nothing listens on; the cgroup and
	// bpffs paths are plain directories, so a real agent attaches nothing.
	unused := freePort(t)
	overlay := map[string]any{
		"listenAddress": v.listen, "wireServerAddress": unused, "imdsAddress": unused, "hostGAPluginAddress": unused,
		"cgroupRoot": filepath.Join(root, "cgroup"), "bpfPinPath": filepath.Join(root, "bpffs"),
		"pollKeyStatusIntervalInSeconds": 1, "consoleLog": filepath.Join(root, "console.log"),
	}
	b, _ := json.Marshal(overlay)
	v.overlay = filepath.Join(root, "overlay.json")
	os.WriteFile(v.overlay, b, 0o644)
	v.env = []string{
		EnvRoot + "=" + root,
		EnvConfigOverlay + "=" + v.overlay,
		EnvMonitorInterval + "=200ms",
		EnvHeartbeatInterval + "=1s",
		EnvRetryInterval + "=100ms",
		EnvServiceSettle + "=1s",
		EnvServiceManager + "=supervisor",
		EnvAggregateURL + "=http://" + v.listen + "/gpa-aggregated-status",
		EnvHTTPTimeout + "=2s",
		// No upgrade retries within a test: a failed install must show as
		// a failure here, not be healed by the monitor's later retry
		// (monitor_test covers the retry).
		EnvUpdateRetryInterval + "=1h",
	}
	v.wa = &waagentsim.Agent{LibDir: v.lib, LogDir: v.logDir, Env: append(os.Environ(), v.env...)}
	t.Cleanup(v.killAll)
	t.Cleanup(func() { v.dumpLogsOnFailure(t) })
	return v
}

// dumpLogsOnFailure logs the tail of every handler, monitor and supervisor
// log of a failed test (the VM root is deleted afterwards), so a failure
// in CI can be diagnosed from its output alone; GPA_TEST_DUMP_LOGS=1 logs
// them for passing tests too.
func (v *vm) dumpLogsOnFailure(t *testing.T) {
	if !t.Failed() && os.Getenv("GPA_TEST_DUMP_LOGS") == "" {
		return
	}
	const tail = 8 << 10
	for _, p := range []string{
		filepath.Join(v.logDir, HandlerLogName),
		filepath.Join(v.logDir, MonitorLogName),
		filepath.Join(v.layout().LogDir(), "supervisor.log"),
	} {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Logf("%s: %v", p, err)
			continue
		}
		if len(data) > tail {
			data = data[len(data)-tail:]
		}
		t.Logf("--- %s (last %d bytes) ---\n%s", p, len(data), data)
	}
}

const ubuntu2204 = "NAME=\"Ubuntu\"\nVERSION_ID=\"22.04\"\nID=ubuntu\n"

// killAll kills every process whose executable lives under the VM root,
// again until none is left (a supervisor may start one in between).
func (v *vm) killAll() {
	v.t.Helper()
	testsupport.WaitFor(v.t, "every process under the VM root to end", func() bool {
		left := false
		for _, p := range ListProcs() {
			if strings.HasPrefix(p.Exe, v.root+"/") {
				syscall.Kill(p.PID, syscall.SIGKILL)
				left = true
			}
		}
		return !left
	})
}

func (v *vm) zipPath(ver string) string {
	return filepath.Join(pkgDir, v.kind, ver, HandlerName+"-"+ver+".zip")
}

// download unpacks a version the way waagent's download() and
// initialize() do and returns the handler directory.
func (v *vm) download(ver string) string {
	v.t.Helper()
	base, err := v.wa.Unpack(v.zipPath(ver), HandlerName, ver)
	if err != nil {
		v.t.Fatal(err)
	}
	return base
}

// settings writes config/<seq>.settings as update_settings does ("" is
// the empty file waagent writes for a handler without settings).
func (v *vm) settings(base string, seq int, content string) {
	if err := waagentsim.WriteSettings(base, seq, content); err != nil {
		v.t.Fatal(err)
	}
}

// run executes one manifest command like launch_command and returns the
// exit code (-1 on waagent timeout).
func (v *vm) run(base, verb string, seq int, extra map[string]string) int {
	t := v.t
	res, err := v.wa.Run(context.Background(), base, verb, seq, extra)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s %s (seq %d): exit %d %s", filepath.Base(base), verb, seq, res.ExitCode, res.Output)
	return res.ExitCode
}

// waStatus is one status file as waagent parsed it.
type waStatus = waagentsim.Status

// parseStatus judges a status file with waagent's parser and fails on any
// 1012 (malformed) or read error.
func (v *vm) parseStatus(base string, seq int) waStatus {
	v.t.Helper()
	return v.parseStatusFile(waagentsim.StatusPath(base, seq))
}

func (v *vm) parseStatusFile(path string) waStatus {
	t := v.t
	t.Helper()
	r, err := waagentsim.ParseStatus(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Rejected(); err != nil {
		t.Fatalf("%v: %+v", err, r)
	}
	return r
}

// waitStatus polls until pred holds for the status waagent parses.
func (v *vm) waitStatus(base string, seq int, what string, pred func(extension.Status) bool) waStatus {
	t := v.t
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last extension.Status
	for time.Now().Before(deadline) {
		p := extension.StatusPath(filepath.Join(base, "status"), seq)
		data, _ := os.ReadFile(p)
		it, err := extension.ReadStatus(p)
		if err == nil {
			last = it.Status
			if pred(it.Status) {
				// Judge the very bytes that matched: the monitor keeps rewriting.
				snap := filepath.Join(t.TempDir(), "snapshot.status")
				os.WriteFile(snap, data, 0o644)
				if it2, err := extension.ReadStatus(snap); err == nil && pred(it2.Status) {
					return v.parseStatusFile(snap)
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s; last status %s/%d %q", what, last.Status, last.Code, msgOf(last))
	return waStatus{}
}

func msgOf(s extension.Status) string {
	if s.FormattedMessage == nil {
		return ""
	}
	return s.FormattedMessage.Message
}

func healthyFor(version string) func(extension.Status) bool {
	return func(s extension.Status) bool {
		return s.Status == "success" && len(s.Substatus) == 3 && strings.Contains(msgOf(extension.Status{FormattedMessage: s.Substatus[1].FormattedMessage}), `"version":"`+version+`"`)
	}
}

// reported returns, for the full three-substatus shape, whether the
// agent's own overall status is SUCCESS.
func reported(t *testing.T, s waStatus) (agentVersion, agentStatus string) {
	t.Helper()
	if len(s.Substatus) != 3 {
		t.Fatalf("%d substatuses", len(s.Substatus))
	}
	var ps struct {
		Version        string `json:"version"`
		Status         string `json:"status"`
		KeyLatchStatus struct {
			States map[string]any `json:"states"`
		} `json:"keyLatchStatus"`
		EbpfProgramStatus map[string]any `json:"ebpfProgramStatus"`
	}
	if err := json.Unmarshal([]byte(s.Substatus[1].Message), &ps); err != nil {
		t.Fatalf("substatus[1] message is not JSON: %v", err)
	}
	if _, ok := ps.KeyLatchStatus.States["secureChannelState"]; !ok {
		t.Error("keyLatchStatus.states.secureChannelState missing")
	}
	if ps.EbpfProgramStatus == nil {
		t.Error("ebpfProgramStatus missing")
	}
	return ps.Version, ps.Status
}

func (v *vm) layout() Layout { return NewLayout(v.root) }

func (v *vm) supervisor() *Supervisor { return &Supervisor{Layout: v.layout(), Log: discardLog()} }

func (v *vm) monitors(base string) []Proc {
	own, _ := FindMonitors(filepath.Join(base, ExtBinaryName))
	return own
}

func bundledVersion(t *testing.T, base string) string {
	out, err := exec.Command(filepath.Join(base, bundledAgent(base)), "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

func mode(t *testing.T, p string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	return fi.Mode().Perm()
}

// TestWaagentLifecycle: fresh install + enable, repeated enable, new
// sequence number, reboot, upgrade 1.0.0 → 1.0.1 in waagent's order, and
// uninstall, on one simulated VM.
func TestWaagentLifecycle(t *testing.T) {
	t.Parallel()
	v := newVM(t, "auto", ubuntu2204)
	if realAgnt {
		t.Log("using the real ./cmd/azure-proxy-agent")
	} else {
		t.Log("using the STAND-IN agent (testdata/standin-agent): ./cmd/azure-proxy-agent missing or not building")
	}
	old := v.download("1.0.0")
	var monitorPID int

	t.Run("fresh install and enable", func(t *testing.T) {
		v.t = t
		v.settings(old, 0, "") // waagent's empty 0.settings
		if rc := v.run(old, "install", 0, map[string]string{extension.EnvUninstallExitCode: "NOT_RUN"}); rc != 0 {
			t.Fatalf("install exit %d", rc)
		}
		start := time.Now()
		if rc := v.run(old, "enable", 0, map[string]string{extension.EnvUninstallExitCode: "NOT_RUN"}); rc != 0 {
			t.Fatalf("enable exit %d", rc)
		}
		t.Logf("enable took %v", time.Since(start))
		// enable leaves a parseable status and a heartbeat behind at once:
		// waagent reads the heartbeat right after enable and would report
		// a missing one as an error (code -1) until the next enable.
		first := v.parseStatus(old, 0)
		hb0, err := waagentsim.ReadHeartbeat(filepath.Join(old, "heartbeat.log"))
		if err != nil {
			t.Fatalf("no heartbeat when enable exits: %v", err)
		}
		msg, _ := hb0.Heartbeat["formattedMessage"].(map[string]any)["message"].(string)
		if !hb0.Responsive || hb0.Heartbeat["status"] != "Ready" || hb0.Heartbeat["code"] != 0.0 || msg == "" {
			t.Errorf("heartbeat when enable exits: %+v", hb0)
		}
		if !realAgnt && first.Status != "transitioning" && first.Status != "success" {
			t.Errorf("first status %s", first.Status)
		}
		mons := v.monitors(old)
		if len(mons) != 1 {
			t.Fatalf("%d monitors", len(mons))
		}
		monitorPID = mons[0].PID
		// The monitor is a session leader: a killpg of enable's group cannot reach it.
		if sid, _ := unix.Getsid(monitorPID); sid != monitorPID {
			t.Errorf("monitor sid %d, want its own session %d", sid, monitorPID)
		}
		var st waStatus
		if realAgnt {
			st = v.waitStatus(old, 0, "full shape", func(s extension.Status) bool { return len(s.Substatus) == 3 })
			ver, agentStatus := reported(t, st)
			t.Logf("real agent reports %s %s; extension reports %s: %s", ver, agentStatus, st.Status, st.Message)
			if (st.Status == "success") != (agentStatus == "SUCCESS" && ver == "1.0.0") {
				t.Errorf("extension reports %s while the agent reports %s %s", st.Status, ver, agentStatus)
			}
		} else {
			st = v.waitStatus(old, 0, "success", healthyFor("1.0.0"))
			ver, agentStatus := reported(t, st)
			if ver != bundledVersion(t, old) || agentStatus != "SUCCESS" || st.Code != 0 {
				t.Errorf("reported %s/%s code %d", ver, agentStatus, st.Code)
			}
		}
		names := []string{SubConnectionSummary, SubAgentStatus, SubFailedAuthSummary}
		for i, s := range st.Substatus {
			if s.Name != names[i] {
				t.Errorf("substatus[%d] = %s, want %s", i, s.Name, names[i])
			}
		}
		if st.Operation != OperationEnable {
			t.Errorf("operation %q", st.Operation)
		}
		// Installed footprint under GPA_ROOT (conformance item 21).
		l := v.layout()
		for p, want := range map[string]os.FileMode{l.UnitFile(): 0o644, l.AgentBinary(): 0o755, l.AgentConfig(): 0o644} {
			if got := mode(t, p); got != want {
				t.Errorf("%s mode %v, want %v", p, got, want)
			}
		}
		if _, err := os.Stat(l.EBPFObject()); err != nil {
			t.Error(err)
		}
		sup := v.supervisor()
		if !sup.Enabled() || !sup.Active() {
			t.Errorf("service enabled=%v active=%v", sup.Enabled(), sup.Active())
		}
		var cfg map[string]any
		b, _ := os.ReadFile(l.AgentConfig())
		json.Unmarshal(b, &cfg)
		if cfg["listenAddress"] != v.listen || cfg["logFolder"] != l.LogDir() || cfg["cgroupRoot"] != filepath.Join(v.root, "cgroup") {
			t.Errorf("installed config not relocated/overlaid: %v", cfg)
		}
		if !realAgnt {
			fi1, err := os.Stat(filepath.Join(l.LogDir(), "status.json"))
			if err != nil {
				t.Fatal(err)
			}
			testsupport.WaitFor(t, "status.json to be refreshed", func() bool {
				fi2, err := os.Stat(filepath.Join(l.LogDir(), "status.json"))
				return err == nil && fi2.ModTime().After(fi1.ModTime())
			})
		}
		// Heartbeat and events as waagent reads them, once written.
		var hb waagentsim.Heartbeat
		testsupport.WaitFor(t, "a Ready heartbeat", func() bool {
			var err error
			hb, err = waagentsim.ReadHeartbeat(filepath.Join(old, "heartbeat.log"))
			return err == nil && hb.Heartbeat["status"] == "Ready"
		})
		if !hb.Responsive || hb.Heartbeat["status"] != "Ready" || hb.Heartbeat["code"] != 0.0 {
			t.Errorf("heartbeat %+v", hb)
		}
		var ev waagentsim.Events
		testsupport.WaitFor(t, "an event file", func() bool {
			var err error
			ev, err = waagentsim.CheckEvents(filepath.Join(v.logDir, "events"))
			return err == nil && ev.Files > 0
		})
		if ev.Files == 0 || ev.Valid == 0 || len(ev.Invalid) != 0 || len(ev.BadNames) != 0 {
			t.Errorf("events %+v", ev)
		}
	})

	t.Run("enable again with the same seq", func(t *testing.T) {
		v.t = t
		if rc := v.run(old, "enable", 0, nil); rc != 0 {
			t.Fatalf("enable exit %d", rc)
		}
		mons := v.monitors(old)
		if len(mons) != 1 || mons[0].PID != monitorPID {
			t.Errorf("monitors %v, want only %d", mons, monitorPID)
		}
		st := v.parseStatus(old, 0)
		if st.Message == enablingMessage {
			t.Error("repeated enable rewrote the status")
		}
	})

	t.Run("new seq with settings", func(t *testing.T) {
		v.t = t
		v.settings(old, 1, `{"runtimeSettings": [{"handlerSettings": {"publicSettings": {}}}]}`)
		if rc := v.run(old, "enable", 1, nil); rc != 0 {
			t.Fatalf("enable exit %d", rc)
		}
		// With the stand-in the agent is healthy, so never error; the real
		// agent may already have driven the state to error (truthfully).
		if st := v.parseStatus(old, 1); !realAgnt && st.Status != "transitioning" && st.Status != "success" {
			t.Errorf("seq 1 status %s", st.Status)
		}
		if realAgnt {
			v.waitStatus(old, 1, "monitor on seq 1", func(s extension.Status) bool { return len(s.Substatus) == 3 })
		} else {
			v.waitStatus(old, 1, "success on seq 1", healthyFor("1.0.0"))
		}
		if mons := v.monitors(old); len(mons) != 1 || mons[0].PID != monitorPID {
			t.Errorf("monitor restarted on a new seq: %v", mons)
		}
	})

	t.Run("reboot then enable with the same seq", func(t *testing.T) {
		v.t = t
		v.killAll() // power off: monitor, supervisor and agent are gone
		if rc := v.run(old, "enable", 1, nil); rc != 0 {
			t.Fatalf("enable exit %d", rc)
		}
		mons := v.monitors(old)
		if len(mons) != 1 || mons[0].PID == monitorPID {
			t.Fatalf("monitors after reboot: %v", mons)
		}
		monitorPID = mons[0].PID
		if !realAgnt {
			v.waitStatus(old, 1, "success after reboot", healthyFor("1.0.0"))
			if !v.supervisor().Active() {
				t.Error("agent not running after reboot")
			}
		}
	})

	var newBase string
	t.Run("upgrade in waagent order", func(t *testing.T) {
		v.t = t
		sup := v.supervisor()
		agentPID := readPID(sup.AgentPIDFile())
		newBase = v.download("1.0.1")
		v.settings(newBase, 2, `{"runtimeSettings": [{"handlerSettings": {"publicSettings": {}}}]}`)
		if rc := v.run(old, "disable", 2, nil); rc != 0 {
			t.Fatalf("old disable exit %d", rc)
		}
		if len(v.monitors(old)) != 0 {
			t.Fatal("old monitor survived disable")
		}
		// copy_status_files: mrseq and status/*.
		ents, _ := os.ReadDir(filepath.Join(old, "status"))
		for _, e := range ents {
			b, _ := os.ReadFile(filepath.Join(old, "status", e.Name()))
			os.WriteFile(filepath.Join(newBase, "status", e.Name()), b, 0o644)
		}
		if rc := v.run(newBase, "update", 2, map[string]string{extension.EnvVersion: "1.0.1",
			extension.EnvUpdatingFromVersion: "1.0.0", extension.EnvDisableExitCode: "0"}); rc != 0 {
			t.Fatalf("new update exit %d", rc)
		}
		if _, err := os.Stat(filepath.Join(v.lib, UpdateTagName)); err != nil {
			t.Fatal("update.tag not written")
		}
		if rc := v.run(old, "uninstall", 2, nil); rc != 0 {
			t.Fatalf("old uninstall exit %d", rc)
		}
		if _, err := os.Stat(v.layout().UnitFile()); err != nil {
			t.Fatal("old uninstall removed the service during an upgrade")
		}
		if !realAgnt && readPID(sup.AgentPIDFile()) != agentPID {
			t.Error("agent restarted by the old version's disable/uninstall")
		}
		os.RemoveAll(old)
		if rc := v.run(newBase, "install", 2, map[string]string{extension.EnvUninstallExitCode: "0"}); rc != 0 {
			t.Fatalf("new install exit %d", rc)
		}
		if rc := v.run(newBase, "enable", 2, map[string]string{extension.EnvUninstallExitCode: "0"}); rc != 0 {
			t.Fatalf("new enable exit %d", rc)
		}
		if _, err := os.Stat(filepath.Join(v.lib, UpdateTagName)); err == nil {
			t.Error("new enable left update.tag")
		}
		if len(v.monitors(newBase)) != 1 {
			t.Fatal("new monitor not running")
		}
		if realAgnt {
			v.waitStatus(newBase, 2, "full shape after upgrade", func(s extension.Status) bool { return len(s.Substatus) == 3 })
		} else {
			st := v.waitStatus(newBase, 2, "success on 1.0.1", healthyFor("1.0.1"))
			if ver, _ := reported(t, st); ver != "1.0.1" {
				t.Errorf("agent version %s after upgrade", ver)
			}
			got, err := AgentVersion(context.Background(), v.layout().AgentBinary())
			if err != nil || got != "1.0.1" {
				t.Errorf("installed agent %q %v", got, err)
			}
			testsupport.WaitFor(t, "the backup to be purged after the upgrade succeeded", func() bool {
				return !(&Setup{ExtDir: newBase}).HasBackup()
			})
		}
	})

	t.Run("disable twice then uninstall", func(t *testing.T) {
		v.t = t
		if newBase == "" {
			t.Skip("upgrade failed")
		}
		for i := 0; i < 2; i++ {
			if rc := v.run(newBase, "disable", 2, nil); rc != 0 {
				t.Fatalf("disable %d exit %d", i, rc)
			}
			if len(v.monitors(newBase)) != 0 {
				t.Fatal("monitor survived disable")
			}
			if !realAgnt && !v.supervisor().Active() {
				t.Fatal("disable stopped the agent service")
			}
		}
		if rc := v.run(newBase, "uninstall", 2, nil); rc != 0 {
			t.Fatalf("uninstall exit %d", rc)
		}
		l := v.layout()
		if _, err := os.Stat(l.UnitFile()); err == nil {
			t.Error("unit file left after uninstall")
		}
		if sup := v.supervisor(); sup.Active() || sup.Enabled() {
			t.Error("service still active or enabled after uninstall")
		}
		if _, err := os.Stat(l.AgentBinary()); err != nil {
			t.Error("uninstall removed the agent binary (service mode keeps it)")
		}
		if rc := v.run(newBase, "uninstall", 2, nil); rc != 0 {
			t.Errorf("second uninstall exit %d", rc)
		}
	})
}

// TestWaagentUpgradeRestore: the new agent does not come up, so the
// previous one is restored and the failure is reported truthfully: as one
// failure of the state machine (transitioning), with setup's exit code.
func TestWaagentUpgradeRestore(t *testing.T) {
	t.Parallel()
	v := newVM(t, "standin", ubuntu2204)
	old := v.download("1.0.0")
	v.settings(old, 0, "")
	v.run(old, "install", 0, nil)
	if rc := v.run(old, "enable", 0, nil); rc != 0 {
		t.Fatalf("enable exit %d", rc)
	}
	v.waitStatus(old, 0, "success", healthyFor("1.0.0"))

	newBase := v.download("1.0.1")
	// A broken release: the new agent exits at once.
	cfgPath := filepath.Join(newBase, BundledConfig)
	b, _ := os.ReadFile(cfgPath)
	var cfg map[string]any
	json.Unmarshal(b, &cfg)
	cfg["standinExit"] = true
	b, _ = json.Marshal(cfg)
	os.WriteFile(cfgPath, b, 0o644)

	v.settings(newBase, 1, "")
	v.run(old, "disable", 1, nil)
	v.run(newBase, "update", 1, map[string]string{extension.EnvVersion: "1.0.1", extension.EnvUpdatingFromVersion: "1.0.0", extension.EnvDisableExitCode: "0"})
	v.run(old, "uninstall", 1, nil)
	os.RemoveAll(old)
	v.run(newBase, "install", 1, nil)
	if rc := v.run(newBase, "enable", 1, nil); rc != 0 {
		t.Fatalf("enable exit %d", rc)
	}
	st := v.waitStatus(newBase, 1, "setup failure", func(s extension.Status) bool {
		return s.Status == "transitioning" && strings.Contains(msgOf(s), "previous agent restored")
	})
	if st.Code == 0 || !strings.Contains(st.Message, "did not stay running") {
		t.Errorf("failure status %+v", st)
	}
	got, err := AgentVersion(context.Background(), v.layout().AgentBinary())
	if err != nil || got != "1.0.0" {
		t.Errorf("installed agent after restore %q %v", got, err)
	}
	testsupport.WaitFor(t, "the restored agent to run", func() bool { return v.supervisor().Active() })
	// The monitor keeps telling the truth: the running agent is not the
	// bundled version, so never success.
	st = v.waitStatus(newBase, 1, "version mismatch", func(s extension.Status) bool {
		return len(s.Substatus) == 3 && strings.Contains(msgOf(s), "does not match")
	})
	if st.Status == "success" {
		t.Error("success reported with the wrong agent version")
	}
}

// TestWaagentMissingPrerequisite: on a machine without cgroup v2 every
// command refuses with exit 6, and the error status waagent accepts names
// the prerequisite and its fix, in the message and in ebpfProgramStatus.
func TestWaagentMissingPrerequisite(t *testing.T) {
	t.Parallel()
	v := newVM(t, "standin", "NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n")
	sys := testenv.Debian12
	sys.Mounts = testenv.MountsV1Only
	env := map[string]string{EnvSystemRoot: testenv.NewSystemRoot(t, sys)}
	base := v.download("1.0.0")
	v.settings(base, 3, "")
	for _, verb := range []string{"install", "enable"} {
		if rc := v.run(base, verb, 3, env); rc != ExitUnsupportedOS {
			t.Errorf("%s exit %d, want %d", verb, rc, ExitUnsupportedOS)
		}
	}
	const want = "cgroup v2 is not mounted: boot with systemd.unified_cgroup_hierarchy=1"
	st := v.parseStatus(base, 3)
	if st.Status != "error" || st.Code != ExitUnsupportedOS || st.Operation != OperationOSCheck ||
		!strings.Contains(st.Message, want) || !strings.HasPrefix(st.Message, "OS version not supported: Linux:Debian GNU/Linux-12") {
		t.Errorf("status %+v", st)
	}
	if len(st.Substatus) != 3 || st.Substatus[1].Name != SubAgentStatus {
		t.Fatalf("substatus %+v", st.Substatus)
	}
	var agent struct {
		Status string       `json:"status"`
		Ebpf   ModuleStatus `json:"ebpfProgramStatus"`
	}
	if err := json.Unmarshal([]byte(st.Substatus[1].Message), &agent); err != nil {
		t.Fatalf("ProxyAgentStatus substatus is not a proxyAgentStatus: %v", err)
	}
	if agent.Status != "ERROR" || agent.Ebpf.Status != "STOPPED" || !strings.Contains(agent.Ebpf.Message, want) {
		t.Errorf("proxyAgentStatus %+v", agent)
	}
	if len(v.monitors(base)) != 0 {
		t.Error("monitor started on a machine without cgroup v2")
	}
}

// enabledVM makes a VM with osRelease on this machine's capabilities
// (skipping where it lacks them), runs prep on it, then install and enable
// at sequence 3 of version 1.0.0, and waits for success; it returns the VM
// and the extension's directory.
func enabledVM(t *testing.T, osRelease string, prep func(v *vm)) (*vm, string) {
	t.Helper()
	if r := prereq.Check(prereq.Paths{}); !r.OK() {
		testenv.SkipOrFail(t, "this machine lacks prerequisites: %s", r.Message())
	}
	v := newVM(t, "standin", osRelease)
	if prep != nil {
		prep(v)
	}
	base := v.download("1.0.0")
	v.settings(base, 3, "")
	if rc := v.run(base, "install", 3, nil); rc != 0 {
		t.Errorf("install exit %d", rc)
	}
	if rc := v.run(base, "enable", 3, nil); rc != 0 {
		t.Fatalf("enable exit %d", rc)
	}
	v.waitStatus(base, 3, "success", healthyFor("1.0.0"))
	return v, base
}

// TestWaagentLostPrerequisite: a VM that lost a prerequisite after the
// extension was installed (rebooted into cgroup v1) can still have it
// disabled and removed: disable and uninstall exit 0 and uninstall removes
// the service, while enable and update (an upgrade) still refuse with
// exit 6.
func TestWaagentLostPrerequisite(t *testing.T) {
	t.Parallel()
	v, base := enabledVM(t, "NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n", nil)

	sys := testenv.Debian12
	sys.Mounts = testenv.MountsV1Only
	v1 := map[string]string{EnvSystemRoot: testenv.NewSystemRoot(t, sys)}
	for _, verb := range []string{"enable", "update"} {
		if rc := v.run(base, verb, 3, v1); rc != ExitUnsupportedOS {
			t.Errorf("%s without cgroup v2 exit %d, want %d", verb, rc, ExitUnsupportedOS)
		}
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(base), UpdateTagName)); err == nil {
		t.Error("a refused update left update.tag, which would keep a later uninstall from removing the agent")
	}
	if rc := v.run(base, "disable", 3, v1); rc != 0 {
		t.Errorf("disable without cgroup v2 exit %d, want 0", rc)
	}
	if len(v.monitors(base)) != 0 {
		t.Error("monitor survived disable")
	}
	if rc := v.run(base, "uninstall", 3, v1); rc != 0 {
		t.Errorf("uninstall without cgroup v2 exit %d, want 0", rc)
	}
	if _, err := os.Stat(v.layout().UnitFile()); err == nil {
		t.Error("unit file left after uninstall")
	}
	if sup := v.supervisor(); sup.Active() || sup.Enabled() {
		t.Error("service still active or enabled after uninstall")
	}
}

// TestWaagentFlatcar: on Flatcar /usr is a read-only partition; the
// extension installs the agent under /opt and its unit in
// /etc/systemd/system instead, the agent runs from there, and uninstall
// removes the unit.
func TestWaagentFlatcar(t *testing.T) {
	t.Parallel()
	v, base := enabledVM(t, "NAME=\"Flatcar Container Linux by Kinvolk\"\nID=flatcar\nVERSION_ID=3815.2.5\n", func(v *vm) {
		usr := filepath.Join(v.root, "usr")
		if err := os.Mkdir(usr, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Mount("tmpfs", usr, "tmpfs", syscall.MS_RDONLY, "size=1m"); err != nil {
			testenv.SkipOrFail(t, "mount a read-only tmpfs as /usr: %v", err)
		}
		t.Cleanup(func() { syscall.Unmount(usr, syscall.MNT_DETACH) })
	})
	l := v.layout()
	for _, p := range []string{"opt/bin/azure-proxy-agent", "opt/azure-proxy-agent/ebpf_cgroup.o", "etc/systemd/system/azure-proxy-agent.service"} {
		if _, err := os.Stat(filepath.Join(v.root, p)); err != nil {
			t.Errorf("%s not installed: %v", p, err)
		}
	}
	unit, _ := os.ReadFile(l.UnitFile())
	if !strings.Contains(string(unit), "ExecStart="+filepath.Join(v.root, "opt/bin/azure-proxy-agent")+" ") {
		t.Errorf("unit does not start the agent from /opt/bin:\n%s", unit)
	}
	cfg, _ := os.ReadFile(l.AgentConfig())
	if !strings.Contains(string(cfg), filepath.Join(v.root, "opt/azure-proxy-agent/ebpf_cgroup.o")) {
		t.Errorf("config does not name the eBPF object under /opt:\n%s", cfg)
	}
	if rc := v.run(base, "disable", 3, nil); rc != 0 {
		t.Errorf("disable exit %d", rc)
	}
	if rc := v.run(base, "uninstall", 3, nil); rc != 0 {
		t.Errorf("uninstall exit %d", rc)
	}
	if _, err := os.Stat(l.UnitFile()); err == nil {
		t.Error("unit file left after uninstall")
	}
	if v.supervisor().Active() {
		t.Error("service still active after uninstall")
	}
}

// TestWaagentDebian12: Debian 12, refused by upstream's fixed list, passes
// on a machine with the capabilities (this one's procfs and sysfs).
func TestWaagentDebian12(t *testing.T) {
	t.Parallel()
	enabledVM(t, "NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n", nil)
}

// TestCommandExitCodes covers the prologue's failure exits.
func TestCommandExitCodes(t *testing.T) {
	t.Parallel()
	v := newVM(t, "standin", ubuntu2204)
	tests := []struct {
		name string
		prep func(base string)
		verb string
		seq  string
		want int
	}{
		{"no HandlerEnvironment", func(b string) { os.Remove(filepath.Join(b, extension.HandlerEnvironmentFile)) }, "enable", "0", ExitHandlerEnv},
		{"empty HandlerEnvironment", func(b string) { os.WriteFile(filepath.Join(b, extension.HandlerEnvironmentFile), nil, 0o644) }, "disable", "0", ExitHandlerEnv},
		{"invalid seq", func(string) {}, "enable", "abc", ExitHandlerEnv},
		{"seq file unwritable", func(b string) { os.MkdirAll(filepath.Join(b, SeqFileName, "x"), 0o755) }, "enable", "0", ExitSeqFile},
		{"update without tag dir problems", func(string) {}, "update", "0", 0},
		{"reset", func(string) {}, "reset", "0", 0},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := v.download("1.0.0")
			defer os.RemoveAll(base)
			tc.prep(base)
			ext := filepath.Join(base, ExtBinaryName)
			cmd := exec.Command(ext, tc.verb)
			cmd.Dir = base
			cmd.Env = append(append([]string{extension.EnvSequenceNumber + "=" + tc.seq}, v.env...), os.Environ()...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			}
			if code != tc.want {
				t.Errorf("case %d exit %d, want %d (%s)", i, code, tc.want, stderr.String())
			}
			if tc.want == ExitHandlerEnv && !strings.Contains(stderr.String(), "ProxyAgentExt") {
				t.Errorf("no stderr message: %q", stderr.String())
			}
			if tc.want == ExitSeqFile {
				st := v.parseStatus(base, 0)
				if st.Status != "error" || st.Code != ExitSeqFile {
					t.Errorf("status %+v", st)
				}
			}
			v.killAll()
		})
	}
}

// TestWaagentDowngradeReplacesOldMonitor: a downgrade 1.0.1 → 1.0.0 where
// waagent runs the old (higher) handler's update; the old monitor is left
// running (no disable, as when the old state was not Enabled) and the new
// enable must replace it, recognising it by its executable.
func TestWaagentDowngradeReplacesOldMonitor(t *testing.T) {
	t.Parallel()
	v := newVM(t, "standin", ubuntu2204)
	high := v.download("1.0.1")
	v.settings(high, 0, "")
	v.run(high, "install", 0, nil)
	if rc := v.run(high, "enable", 0, nil); rc != 0 {
		t.Fatalf("enable exit %d", rc)
	}
	v.waitStatus(high, 0, "success on 1.0.1", healthyFor("1.0.1"))
	oldMon := v.monitors(high)
	if len(oldMon) != 1 {
		t.Fatalf("monitors %v", oldMon)
	}

	low := v.download("1.0.0")
	v.settings(low, 1, "")
	// Downgrade: the old handler's update runs, with VERSION = the lower one.
	if rc := v.run(high, "update", 1, map[string]string{extension.EnvVersion: "1.0.0", extension.EnvUpdatingFromVersion: "1.0.1", extension.EnvDisableExitCode: "NOT_RUN"}); rc != 0 {
		t.Fatalf("update exit %d", rc)
	}
	if rc := v.run(high, "uninstall", 1, nil); rc != 0 {
		t.Fatalf("old uninstall exit %d", rc)
	}
	if !v.supervisor().Active() {
		t.Fatal("service stopped by the old uninstall during a downgrade")
	}
	v.run(low, "install", 1, nil)
	if rc := v.run(low, "enable", 1, nil); rc != 0 {
		t.Fatalf("enable exit %d", rc)
	}
	if Alive(oldMon[0].PID, oldMon[0].Exe) {
		t.Error("the old version's monitor still runs")
	}
	if len(v.monitors(low)) != 1 {
		t.Fatal("new monitor not running")
	}
	v.waitStatus(low, 1, "success on 1.0.0", healthyFor("1.0.0"))
	os.RemoveAll(high)
}
