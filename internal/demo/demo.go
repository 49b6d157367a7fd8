// Package demo runs the whole Guest Proxy Agent system on a simulated VM
// and narrates it (what `make demo` shows): azure-host-sim plays Azure's
// WireServer and IMDS inside a private network namespace, waagent (played by
// internal/waagentsim) installs and enables the real VM extension package,
// the extension installs and starts the real agent, and clients inside and
// outside the attached cgroup call the services as root and as nobody.
// Then IMDS moves from Audit to Enforce at the host, the instance view and
// the audit summary are shown, and the extension is uninstalled.
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

	"github.com/opengpa/gpa/proxyagent/msp"

	"github.com/opengpa/gpa/extension"
	"github.com/opengpa/gpa/handler"
	"github.com/opengpa/gpa/hostsim"
	"github.com/opengpa/gpa/internal/e2eenv"
	"github.com/opengpa/gpa/internal/waagentsim"
	"github.com/opengpa/gpa/proxyagent/audit"
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

// settings is the VM model's securityProfile with proxyAgentSettings, as
// an ARM template sets it.
func settings(imdsMode string) string {
	doc := map[string]any{"securityProfile": map[string]any{"proxyAgentSettings": map[string]any{
		"enabled":          true,
		"keyIncarnationId": 1,
		"wireServer":       map[string]any{"mode": "Enforce"},
		"imds":             map[string]any{"mode": imdsMode, "inVMAccessControlProfileReferenceId": IMDSProfileID},
	}}}
	b, _ := json.MarshalIndent(doc, "  ", "  ")
	return string(b)
}

// Service URLs the clients call; each gets &demo=<n> so the host's journal
// and the agent's audit log can be matched to the request.
var (
	imdsURL       = "http://" + msp.IMDSAddr.Addr().String() + "/metadata/instance?api-version=2021-02-01"
	wireServerURL = "http://" + msp.WireServerAddr.Addr().String() + "/machine?comp=goalstate"
)

