package systemd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opengpa/gpa/extension"
	"github.com/opengpa/gpa/handler"
	"github.com/opengpa/gpa/hostsim"
	"github.com/opengpa/gpa/internal/e2eenv"
	"github.com/opengpa/gpa/internal/nspawn"
	"github.com/opengpa/gpa/internal/testenv"
	"github.com/opengpa/gpa/internal/waagentsim"
	"github.com/opengpa/gpa/manifest"
	"github.com/opengpa/gpa/proxyagent/audit"
)

const (
	goalStateURL = "http://168.63.129.16/machine?comp=goalstate"
	imdsURL      = "http://169.254.169.254/metadata/instance?api-version=2021-02-01"
	wsVersion    = "x-ms-version: 2012-11-30"
	controlURL   = "http://" + e2eenv.ControlAddr
	agentUnit    = handler.UnitName
	monitorUnit  = handler.MonitorUnitName
	agentBinary  = "/usr/sbin/azure-proxy-agent"
	pinDir       = "/sys/fs/bpf/azure-proxy-agent"
)

// vm is one booted machine with the host simulator running inside and
// waagent's part played from the test.
type vm struct {
	t       *testing.T
	m       *nspawn.Machine
	share   string // bound into the machine at the same path
	waagent *waagentsim.Agent
	units   int // transient scope counter for handler commands
	// since is the host journal's last sequence number before the agent
	// was first installed: the monitor's status calls before that reach
	// the host unsigned, as on any VM without the agent.
	since uint64
}

