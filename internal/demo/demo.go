// Package demo runs the whole Guest Proxy Agent system on a simulated VM
// and narrates it (what `make demo` shows): azure-host-sim plays Azure's
// WireServer, IMDS, HostGAPlugin and storage inside a private network
// namespace, and the VM model it is given carries the ProxyAgent extension.
// The real Azure Linux Agent (Debian's waagent, in a private mount
// namespace) reads the goal state, downloads, installs and enables the real
// VM extension package, which installs and starts the real agent; the
// instance view is shown as the portal would, then clients inside and
// outside the attached cgroup call the services as root and as nobody.
// Then IMDS moves from Audit to Enforce at the host, the audit summary is
// shown, and ARM removes the extension through a new goal state.
//
// Every component logs to files in the demo's directory; the narration is
// a line per step. Run removes everything it created (namespace, cgroup,
// bpffs, processes, files) when it returns, also on failure or when ctx is
// cancelled (Ctrl-C); on failure it keeps the log directory and says where
// it is. It needs root.
package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/opengpa/gpa/handler"
	"github.com/opengpa/gpa/hostsim"
	"github.com/opengpa/gpa/internal/e2eenv"
	"github.com/opengpa/gpa/proxyagent/audit"
	"github.com/opengpa/gpa/proxyagent/msp"
	"github.com/opengpa/gpa/proxyagent/status"
)

// Options say where the binaries are and where to narrate.
type Options struct {
	// BinDir holds azure-proxy-agent, azure-host-sim and ProxyAgentExt
	// (`make build`).
	BinDir string
	// ModuleDir is the source tree (for packaging/package.sh).
	ModuleDir string
	// Version is the extension version waagent installs.
	Version string
	// Out receives the narration.
	Out io.Writer
}

// IMDSProfileID is the ARM id of the demo's IMDS inVMAccessControlProfile
// version.
const IMDSProfileID = "/subscriptions/0000/resourceGroups/demo/providers/Microsoft.Compute/galleries/demo/inVMAccessControlProfiles/imds-root-curl/versions/1.0.0"

// imdsProfile allows root's curl to read /metadata and nothing else.
const imdsProfile = `{"id": "` + IMDSProfileID + `", "name": "1.0.0",
 "properties": {"mode": "Audit", "defaultAccess": "Deny", "rules": {
  "privileges": [{"name": "metadata", "path": "/metadata"}],
  "roles": [{"name": "metadataReader", "privileges": ["metadata"]}],
  "identities": [{"name": "rootCurl", "userName": "root", "processName": "curl"}],
  "roleAssignments": [{"role": "metadataReader", "identities": ["rootCurl"]}]}}}`

// proxyAgentSettings is the VM model's securityProfile.proxyAgentSettings.
func proxyAgentSettings(wireServerMode, imdsMode string) map[string]any {
	return map[string]any{
		"enabled":          true,
		"keyIncarnationId": 1,
		"wireServer":       map[string]any{"mode": wireServerMode},
		"imds":             map[string]any{"mode": imdsMode, "inVMAccessControlProfileReferenceId": IMDSProfileID},
	}
}

// settings is the VM model's securityProfile with proxyAgentSettings, as
// an ARM template sets it.
func settings(wireServerMode, imdsMode string) string {
	doc := map[string]any{"securityProfile": map[string]any{"proxyAgentSettings": proxyAgentSettings(wireServerMode, imdsMode)}}
	b, _ := json.MarshalIndent(doc, "  ", "  ")
	return string(b)
}

// vmModel is the ARM VM model: the proxyAgentSettings and, when version is
// set, the ProxyAgent extension resource (typeHandlerVersion version).
func vmModel(ps any, version string) map[string]any {
	m := map[string]any{"properties": map[string]any{"securityProfile": map[string]any{"proxyAgentSettings": ps}},
		"resources": []any{}}
	if version != "" {
		m["resources"] = []any{map[string]any{"name": "ProxyAgentLinux", "type": hostsim.ExtensionResourceType,
			"properties": map[string]any{"publisher": "Microsoft.CPlat.ProxyAgent", "type": "ProxyAgentLinux",
				"typeHandlerVersion": version, "autoUpgradeMinorVersion": true, "settings": map[string]any{}}}}
	}
	return m
}

// Service URLs the clients call; each gets &demo=<n> so the host's journal
// and the agent's audit log can be matched to the request.
var (
	imdsURL       = "http://" + msp.IMDSAddr.Addr().String() + "/metadata/instance?api-version=2021-02-01"
	wireServerURL = "http://" + msp.WireServerAddr.Addr().String() + "/machine?comp=goalstate"
)