type run struct {
	o     Options
	out   io.Writer
	env   *e2eenv.Env
	ext   *e2eenv.Extension
	n     int
	start time.Time
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
	if err := waagentsim.Available(); err != nil {
		return fmt.Errorf("%v: run `make deps` (Debian package waagent)", err)
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
	return r.env.Close()
}

func (r *run) say(format string, args ...any) { fmt.Fprintf(r.out, format+"\n", args...) }

func (r *run) step(title string) { r.say("\n== %s", title) }

func (r *run) main(ctx context.Context, dir string) error {
	o := r.o
	bin := e2eenv.Binaries{Agent: filepath.Join(o.BinDir, "azure-proxy-agent"), HostSim: filepath.Join(o.BinDir, "azure-host-sim")}
	r.step("1. A simulated Azure VM")
	zip, err := e2eenv.PackageExtension(ctx, o.ModuleDir, o.Version, bin.Agent, filepath.Join(o.BinDir, "ProxyAgentExt"), filepath.Join(dir, "pkg"))
	if err != nil {
		return fmt.Errorf("package the extension: %w", err)
	}
	r.say("packaging/package.sh %s %s -> %s", o.Version, o.BinDir, filepath.Base(zip))
	setupCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	r.env, err = e2eenv.Setup(setupCtx, e2eenv.Config{Bin: bin, Settings: settings("Audit"), NoAgent: true, Dir: dir})
	cancel()
	if err != nil {
		return fmt.Errorf("start the simulated VM: %w", err)
	}
	e := r.env
	if _, err := e.Control(ctx, http.MethodPut, "/profiles/"+url.PathEscape(IMDSProfileID), imdsProfile); err != nil {
		return fmt.Errorf("give the host the IMDS profile: %w", err)
	}
	r.say("network namespace %s; azure-host-sim serves WireServer %s and IMDS %s there", e.Netns.Name, e2eenv.WireServerAddr, e2eenv.IMDSAddr)
	r.say("cgroup %s (the eBPF programs attach here), private bpffs %s", e.Cgroup.Path, e.BPFFS)
	r.say("VM model (ARM): WireServer Enforce, IMDS Audit with a profile allowing only root's curl:")
	r.say("  %s", settings("Audit"))

	r.step("2. waagent installs and enables the extension")
	x, err := e.InstallExtension(e2eenv.ExtensionConfig{Zip: zip, Version: o.Version})
	if err != nil {
		return fmt.Errorf("waagent download: %w", err)
	}
	r.ext = x
	r.say("waagent: download %s -> %s (HandlerEnvironment.json, 0.settings)", filepath.Base(zip), x.Dir)
	fresh := map[string]string{extension.EnvUninstallExitCode: "NOT_RUN"}
	for _, verb := range []string{"install", "enable"} {
		if err := r.waagent(ctx, verb, fresh); err != nil {
			return err
		}
	}
	enabled := time.Now()
	waitCtx, cancel := context.WithTimeout(ctx, 40*time.Second)
	st, err := x.WaitStatus(waitCtx, 0, "success", 3)
	cancel()
	if err != nil {
		return fmt.Errorf("wait for the extension status: %w", err)
	}
	r.say("waagent: status file 0.status parsed: status=%s code=%d operation=%s message=%q (%.1fs after enable)",
		st.Status, st.Code, st.Operation, st.Message, time.Since(enabled).Seconds())

	r.step("3. Requests (IMDS in Audit)")
	r.header()
	calls := []call{
		{"root", e2eenv.Root, "IMDS", imdsURL, "Metadata: true"},
		{"nobody", e2eenv.Nobody, "IMDS", imdsURL, "Metadata: true"},
		{"root", e2eenv.Root, "WireServer", wireServerURL, "x-ms-version: 2012-11-30"},
		{"nobody", e2eenv.Nobody, "WireServer", wireServerURL, "x-ms-version: 2012-11-30"},
		{"root, outside the cgroup (bypass)", e2eenv.Root.Outside(), "WireServer", wireServerURL, "x-ms-version: 2012-11-30"},
	}
	if err := r.calls(ctx, calls); err != nil {
		return err
	}

	r.step("4. The host switches IMDS to Enforce (same profile)")
	if err := e.SetSettings(ctx, settings("Enforce")); err != nil {
		return fmt.Errorf("switch IMDS to Enforce: %w", err)
	}
	state, err := r.waitAgentState(ctx, "IMDS Enforce")
	if err != nil {
		return err
	}
	r.say("agent's secureChannelState: %s", state)
	r.header()
	if err := r.calls(ctx, calls[:2]); err != nil {
		return err
	}

	r.step("5. Instance view and audit summary")
	st, err = waagentsim.ParseStatus(x.StatusPath(0))
	if err == nil {
		err = st.Rejected()
	}
	if err != nil {
		return fmt.Errorf("read the instance view: %w", err)
	}
	as, err := e2eenv.AgentStatus(st)
	if err != nil {
		return err
	}
	r.say("extension status: %s (code %d) %q", st.Status, st.Code, st.Message)
	r.say("  keyLatchStatus:    %s %s", as.KeyLatchStatus.Status, keyStates(as.KeyLatchStatus))
	r.say("  ebpfProgramStatus: %s %q", as.EbpfProgramStatus.Status, as.EbpfProgramStatus.Message)
	r.say("azure-proxy-agent audit report --dir %s:", x.AgentLogFolder())
	rep, err := exec.CommandContext(ctx, x.Layout.AgentBinary(), "audit", "report", "--dir", x.AgentLogFolder()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("audit report: %w: %s", err, rep)
	}
	for _, line := range strings.Split(strings.TrimRight(string(rep), "\n"), "\n") {
		r.say("  %s", line)
	}

	r.say("azure-proxy-agent doctor --root %s (read-only checks, in the VM's network namespace):", x.Root)
	doc, err := e.Run(ctx, e2eenv.Root, x.Layout.AgentBinary(), "doctor", "--root", x.Root)
	if err != nil {
		return fmt.Errorf("doctor: %w", err)
	}
	for _, line := range strings.Split(strings.TrimRight(string(doc.Stdout), "\n"), "\n") {
		r.say("  %s", line)
	}
	r.say("doctor exit %d", doc.ExitCode)

	r.step("6. waagent uninstalls the extension")
	for _, verb := range []string{"disable", "uninstall"} {
		if err := r.waagent(ctx, verb, nil); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(x.Processes()) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if left := x.Processes(); len(left) > 0 {
		return fmt.Errorf("processes left after uninstall: %+v", left)
	}
	if pins := x.Pins(); len(pins) > 0 {
		return fmt.Errorf("pinned eBPF objects left after uninstall: %s", strings.Join(pins, " "))
	}
	r.say("agent, supervisor and monitor stopped; service unit and pinned eBPF redirect removed")
	return nil
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

// waagent runs one handler command and narrates it.
func (r *run) waagent(ctx context.Context, verb string, extra map[string]string) error {
	res, err := r.ext.Run(ctx, verb, 0, extra)
	if err != nil {
		return fmt.Errorf("waagent %s: %w", verb, err)
	}
	r.say("waagent: %-9s exit %d (%v)", verb, res.ExitCode, res.Elapsed.Round(time.Millisecond))
	if res.ExitCode != 0 {
		return fmt.Errorf("waagent %s: exit %d: %s", verb, res.ExitCode, res.Output)
	}
	return nil
}

// waitAgentState waits until the agent's status.json reports a secure
// channel state containing want.
func (r *run) waitAgentState(ctx context.Context, want string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	path := handler.StatusJSONPath(r.ext.Layout)
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
		all, _ := readAudit(r.ext.AgentLogFolder())
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
