package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/opengpa/gpa/proxyagent/msp"

	"github.com/opengpa/gpa/extension"
	"github.com/opengpa/gpa/handler"
	"github.com/opengpa/gpa/internal/e2eenv"
	"github.com/opengpa/gpa/internal/testenv"
	"github.com/opengpa/gpa/internal/waagentsim"
)

// extVersion is the version the benchmark's extension package is stamped
// with.
const extVersion = "1.0.0"

// benchExtensionStart plays waagent (internal/waagentsim) for a fresh
// install of the real extension package inside the namespace: unpack,
// install, then enable, timed from the start of enable to the first status
// file waagent would read as success with the agent's three substatuses.
// The handler runs hermetically under GPA_ROOT with the supervisor service
// manager; the agent it installs attaches to a cgroup of its own and pins
// under the suite's bpffs. The suite's own agent is stopped first (the
// listener address is the same). Production intervals are kept (monitor
// tick 15 s, service settle 5 s), so the figure is what a VM would see.
func benchExtensionStart(ctx context.Context, b *benchEnv, root string, rep *Report) {
	res := &ExtensionStart{}
	rep.Start.Extension = res
	if err := extensionStart(ctx, b, root, res); err != nil {
		res.Measured = false
		res.Reason = "not measured: " + err.Error()
	}
}

func extensionStart(ctx context.Context, b *benchEnv, moduleRoot string, res *ExtensionStart) (err error) {
	if err := waagentsim.Available(); err != nil {
		return err
	}
	for _, tool := range []string{"zip", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not installed", tool)
		}
	}
	dir := filepath.Join(b.Dir, "extension")
	bin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return err
	}
	ld := "-X github.com/opengpa/gpa/internal/version.Version=" + extVersion
	cmd := exec.CommandContext(ctx, "go", "build", "-ldflags", ld, "-o", bin+"/", "./cmd/ProxyAgentExt", "./cmd/azure-proxy-agent")
	cmd.Dir = moduleRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build: %w: %s", err, tail(string(out), 300))
	}
	pkgOut := filepath.Join(dir, "dist")
	if err := os.MkdirAll(pkgOut, 0o755); err != nil {
		return err
	}
	cmd = exec.CommandContext(ctx, "bash", filepath.Join(moduleRoot, "packaging/package.sh"), extVersion, bin, pkgOut)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("package.sh: %w: %s", err, tail(string(out), 300))
	}
	zipPath := filepath.Join(pkgOut, handler.HandlerName+"-"+extVersion+".zip")

	vmRoot := filepath.Join(dir, "root")
	for _, d := range []string{"etc", "var/lib/waagent"} {
		if err := os.MkdirAll(filepath.Join(vmRoot, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(vmRoot, "etc/os-release"), []byte("NAME=\"Ubuntu\"\nVERSION_ID=\"22.04\"\nID=ubuntu\n"), 0o644); err != nil {
		return err
	}
	cg, err := testenv.CreateCgroup(fmt.Sprintf("gpa-bench-ext-%d", os.Getpid()))
	if err != nil {
		return err
	}
	defer func() {
		killUnder(vmRoot)
		if derr := cg.Delete(); derr != nil {
			err = errors.Join(err, derr)
		}
		_ = os.RemoveAll(filepath.Join(b.BPFFS, "ext"))
	}()
	overlay, _ := json.Marshal(map[string]any{
		"cgroupRoot":                     cg.Path,
		"bpfPinPath":                     filepath.Join(b.BPFFS, "ext"),
		"pollKeyStatusIntervalInSeconds": 1,
		"consoleLog":                     filepath.Join(dir, "console.log"),
	})
	overlayPath := filepath.Join(dir, "overlay.json")
	if err := os.WriteFile(overlayPath, overlay, 0o644); err != nil {
		return err
	}
	env := append(e2eenv.CleanEnv(),
		handler.EnvRoot+"="+vmRoot,
		handler.EnvConfigOverlay+"="+overlayPath,
		handler.EnvServiceManager+"=supervisor",
		handler.EnvAggregateURL+"=http://"+listenerAddr+msp.AggregateStatusPath,
	)
	wa := &waagentsim.Agent{
		LibDir: filepath.Join(vmRoot, "var/lib/waagent"),
		LogDir: filepath.Join(vmRoot, "var/log/azure", handler.HandlerName),
		Env:    env,
		Start:  func(c *exec.Cmd) error { return testenv.Start(c, testenv.Options{Netns: b.Netns}) },
	}
	base, err := wa.Unpack(zipPath, handler.HandlerName, extVersion)
	if err != nil {
		return err
	}
	if err := waagentsim.WriteSettings(base, 0, ""); err != nil {
		return err
	}
	if err := b.StopAgent(); err != nil {
		return fmt.Errorf("stop the suite's agent: %w", err)
	}
	extra := map[string]string{extension.EnvUninstallExitCode: "NOT_RUN"}
	r, err := wa.Run(ctx, base, "install", 0, extra)
	if err != nil {
		return err
	}
	if r.ExitCode != 0 {
		return fmt.Errorf("install exited %d: %s", r.ExitCode, tail(r.Output, 300))
	}
	res.InstallMs = ms(r.Elapsed)
	t0 := time.Now()
	r, err = wa.Run(ctx, base, "enable", 0, extra)
	if err != nil {
		return err
	}
	if r.ExitCode != 0 {
		return fmt.Errorf("enable exited %d: %s", r.ExitCode, tail(r.Output, 300))
	}
	res.EnableCommandMs = ms(r.Elapsed)
	statusPath := waagentsim.StatusPath(base, 0)
	deadline := time.Now().Add(90 * time.Second)
	last := ""
	for {
		it, err := extension.ReadStatus(statusPath)
		if err == nil {
			last = it.Status.Status
			if it.Status.Status == "success" && len(it.Status.Substatus) == 3 {
				res.Ms = append(res.Ms, ms(time.Since(t0)))
				res.MedianMs = median(res.Ms)
				res.Measured = true
				res.Settings = "fresh install (waagentsim, supervisor service manager), production intervals: monitor tick 15 s, service settle 5 s"
				// Judge the file with waagent's own parser, as waagent would.
				if st, perr := waagentsim.ParseStatus(statusPath); perr == nil {
					if rej := st.Rejected(); rej != nil {
						res.Reason = "waagent rejects the status: " + rej.Error()
					}
				}
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no success status within 90 s of enable (last status %q)", last)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// killUnder kills every process whose executable lives under dir (the
// handler's monitor, supervisor and agent), three rounds so a supervisor
// cannot restart what was just killed.
func killUnder(dir string) {
	for round := 0; round < 3; round++ {
		for _, p := range handler.ListProcs() {
			if strings.HasPrefix(p.Exe, dir+"/") {
				_ = syscall.Kill(p.PID, syscall.SIGKILL)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
}