type run struct {
	o   Options
	out io.Writer
	env *e2eenv.Env
	wa  *e2eenv.Waagent
	// agentLogs is the installed agent's log folder (audit log).
	agentLogs string
	n         int
	start     time.Time
}

// Run runs the demo. The error says which step failed.
func Run(ctx context.Context, o Options) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("the demo needs root (network namespace, cgroup, eBPF): run it with sudo")
	}
	if err := preflight(o); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "gpa-demo-")
	if err != nil {
		return err
	}
	r := &run{o: o, out: o.Out, start: time.Now()}
	defer func() {
		cerr := r.cleanup()
		if err == nil && cerr != nil {
			err = cerr
		}
		if err != nil && ctx.Err() != nil {
			os.RemoveAll(dir)
			fmt.Fprintf(r.out, "\nInterrupted; namespace, cgroup, bpffs, processes and files removed.\n")
			err = ctx.Err()
			return
		}
		if err != nil {
			if logs := r.logs(dir); len(logs) > 0 {
				fmt.Fprintf(r.out, "\nFAILED. Component logs kept in %s:\n", dir)
				for _, p := range logs {
					fmt.Fprintf(r.out, "  %s\n", p)
				}
			} else {
				os.RemoveAll(dir)
			}
			return
		}
		os.RemoveAll(dir)
		fmt.Fprintf(r.out, "\nDone in %v; namespace, cgroup, bpffs, processes and files removed.\n", time.Since(r.start).Round(100*time.Millisecond))
	}()
	return r.main(ctx, dir)
}

func preflight(o Options) error {
	for _, b := range []string{"azure-proxy-agent", "azure-host-sim", "ProxyAgentExt"} {
		if _, err := os.Stat(filepath.Join(o.BinDir, b)); err != nil {
			return fmt.Errorf("%s missing in %s: run `make build` first", b, o.BinDir)
		}
	}
	for _, tool := range []string{"ip", "curl", "zip", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not installed: run `make deps`", tool)
		}
	}
	if err := e2eenv.WaagentAvailable(); err != nil {
		return fmt.Errorf("%v: run `make deps`", err)
	}
	return nil
}

func (r *run) logs(dir string) []string {
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && strings.HasSuffix(p, ".log") {
			out = append(out, p)
		}
		return nil
	})
	return out
}

func (r *run) cleanup() error {
	if r.env == nil {
		return nil
	}
	if r.wa != nil {
		r.wa.Stop()
	}
	return r.env.Close()
}

func (r *run) say(format string, args ...any) { fmt.Fprintf(r.out, format+"\n", args...) }

func (r *run) step(title string) { r.say("\n== %s", title) }