// TestSystemdLifecycle runs the extension's whole life under a real
// systemd: install and enable (the agent unit active, enabled and under
// its CPU quota, the monitor a transient unit that got the handler's
// GPA_* environment, so the configuration overlay reached the installed
// agent), a signed request
// whose caller the agent identifies inside the machine's PID namespace,
// a container's request through the unit's IP filter (and one from a
// public address dropped by it), the agent killed with SIGKILL and restarted by systemd without a single
// unsigned request reaching the host, an upgrade in waagent's order,
// disable (the monitor unit stopped and reported so) and uninstall (unit,
// pins and redirect gone).
func TestSystemdLifecycle(t *testing.T) {
	testenv.RequirePrivileged(t)
	if err := nspawn.Available(); err != nil {
		testenv.SkipOrFail(t, "%v", err)
	}
	if err := waagentsim.Available(); err != nil {
		testenv.SkipOrFail(t, "%v", err)
	}
	if _, err := exec.LookPath("zip"); err != nil {
		testenv.SkipOrFail(t, "zip (used by packaging/package.sh) not installed: %v", err)
	}
	began := time.Now()
	// The test's own deadline comes before go test's, so a slow run fails
	// with its cleanups run rather than in go test's timeout panic.
	end := time.Now().Add(10 * time.Minute)
	if d, ok := t.Deadline(); ok && d.Add(-30*time.Second).Before(end) {
		end = d.Add(-30 * time.Second)
	}
	ctx, cancel := context.WithDeadline(context.Background(), end)
	defer cancel()

	share, err := os.MkdirTemp("", "gpa-systemd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(share) })
	os.Chmod(share, 0o755)
	zips := buildPackages(ctx, t, share, "1.0.0", "1.0.1")
	t.Logf("built binaries and packages in %v", time.Since(began).Round(time.Millisecond))

	boot := time.Now()
	m, err := nspawn.Boot(ctx, nspawn.Config{Binds: []string{share}, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	v := &vm{t: t, m: m, share: share}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("machine state:\n%s", v.diagnostics())
		}
		if err := m.Close(); err != nil {
			t.Errorf("close machine: %v", err)
		}
	})
	t.Logf("machine booted in %v", time.Since(boot).Round(time.Millisecond))
	v.startHost(ctx)

	overlay := filepath.Join(share, "overlay.json")
	if err := os.WriteFile(overlay, []byte(`{"pollKeyStatusIntervalInSeconds": 0.5, "monitorIntervalInSeconds": 1, "hostRequestTimeoutInSeconds": 5}`), 0o644); err != nil {
		t.Fatal(err)
	}
	v.waagent = &waagentsim.Agent{
		LibDir: filepath.Join(share, "waagent"),
		LogDir: filepath.Join(share, "log", handler.HandlerName),
		Env: []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
			handler.EnvConfigOverlay + "=" + overlay,
			handler.EnvMonitorInterval + "=500ms",
			handler.EnvHeartbeatInterval + "=5s",
			handler.EnvRetryInterval + "=200ms",
			handler.EnvServiceSettle + "=1s",
			handler.EnvHTTPTimeout + "=2s",
		},
		Start: v.startHandlerCommand,
	}

	// Install and enable, as waagent runs them on a fresh VM.
	old, err := v.waagent.Unpack(zips["1.0.0"], handler.HandlerName, "1.0.0")
	if err != nil {
		t.Fatal(err)
	}
	if err := waagentsim.WriteSettings(old, 0, ""); err != nil {
		t.Fatal(err)
	}
	step := time.Now()
	fresh := map[string]string{extension.EnvUninstallExitCode: "NOT_RUN"}
	v.handler(ctx, old, "install", 0, fresh)
	v.handler(ctx, old, "enable", 0, fresh)
	v.waitSuccess(ctx, old, 0)
	for _, en := range v.journal(ctx) {
		if en.Verdict == hostsim.VerdictValid {
			break
		}
		v.since = en.Seq
	}
	t.Logf("install+enable to success in %v", time.Since(step).Round(time.Millisecond))

	if got := v.unitState(ctx, agentUnit, "ActiveState", "UnitFileState"); got["ActiveState"] != "active" || got["UnitFileState"] != "enabled" {
		t.Errorf("%s: %v, want active and enabled", agentUnit, got)
	}
	// The agent puts the manifest's CPU quota on its own unit (n % is n*10
	// ms of CPU per second).
	wantQuota := fmt.Sprintf("%dms", manifest.AgentCPUQuotaPercentage*10)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		got := v.unitState(ctx, agentUnit, "CPUQuotaPerSecUSec")["CPUQuotaPerSecUSec"]
		if got == wantQuota {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("%s CPUQuotaPerSecUSec %q, want %s (CPUQuota=%d%%)", agentUnit, got, wantQuota, manifest.AgentCPUQuotaPercentage)
			break
		}
	}
	mon := v.unitState(ctx, monitorUnit, "ActiveState", "Transient", "Environment", "ExecStart")
	if mon["ActiveState"] != "active" || mon["Transient"] != "yes" {
		t.Errorf("%s: %v, want an active transient unit", monitorUnit, mon)
	}
	if !strings.Contains(mon["Environment"], handler.EnvConfigOverlay+"="+overlay) || !strings.Contains(mon["Environment"], handler.EnvMonitorInterval+"=500ms") {
		t.Errorf("monitor unit environment %q lacks the handler's GPA_* variables", mon["Environment"])
	}
	var cfg map[string]any
	if err := json.Unmarshal(v.run(ctx, "cat", "/etc/azure/proxy-agent.json"), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg["pollKeyStatusIntervalInSeconds"] != 0.5 {
		t.Errorf("installed config has pollKeyStatusIntervalInSeconds %v, want 0.5 from the overlay the monitor was given", cfg["pollKeyStatusIntervalInSeconds"])
	}

	// A signed request, and the caller identified inside the machine's PID
	// namespace (the agent sees the machine's /proc).
	code, marked := v.curl(ctx, goalStateURL, wsVersion)
	if code != http.StatusOK || !marked {
		t.Fatalf("WireServer call under systemd: HTTP %d marked %v, want 200 through the agent", code, marked)
	}
	rec := v.waitAudit(ctx, func(r audit.Record) bool {
		return r.Caller != nil && r.Caller.ProcessName == "curl" && r.Destination.Service == "WireServer"
	})
	// The command line claim keeps the first four arguments.
	if rec.Caller.ProcessFullPath != "/usr/bin/curl" || rec.Caller.ProcessCmdLine != "/usr/bin/curl -s -o /dev/null" {
		t.Errorf("caller in the machine's PID namespace: processFullPath %q processCmdLine %q, want /usr/bin/curl and its command line",
			rec.Caller.ProcessFullPath, rec.Caller.ProcessCmdLine)
	}

	// A container (own network namespace, a veth into the machine) reaches
	// the agent's container listener through the unit's IP filter when its
	// address is in a range container networks use; one outside them is
	// dropped by systemd, which shows the filter is what decides.
	v.addContainer(ctx, "gpa-docker", "172.17.240.1/24", "172.17.240.2/24")
	v.addContainer(ctx, "gpa-public", "198.18.240.1/24", "198.18.240.2/24")
	if code, marked := v.curlIn(ctx, "gpa-docker", 10, imdsURL, "Metadata: true"); code != http.StatusOK || !marked {
		t.Errorf("IMDS from a container under systemd: HTTP %d marked %v, want 200 through the agent", code, marked)
	}
	if code, _ := v.curlIn(ctx, "gpa-public", 2, imdsURL, "Metadata: true"); code != 0 {
		t.Errorf("IMDS from a container with a public address: HTTP %d, want no answer (dropped by IPAddressDeny)", code)
	}

	// SIGKILL: systemd restarts the agent (Restart=always), and while it is
	// down no request reaches the host unsigned.
	step = time.Now()
	pid := v.mainPID(ctx)
	clientLog := filepath.Join(share, "client.log")
	v.run(ctx, "systemd-run", "--unit=gpa-test-client", "--collect", "--quiet", "sh", "-c",
		`while [ ! -e /run/gpa-test-stop ]; do curl -s -o /dev/null --max-time 5 -w '%{http_code}\n' -H '`+wsVersion+`' '`+goalStateURL+`' >> `+clientLog+`; done`)
	v.run(ctx, "sh", "-c", "kill -9 "+strconv.Itoa(pid))
	newPID := v.waitRestarted(ctx, pid)
	code, marked = v.curl(ctx, goalStateURL, wsVersion)
	if code != http.StatusOK || !marked {
		t.Errorf("after the restart: HTTP %d marked %v, want 200 through the agent", code, marked)
	}
	// Stop the loop once it, too, has been served by the new agent.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if b, _ := os.ReadFile(clientLog); strings.Contains(string(b), "200\n") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the client loop got no answer from the restarted agent")
		}
	}
	v.run(ctx, "touch", "/run/gpa-test-stop")
	v.waitInactive(ctx, "gpa-test-client.service")
	t.Logf("agent pid %d killed, pid %d started by systemd and serving %v later", pid, newPID, time.Since(step).Round(time.Millisecond))
	// The loop called WireServer while the agent was down (refused: curl
	// reports 000) and got only the agent's answers otherwise.
	b, _ := os.ReadFile(clientLog)
	outcomes := map[string]int{}
	for _, c := range strings.Fields(string(b)) {
		outcomes[c]++
	}
	if outcomes["000"] == 0 || outcomes["200"] == 0 || len(outcomes) != 2 {
		t.Errorf("client loop outcomes %v, want refused connections (000) while the agent was down and 200 otherwise", outcomes)
	}
	t.Logf("client loop across the restart: %v", outcomes)
	v.checkJournal(ctx)

	// Upgrade 1.0.0 -> 1.0.1 in waagent's order.
	step = time.Now()
	newDir, err := v.waagent.Unpack(zips["1.0.1"], handler.HandlerName, "1.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if err := waagentsim.WriteSettings(newDir, 1, ""); err != nil {
		t.Fatal(err)
	}
	v.handler(ctx, old, "disable", 1, nil)
	v.handler(ctx, newDir, "update", 1, map[string]string{extension.EnvVersion: "1.0.1",
		extension.EnvUpdatingFromVersion: "1.0.0", extension.EnvDisableExitCode: "0"})
	v.handler(ctx, old, "uninstall", 1, nil)
	if got := v.unitState(ctx, agentUnit, "ActiveState"); got["ActiveState"] != "active" {
		t.Errorf("the old version's uninstall during an upgrade stopped the agent: %v", got)
	}
	v.handler(ctx, newDir, "install", 1, map[string]string{extension.EnvUninstallExitCode: "0"})
	v.handler(ctx, newDir, "enable", 1, map[string]string{extension.EnvUninstallExitCode: "0"})
	v.waitSuccess(ctx, newDir, 1)
	deadline := time.Now().Add(60 * time.Second)
	for {
		out := strings.TrimSpace(string(v.run(ctx, agentBinary, "--version")))
		if strings.Contains(out, "1.0.1") && v.unitState(ctx, agentUnit, "ActiveState")["ActiveState"] == "active" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("installed agent %q after the upgrade, want 1.0.1 running", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if code, marked := v.curl(ctx, goalStateURL, wsVersion); code != http.StatusOK || !marked {
		t.Errorf("after the upgrade: HTTP %d marked %v, want 200 through the agent", code, marked)
	}
	t.Logf("upgrade to 1.0.1 in %v", time.Since(step).Round(time.Millisecond))
	v.checkJournal(ctx)

	// Disable stops the monitor unit and says so; the agent keeps running.
	v.handler(ctx, newDir, "disable", 1, nil)
	if got := v.unitState(ctx, monitorUnit, "ActiveState"); got["ActiveState"] == "active" {
		t.Errorf("monitor unit still active after disable: %v", got)
	}
	if got := v.unitState(ctx, agentUnit, "ActiveState"); got["ActiveState"] != "active" {
		t.Errorf("disable stopped the agent: %v", got)
	}
	if msg := v.lastCommandMessage("disable"); !strings.Contains(msg, "stopped 1 monitor(s)") {
		t.Errorf("disable reported %q, want it to count the monitor unit it stopped", msg)
	}

	// Uninstall: unit, pins and redirect gone.
	v.handler(ctx, newDir, "uninstall", 1, nil)
	if got := v.unitState(ctx, agentUnit, "LoadState", "ActiveState"); got["LoadState"] != "not-found" || got["ActiveState"] == "active" {
		t.Errorf("%s after uninstall: %v, want not-found and inactive", agentUnit, got)
	}
	if out, err := v.m.Run(ctx, "ls", "-A", pinDir); err == nil && strings.TrimSpace(string(out)) != "" {
		t.Errorf("pins left after uninstall: %s", out)
	}
	if out, _ := v.m.Run(ctx, "ls", "/usr/lib/systemd/system/"+agentUnit); len(out) != 0 {
		t.Errorf("unit file left after uninstall")
	}
	// The CPU quota the agent set on its unit went with it (a persistent
	// set-property would have left a drop-in in /etc/systemd/system.control).
	if out, _ := v.m.Run(ctx, "ls", "-A", "/etc/systemd/system.control/"+agentUnit+".d"); len(strings.TrimSpace(string(out))) != 0 {
		t.Errorf("drop-in left after uninstall: %s", out)
	}
	if out, _ := v.m.Run(ctx, "systemctl", "--failed", "--no-legend", "--plain"); len(strings.TrimSpace(string(out))) != 0 {
		t.Errorf("failed units after uninstall: %s", out)
	}
	if code, marked := v.curl(ctx, goalStateURL, wsVersion); code != http.StatusUnauthorized || marked {
		t.Errorf("after uninstall: HTTP %d marked %v, want 401 straight from the host", code, marked)
	}
	t.Logf("whole lifecycle under systemd in %v", time.Since(began).Round(time.Millisecond))
}

// buildPackages builds the host simulator into share/bin and, per
// version, the agent and the handler stamped with that version, packaged
// into the extension zip.
func buildPackages(ctx context.Context, t *testing.T, share string, versions ...string) map[string]string {
	t.Helper()
	root, err := e2eenv.ModuleRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(share, "bin")
	goBuild(ctx, t, root, filepath.Join(bin, "azure-host-sim"), "./cmd/azure-host-sim", "")
	zips := map[string]string{}
	for _, ver := range versions {
		dir := filepath.Join(t.TempDir(), ver)
		agent := filepath.Join(dir, "azure-proxy-agent")
		ext := filepath.Join(dir, "ProxyAgentExt")
		goBuild(ctx, t, root, agent, "./cmd/azure-proxy-agent", ver)
		goBuild(ctx, t, root, ext, "./cmd/ProxyAgentExt", ver)
		z, err := e2eenv.PackageExtension(ctx, root, ver, agent, ext, dir)
		if err != nil {
			t.Fatal(err)
		}
		zips[ver] = z
	}
	return zips
}

// goBuild builds pkg statically (CGO_ENABLED=0), with version stamped
// when not empty.
func goBuild(ctx context.Context, t *testing.T, root, out, pkg, version string) {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	args := []string{"build", "-trimpath", "-o", out}
	if version != "" {
		args = append(args, "-ldflags", "-X github.com/opengpa/gpa/internal/version.Version="+version)
	}
	cmd := exec.CommandContext(ctx, goTool, append(args, pkg)...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v: %s", pkg, err, b)
	}
}

// run runs a command inside the machine and fails the test on error.
func (v *vm) run(ctx context.Context, name string, args ...string) []byte {
	v.t.Helper()
	out, err := v.m.Run(ctx, name, args...)
	if err != nil {
		v.t.Fatal(err)
	}
	return out
}

// startHost puts the service addresses on the machine's loopback and runs
// the host simulator there as a unit of the machine's systemd.
func (v *vm) startHost(ctx context.Context) {
	v.t.Helper()
	settings := filepath.Join(v.share, "host-settings.json")
	if err := os.WriteFile(settings, []byte(e2eenv.EnforceSettings), 0o644); err != nil {
		v.t.Fatal(err)
	}
	for _, a := range []string{"168.63.129.16/32", "169.254.169.254/32"} {
		v.run(ctx, "ip", "addr", "add", a, "dev", "lo")
	}
	v.run(ctx, "systemd-run", "--unit=azure-host-sim", "--quiet", filepath.Join(v.share, "bin", "azure-host-sim"),
		"-settings", settings, "-wireserver", e2eenv.WireServerAddr, "-imds", e2eenv.IMDSAddr,
		"-hostga", e2eenv.HostGAAddr, "-control", e2eenv.ControlAddr, "-imds-rate-limit", "0")
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := v.m.Run(ctx, "curl", "-sf", "--noproxy", "*", controlURL+"/state"); err == nil {
			return
		}
		if time.Now().After(deadline) {
			v.t.Fatalf("host simulator not answering inside the machine")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startHandlerCommand is waagentsim's Start: the handler command runs
// inside the machine in a transient scope of its own, as waagent runs
// extension commands with systemd-run --scope.
func (v *vm) startHandlerCommand(cmd *exec.Cmd) error {
	v.units++
	cmd.Args = append([]string{"systemd-run", "--scope", "--quiet", "--collect", "--slice=azure-vmextensions.slice",
		fmt.Sprintf("--unit=gpa-test-handler-%d", v.units), cmd.Path}, cmd.Args[1:]...)
	cmd.Path = "systemd-run"
	v.m.Wrap(cmd)
	return v.m.Start(cmd)
}

// handler runs one handler command and requires exit 0.
func (v *vm) handler(ctx context.Context, dir, verb string, seq int, extra map[string]string) {
	v.t.Helper()
	res, err := v.waagent.Run(ctx, dir, verb, seq, extra)
	if err != nil {
		v.t.Fatal(err)
	}
	if res.ExitCode != 0 {
		v.t.Fatalf("%s %s: exit %d: %s", filepath.Base(dir), verb, res.ExitCode, res.Output)
	}
}

// waitSuccess waits for the status file of seq to say success with the
// three substatuses, as waagent's own parser reads it.
func (v *vm) waitSuccess(ctx context.Context, dir string, seq int) {
	v.t.Helper()
	path := waagentsim.StatusPath(dir, seq)
	deadline := time.Now().Add(90 * time.Second)
	var last waagentsim.Status
	for {
		st, err := waagentsim.ParseStatus(path)
		if err == nil {
			last = st
			if st.Status == "success" && len(st.Substatus) == 3 {
				if err := st.Rejected(); err != nil {
					v.t.Fatal(err)
				}
				return
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			v.t.Fatalf("status %s never reached success with 3 substatuses; last %+v (%v)", path, last, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// unitState returns systemctl show's values of props for unit.
func (v *vm) unitState(ctx context.Context, unit string, props ...string) map[string]string {
	v.t.Helper()
	out := v.run(ctx, "systemctl", "show", "--property="+strings.Join(props, ","), unit)
	got := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		if k, val, ok := strings.Cut(l, "="); ok {
			got[k] = val
		}
	}
	return got
}

// waitInactive waits until unit no longer runs.
func (v *vm) waitInactive(ctx context.Context, unit string) {
	v.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := v.unitState(ctx, unit, "ActiveState")
		if st["ActiveState"] != "active" && st["ActiveState"] != "deactivating" {
			return
		}
		if time.Now().After(deadline) {
			v.t.Fatalf("%s still %s", unit, st["ActiveState"])
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (v *vm) mainPID(ctx context.Context) int {
	v.t.Helper()
	pid, _ := strconv.Atoi(v.unitState(ctx, agentUnit, "MainPID")["MainPID"])
	if pid == 0 {
		v.t.Fatalf("%s has no main pid", agentUnit)
	}
	return pid
}

// waitRestarted waits until systemd runs the agent under a pid other than
// old and the agent answers a redirected request.
func (v *vm) waitRestarted(ctx context.Context, old int) int {
	v.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		st := v.unitState(ctx, agentUnit, "MainPID", "ActiveState")
		pid, _ := strconv.Atoi(st["MainPID"])
		if pid != 0 && pid != old && st["ActiveState"] == "active" {
			if code, marked := v.curl(ctx, goalStateURL, wsVersion); code == http.StatusOK && marked {
				return pid
			}
		}
		if time.Now().After(deadline) {
			v.t.Fatalf("agent not restarted by systemd: %v", st)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// curl makes a request from a transient unit of the machine's systemd (so
// inside the cgroup tree the agent attached to) and returns the HTTP
// status (0: no response) and whether the agent's marker came back.
func (v *vm) curl(ctx context.Context, url string, headers ...string) (int, bool) {
	v.t.Helper()
	return v.curlIn(ctx, "", 10, url, headers...)
}

// addContainer creates the network namespace name inside the machine,
// wired to the machine's namespace by a veth pair as Docker's bridge
// wires a container: the machine's end gets gateway, the container's
// addr, and the container's default route goes through gateway. The
// machine is thrown away with everything in it when the test ends.
func (v *vm) addContainer(ctx context.Context, name, gateway, addr string) {
	v.t.Helper()
	gw, _, _ := strings.Cut(gateway, "/")
	vmIf := "v-" + strings.TrimPrefix(name, "gpa-")
	v.run(ctx, "ip", "netns", "add", name)
	for _, args := range [][]string{
		{"link", "add", vmIf, "type", "veth", "peer", "name", "eth0", "netns", name},
		{"addr", "add", gateway, "dev", vmIf},
		{"link", "set", vmIf, "up"},
		{"-n", name, "addr", "add", addr, "dev", "eth0"},
		{"-n", name, "link", "set", "eth0", "up"},
		{"-n", name, "link", "set", "lo", "up"},
		{"-n", name, "route", "add", "default", "via", gw},
	} {
		v.run(ctx, "ip", args...)
	}
}

// curlIn is curl from the network namespace netns ("" for the machine's
// own), giving up after maxTime seconds.
func (v *vm) curlIn(ctx context.Context, netns string, maxTime int, url string, headers ...string) (int, bool) {
	v.t.Helper()
	args := []string{"--wait", "--pipe", "--quiet", "--collect"}
	if netns != "" {
		args = append(args, "-p", "NetworkNamespacePath=/run/netns/"+netns)
	}
	args = append(args, "curl", "-s", "-o", "/dev/null", "--noproxy", "*", "--max-time", strconv.Itoa(maxTime),
		"-w", "%{http_code} %header{x-ms-azure-host-authorization}")
	for _, h := range headers {
		args = append(args, "-H", h)
	}
	out, _ := v.m.Run(ctx, "systemd-run", append(args, url)...)
	f := strings.Fields(string(out))
	if len(f) == 0 {
		return 0, false
	}
	code, _ := strconv.Atoi(f[0])
	return code, len(f) > 1 && f[1] == "value"
}

// journal returns the host simulator's journal.
func (v *vm) journal(ctx context.Context) []hostsim.Entry {
	v.t.Helper()
	var j []hostsim.Entry
	if err := json.Unmarshal(v.run(ctx, "curl", "-sf", "--noproxy", "*", controlURL+"/journal"), &j); err != nil {
		v.t.Fatal(err)
	}
	return j
}

// checkJournal requires that, since the agent was installed, the host
// never got an unsigned request to WireServer or IMDS (both in Enforce),
// and that it never served anything it should have refused.
func (v *vm) checkJournal(ctx context.Context) {
	v.t.Helper()
	j := v.journal(ctx)
	unsigned := 0
	for _, en := range j {
		if en.Verdict == hostsim.VerdictUnsigned && en.Seq > v.since {
			unsigned++
			v.t.Errorf("unsigned request at the host: %s %s %s -> %d", en.Service, en.Method, en.Target, en.Status)
		}
		if en.ServedUnaccepted() {
			v.t.Errorf("host served a request it should have refused: %+v", en)
		}
	}
	if len(j) == 0 {
		v.t.Error("host journal is empty; nothing was checked")
	}
	v.t.Logf("host journal: %d requests, %d unsigned since the agent was installed (%d before)", len(j), unsigned, v.since)
}

// waitAudit polls the agent's audit log inside the machine for a record
// that matches.
func (v *vm) waitAudit(ctx context.Context, match func(audit.Record) bool) audit.Record {
	v.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, _ := v.m.Run(ctx, "cat", filepath.Join("/var/log/azure-proxy-agent", audit.AuditLogName))
		var found *audit.Record
		audit.ReadLog(bytes.NewReader(out), func(_ int, r audit.Record) error {
			if found == nil && match(r) {
				found = &r
			}
			return nil
		})
		if found != nil {
			return *found
		}
		if time.Now().After(deadline) {
			v.t.Fatalf("no matching audit record in:\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// lastCommandMessage returns the message the handler logged when it last
// finished verb.
func (v *vm) lastCommandMessage(verb string) string {
	b, _ := os.ReadFile(filepath.Join(v.waagent.LogDir, handler.HandlerLogName))
	msg := ""
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, `msg="command done"`) && strings.Contains(l, "command="+verb) {
			if _, m, ok := strings.Cut(l, "message="); ok {
				msg = m
			}
		}
	}
	return msg
}

// diagnostics gathers what explains a failure: unit states and journals
// inside the machine, the handler's logs and the console.
func (v *vm) diagnostics() string {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var b strings.Builder
	for _, c := range [][]string{
		{"systemctl", "--no-pager", "list-units", "--all", "azure*", "gpa*"},
		{"journalctl", "--no-pager", "-n", "80", "-u", agentUnit},
		{"journalctl", "--no-pager", "-n", "40", "-u", monitorUnit},
		{"journalctl", "--no-pager", "-n", "20", "-u", "azure-host-sim.service"},
	} {
		out, err := v.m.Run(ctx, c[0], c[1:]...)
		fmt.Fprintf(&b, "--- %s (%v)\n%s\n", strings.Join(c, " "), err, out)
	}
	if v.waagent != nil {
		for _, name := range []string{handler.HandlerLogName, handler.MonitorLogName} {
			data, _ := os.ReadFile(filepath.Join(v.waagent.LogDir, name))
			lines := strings.Split(strings.TrimSpace(string(data)), "\n")
			if len(lines) > 40 {
				lines = lines[len(lines)-40:]
			}
			fmt.Fprintf(&b, "--- %s\n%s\n", name, strings.Join(lines, "\n"))
		}
	}
	fmt.Fprintf(&b, "--- console\n%s\n", v.m.Console(30))
	return b.String()
}