func (r *run) main(ctx context.Context, dir string) error {
	o := r.o
	bin := e2eenv.Binaries{Agent: filepath.Join(o.BinDir, "azure-proxy-agent"), HostSim: filepath.Join(o.BinDir, "azure-host-sim")}
	r.step("1. A simulated Azure VM whose model carries the ProxyAgent extension")
	zip, err := e2eenv.PackageExtension(ctx, o.ModuleDir, o.Version, bin.Agent, filepath.Join(o.BinDir, "ProxyAgentExt"), filepath.Join(dir, "pkg"))
	if err != nil {
		return fmt.Errorf("package the extension: %w", err)
	}
	r.say("packaging/package.sh %s %s -> %s", o.Version, o.BinDir, filepath.Base(zip))
	setupCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	r.env, err = e2eenv.Setup(setupCtx, e2eenv.Config{Bin: bin, Settings: settings("Audit", "Audit"), NoAgent: true, Dir: dir})
	cancel()
	if err != nil {
		return fmt.Errorf("start the simulated VM: %w", err)
	}
	e := r.env
	if _, err := e.Control(ctx, http.MethodPut, "/profiles/"+url.PathEscape(IMDSProfileID), imdsProfile); err != nil {
		return fmt.Errorf("give the host the IMDS profile: %w", err)
	}
	if err := e.PublishPackage(ctx, o.Version, zip); err != nil {
		return fmt.Errorf("publish the extension package: %w", err)
	}
	r.say("network namespace %s; azure-host-sim serves WireServer %s, HostGAPlugin %s, IMDS %s and storage %s there",
		e.Netns.Name, e2eenv.WireServerAddr, e2eenv.HostGAAddr, e2eenv.IMDSAddr, e2eenv.StorageAddr)
	r.say("cgroup %s (the eBPF programs attach here), private bpffs %s", e.Cgroup.Path, e.BPFFS)
	// The extension arrives with the host in Audit: waagent fetches it
	// unsigned, as no key is latched yet.
	model := vmModel(proxyAgentSettings("Audit", "Audit"), majorMinor(o.Version))
	incarnation, err := e.SetVM(ctx, model)
	if err != nil {
		return fmt.Errorf("apply the VM model: %w", err)
	}
	b, _ := json.MarshalIndent(model, "  ", "  ")
	r.say("VM model (ARM), IMDS with a profile allowing only root's curl:\n  %s", b)
	gs, err := e.Control(ctx, http.MethodGet, "/goalstate", nil)
	if err != nil {
		return err
	}
	var goal struct {
		ExtensionsConfig string `json:"extensionsConfig"`
	}
	json.Unmarshal(gs, &goal)
	r.say("goal state incarnation %d, ExtensionsConfig:", incarnation)
	for _, line := range strings.Split(strings.TrimSpace(goal.ExtensionsConfig), "\n") {
		if strings.Contains(line, "<Plugin ") || strings.Contains(line, "<RuntimeSettings") || strings.Contains(line, "<StatusUploadBlob") {
			r.say("  %s", strings.TrimSpace(line))
		}
	}

	r.step("2. waagent installs and enables the extension")
	ver, err := e2eenv.WaagentVersion()
	if err != nil {
		return err
	}
	if r.wa, err = e.NewWaagent(e2eenv.WaagentConfig{}); err != nil {
		return err
	}
	started := time.Now()
	if err := r.wa.Start(); err != nil {
		return err
	}
	r.say("waagent %s -run-exthandlers (private waagent.conf, Lib.Dir and log in a private mount namespace)", ver)
	iv, err := r.waitHealthy(ctx)
	if err != nil {
		return err
	}
	for _, line := range strings.Split(r.wa.Log(), "\n") {
		if strings.Contains(line, handler.HandlerName) && !strings.Contains(line, "Executing command") &&
			(strings.Contains(line, "install") || strings.Contains(line, "nable") || strings.Contains(line, "Download")) {
			r.say("  %s", strings.TrimSpace(line))
		}
	}
	r.say("instance view (az vm get-instance-view), %.1fs after waagent started:", time.Since(started).Seconds())
	r.instanceView(iv)
	r.agentLogs = handler.NewLayout(r.wa.Root).LogDir()

	r.step("3. Requests (WireServer Enforce, IMDS in Audit)")
	if err := e.SetSettings(ctx, settings("Enforce", "Audit")); err != nil {
		return fmt.Errorf("switch WireServer to Enforce: %w", err)
	}
	if _, err := r.waitAgentState(ctx, "WireServer Enforce"); err != nil {
		return err
	}
	k, err := e.AddContainer(0)
	if err != nil {
		return fmt.Errorf("create a container: %w", err)
	}
	r.say("a container like Docker's bridge network makes: its own network namespace (%s, address %s behind a veth),\n"+
		"its own cgroup %s; it reaches the agent at its container listener", k.Netns.Name, k.Addr, k.CgroupPath)
	r.header()
	calls := []call{
		{"root", e2eenv.Root, "IMDS", imdsURL, "Metadata: true"},
		{"nobody", e2eenv.Nobody, "IMDS", imdsURL, "Metadata: true"},
		{"nobody, in a container", e2eenv.Nobody.In(k), "IMDS", imdsURL, "Metadata: true"},
		{"root", e2eenv.Root, "WireServer", wireServerURL, "x-ms-version: 2012-11-30"},
		{"nobody", e2eenv.Nobody, "WireServer", wireServerURL, "x-ms-version: 2012-11-30"},
		{"root, in a container", e2eenv.Root.In(k), "WireServer", wireServerURL, "x-ms-version: 2012-11-30"},
		{"root, outside the cgroup (bypass)", e2eenv.Root.Outside(), "WireServer", wireServerURL, "x-ms-version: 2012-11-30"},
	}
	if err := r.calls(ctx, calls); err != nil {
		return err
	}

	r.step("4. The host switches IMDS to Enforce (same profile)")
	if err := e.SetSettings(ctx, settings("Enforce", "Enforce")); err != nil {
		return fmt.Errorf("switch IMDS to Enforce: %w", err)
	}
	state, err := r.waitAgentState(ctx, "IMDS Enforce")
	if err != nil {
		return err
	}
	r.say("agent's secureChannelState: %s", state)
	r.header()
	if err := r.calls(ctx, calls[:3]); err != nil {
		return err
	}

	r.step("5. Instance view and audit summary")
	if iv, err = r.waitHealthy(ctx); err != nil {
		return err
	}
	r.instanceView(iv)
	r.say("azure-proxy-agent audit report --dir %s:", r.agentLogs)
	rep, err := exec.CommandContext(ctx, handler.NewLayout(r.wa.Root).AgentBinary(), "audit", "report", "--dir", r.agentLogs).CombinedOutput()
	if err != nil {
		return fmt.Errorf("audit report: %w: %s", err, rep)
	}
	for _, line := range strings.Split(strings.TrimRight(string(rep), "\n"), "\n") {
		r.say("  %s", line)
	}

	r.say("azure-proxy-agent doctor --root %s (read-only checks, in the VM's network namespace):", r.wa.Root)
	doc, err := e.Run(ctx, e2eenv.Root, handler.NewLayout(r.wa.Root).AgentBinary(), "doctor", "--root", r.wa.Root)
	if err != nil {
		return fmt.Errorf("doctor: %w", err)
	}
	for _, line := range strings.Split(strings.TrimRight(string(doc.Stdout), "\n"), "\n") {
		r.say("  %s", line)
	}
	r.say("doctor exit %d", doc.ExitCode)

	r.step("6. ARM removes the extension (and disables proxyAgentSettings)")
	if _, err := e.SetVM(ctx, vmModel(map[string]any{"enabled": false}, "")); err != nil {
		return fmt.Errorf("remove the extension: %w", err)
	}
	rctx, rcancel := context.WithTimeout(ctx, 60*time.Second)
	defer rcancel()
	if _, err := r.wa.WaitInstanceView(rctx, func(iv hostsim.InstanceView) bool {
		return len(iv.Extensions) == 0 && len(r.wa.Processes()) == 0 && len(r.wa.Pins()) == 0
	}); err != nil {
		return fmt.Errorf("removal: %w; still running: %+v", err, r.wa.Processes())
	}
	for _, line := range strings.Split(r.wa.Log(), "\n") {
		if strings.Contains(line, handler.HandlerName) && !strings.Contains(line, "Executing command") &&
			(strings.Contains(line, "isable") || strings.Contains(line, "ninstall")) {
			r.say("  %s", strings.TrimSpace(line))
		}
	}
	r.say("waagent disabled and uninstalled it: agent, supervisor and monitor stopped, service unit and pinned eBPF redirect removed")
	return nil
}

// majorMinor is "1.2" of "1.2.3", the typeHandlerVersion ARM takes.
func majorMinor(v string) string {
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return v
	}
	return parts[0] + "." + parts[1]
}

// waitHealthy waits until the instance view shows the extension
// succeeded with the agent's three substatuses.
func (r *run) waitHealthy(ctx context.Context) (hostsim.InstanceView, error) {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	iv, err := r.wa.WaitInstanceView(ctx, func(iv hostsim.InstanceView) bool {
		for _, x := range iv.Extensions {
			if x.Type == handler.HandlerName && len(x.Statuses) == 1 && x.Statuses[0].Code == "ProvisioningState/succeeded" && len(x.Substatuses) == 3 {
				return true
			}
		}
		return false
	})
	if err != nil {
		return iv, fmt.Errorf("wait for the extension in the instance view: %w", err)
	}
	return iv, nil
}

// instanceView narrates an instance view as the portal shows it.
func (r *run) instanceView(iv hostsim.InstanceView) {
	if a := iv.VMAgent; a != nil {
		for _, st := range a.Statuses {
			r.say("  VM agent %s: %s (%s) %q", a.VMAgentVersion, st.DisplayStatus, st.Code, st.Message)
		}
		for _, h := range a.ExtensionHandlers {
			r.say("  handler %s %s: %s (%s) %q", h.Type, h.TypeHandlerVersion, h.Status.DisplayStatus, h.Status.Code, h.Status.Message)
		}
	}
	for _, x := range iv.Extensions {
		for _, st := range x.Statuses {
			r.say("  extension %s %s: %s (%s) %q", x.Name, x.TypeHandlerVersion, st.DisplayStatus, st.Code, st.Message)
		}
		for _, sub := range x.Substatuses {
			msg := sub.Message
			if sub.Code == "ComponentStatus/"+handler.SubAgentStatus+"/succeeded" {
				var as status.AgentStatus
				if json.Unmarshal([]byte(sub.Message), &as) == nil {
					msg = fmt.Sprintf("keyLatchStatus %s %s; ebpfProgramStatus %s", as.KeyLatchStatus.Status, keyStates(as.KeyLatchStatus), as.EbpfProgramStatus.Status)
				}
			}
			if len(msg) > 100 {
				msg = msg[:100] + "..."
			}
			r.say("    %s: %s", sub.Code, msg)
		}
	}
}

func keyStates(m status.ModuleStatus) string {
	var parts []string
	for _, k := range []string{"keyGuid", "secureChannelState", "wireServerRuleId", "imdsRuleId"} {
		if v, ok := m.States[k]; ok && v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	return strings.Join(parts, " ")
}

// waitAgentState waits until the agent's status.json reports a secure
// channel state containing want.
func (r *run) waitAgentState(ctx context.Context, want string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	path := handler.StatusJSONPath(handler.NewLayout(r.wa.Root))
	var last string
	for {
		if b, err := os.ReadFile(path); err == nil {
			var a status.Aggregate
			if json.Unmarshal(b, &a) == nil {
				last = a.ProxyAgentStatus.KeyLatchStatus.States["secureChannelState"]
				if strings.Contains(last, want) {
					return last, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("the agent did not reach %q (last %q): %w", want, last, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

type call struct {
	who     string
	caller  e2eenv.Caller
	service string
	url     string
	header  string
}

func (r *run) header() {
	r.say("  %-34s %-10s %-5s %-9s %-30s %s", "caller (curl)", "service", "HTTP", "endorsed", "host verdict (journal)", "agent decision (audit log)")
}

// calls makes each call, then reports its outcome with the host's journal
// entry and the agent's audit record.
func (r *run) calls(ctx context.Context, calls []call) error {
	e := r.env
	type done struct {
		c      call
		tag    string
		status int
		marked bool
	}
	var results []done
	for _, c := range calls {
		r.n++
		tag := fmt.Sprintf("demo=%d", r.n)
		resp, err := e.Curl(ctx, c.caller, c.url+"&"+tag, c.header)
		if err != nil {
			return fmt.Errorf("%s calls %s: %w", c.who, c.service, err)
		}
		results = append(results, done{c, tag, resp.Status, resp.Marked()})
	}
	journal, err := e.Journal(ctx, 0)
	if err != nil {
		return err
	}
	// Records of requests that went through the agent (bypass excluded).
	recs := map[string]audit.Record{}
	want := 0
	for _, d := range results {
		if !d.c.caller.Bypass {
			want++
		}
	}
	auditCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for len(recs) < want {
		all, _ := readAudit(r.agentLogs)
		for _, rec := range all {
			for _, d := range results {
				if strings.HasSuffix(rec.Target, "&"+d.tag) {
					recs[d.tag] = rec
				}
			}
		}
		if len(recs) >= want {
			break
		}
		select {
		case <-auditCtx.Done():
			want = 0 // report what is there
		case <-time.After(200 * time.Millisecond):
		}
	}
	for _, d := range results {
		verdict := "never reached the host"
		for _, en := range journal {
			if strings.HasSuffix(en.Target, "&"+d.tag) {
				verdict = fmt.Sprintf("%s, %s -> %d", en.Verdict, en.Mode, en.Status)
				if en.Verdict == hostsim.VerdictValid {
					verdict = fmt.Sprintf("signed/valid, %s -> %d", en.Mode, en.Status)
				}
			}
		}
		decision := "-"
		if rec, ok := recs[d.tag]; ok {
			decision = rec.Decision
			if rec.Mode != "" {
				decision += " (" + rec.Mode + ")"
			}
		} else if d.c.caller.Bypass {
			decision = "none: not redirected"
		}
		endorsed := "no"
		if d.marked {
			endorsed = "yes"
		}
		code := "-"
		if d.status != 0 {
			code = fmt.Sprint(d.status)
		}
		r.say("  %-34s %-10s %-5s %-9s %-30s %s", d.c.who, d.c.service, code, endorsed, verdict, decision)
	}
	return nil
}

func readAudit(dir string) ([]audit.Record, error) {
	b, err := os.ReadFile(filepath.Join(dir, audit.AuditLogName))
	if err != nil {
		return nil, err
	}
	var out []audit.Record
	err = audit.ReadLog(bytes.NewReader(b), func(_ int, rec audit.Record) error {
		out = append(out, rec)
		return nil
	})
	return out, err
}
