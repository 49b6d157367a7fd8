package packaging

import (
	"archive/zip"
	"bytes"
	"debug/elf"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/opengpa/gpa/extension"
	"github.com/opengpa/gpa/handler"
	"github.com/opengpa/gpa/internal/testenv"
)

const testVersion = "9.9.9-arch"

// build compiles the agent and the handler for linux/goarch into
// dir/linux-<goarch>, as `make package` does.
func build(t *testing.T, dir, goarch string) {
	t.Helper()
	out := filepath.Join(dir, "linux-"+goarch)
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	for _, b := range []string{"azure-proxy-agent", "ProxyAgentExt"} {
		cmd := exec.Command(goTool, "build", "-trimpath", "-ldflags", "-s -w -X github.com/opengpa/gpa/internal/version.Version="+testVersion,
			"-o", filepath.Join(out, b), "../cmd/"+b)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s for %s: %v\n%s", b, goarch, err, out)
		}
	}
}

// unzip extracts the zip into dir with the modes it records.
func unzip(t *testing.T, path, dir string) {
	t.Helper()
	r, err := zip.OpenReader(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, f := range r.File {
		p := filepath.Join(dir, f.Name)
		if f.FileInfo().IsDir() {
			os.MkdirAll(p, 0o755)
			continue
		}
		os.MkdirAll(filepath.Dir(p), 0o755)
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, f.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
}

// checkELF requires a static little-endian 64-bit executable for machine.
func checkELF(t *testing.T, path string, machine elf.Machine) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Errorf("%s: %v", path, err)
		return
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Data != elf.ELFDATA2LSB || f.Machine != machine || f.Type != elf.ET_EXEC || f.OSABI != elf.ELFOSABI_NONE {
		t.Errorf("%s: class %v data %v machine %v type %v abi %v, want ELF64 LSB %v EXEC", path, f.Class, f.Data, f.Machine, f.Type, f.OSABI, machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s is dynamically linked; the extension needs static binaries", path)
		}
	}
}

// TestPackageBothArchitectures builds the packages as `make package` does
// and checks the amd64 and arm64 builds in the two-architecture package,
// that the scripts pick the build for `uname -m`, and — under qemu-user
// (qemu-user-static, required under CI) — that the arm64 agent runs:
// --version and doctor --json; then the package for each architecture.
func TestPackageBothArchitectures(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the agent for two architectures")
	}
	if _, err := exec.LookPath("zip"); err != nil {
		testenv.SkipOrFail(t, "zip is not installed (scripts/deps.sh installs it)")
	}
	bin, dist, ext := t.TempDir(), t.TempDir(), t.TempDir()
	build(t, bin, "amd64")
	build(t, bin, "arm64")
	out, err := exec.Command("bash", "package.sh", testVersion, bin, dist).CombinedOutput()
	if err != nil {
		t.Fatalf("package.sh: %v\n%s", err, out)
	}
	for _, a := range []string{"amd64", "arm64"} {
		if _, err := os.Stat(filepath.Join(dist, "azure-proxy-agent_"+testVersion+"_"+a+".deb")); err != nil && hasDpkgDeb() {
			t.Errorf("no %s .deb: %v", a, err)
		}
	}
	unzip(t, filepath.Join(dist, "Microsoft.CPlat.ProxyAgent.ProxyAgentLinux-"+testVersion+".zip"), ext)

	// Upstream's paths hold the amd64 build; the arm64 build sits beside.
	checkELF(t, filepath.Join(ext, "ProxyAgentExt"), elf.EM_X86_64)
	checkELF(t, filepath.Join(ext, "ProxyAgent/ProxyAgent/azure-proxy-agent"), elf.EM_X86_64)
	checkELF(t, filepath.Join(ext, "ProxyAgentExt-arm64"), elf.EM_AARCH64)
	checkELF(t, filepath.Join(ext, "ProxyAgent/ProxyAgent/azure-proxy-agent-arm64"), elf.EM_AARCH64)
	// One eBPF object for both: little-endian BPF.
	if f, err := elf.Open(filepath.Join(ext, "ProxyAgent/ProxyAgent/ebpf_cgroup.o")); err != nil {
		t.Error(err)
	} else {
		if f.Machine != elf.EM_BPF || f.Data != elf.ELFDATA2LSB {
			t.Errorf("ebpf_cgroup.o: machine %v data %v, want little-endian BPF", f.Machine, f.Data)
		}
		f.Close()
	}
	for _, p := range []string{"HandlerManifest.json", "install.sh", "enable.sh", "select-arch.sh", "ProxyAgent/proxy_agent_setup",
		"ProxyAgent/azure-proxy-agent.service", "ProxyAgent/azure-proxy-agent.8", "ProxyAgent/ProxyAgent/proxy-agent.json"} {
		if _, err := os.Stat(filepath.Join(ext, p)); err != nil {
			t.Errorf("package lacks %s", p)
		}
	}

	t.Run("scripts run the build for uname -m", func(t *testing.T) { checkSelection(t, ext) })
	t.Run("arm64 under qemu-user", func(t *testing.T) { runUnderQemu(t, ext) })

	// One package per architecture, as upstream ships them: its build at
	// upstream's paths (what upstream's e2e scripts run), nothing beside.
	for _, tc := range []struct {
		arch    string
		machine elf.Machine
		uname   string
	}{{"amd64", elf.EM_X86_64, "x86_64"}, {"arm64", elf.EM_AARCH64, "aarch64"}} {
		t.Run("package for "+tc.arch, func(t *testing.T) {
			one := t.TempDir()
			unzip(t, filepath.Join(dist, "linux-"+tc.arch, "Microsoft.CPlat.ProxyAgent.ProxyAgentLinux-"+testVersion+".zip"), one)
			checkELF(t, filepath.Join(one, "ProxyAgentExt"), tc.machine)
			checkELF(t, filepath.Join(one, "ProxyAgent/ProxyAgent/azure-proxy-agent"), tc.machine)
			for _, p := range []string{"ProxyAgentExt-arm64", "ProxyAgent/ProxyAgent/azure-proxy-agent-arm64"} {
				if _, err := os.Stat(filepath.Join(one, p)); err == nil {
					t.Errorf("the %s package has %s", tc.arch, p)
				}
			}
			// Its scripts run its build on its machine and refuse the
			// other.
			other := map[string]string{"x86_64": "aarch64", "aarch64": "x86_64"}[tc.uname]
			if got, code := runScript(t, one, "enable.sh", tc.uname); got != "ProxyAgentExt enable" || code != 0 {
				t.Errorf("enable.sh on %s: %q exit %d", tc.uname, got, code)
			}
			if got, code := runScript(t, one, "enable.sh", other); code != 6 || !strings.Contains(got, "no build for "+other) {
				t.Errorf("enable.sh on %s: %q exit %d, want exit 6", other, got, code)
			}
		})
	}
}

// runScript runs a copy of the package's waagent script (and
// select-arch.sh) beside a stand-in ProxyAgentExt that prints its name,
// with `uname -m` answering machine; it returns the output and exit code.
func runScript(t *testing.T, pkg, script, machine string) (string, int) {
	t.Helper()
	dir, fake := t.TempDir(), t.TempDir()
	for _, f := range []string{script, "select-arch.sh"} {
		data, err := os.ReadFile(filepath.Join(pkg, f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, f), data, 0o755)
	}
	os.WriteFile(filepath.Join(dir, "ProxyAgentExt"), []byte("#!/bin/sh\necho ProxyAgentExt \"$@\"\n"), 0o755)
	os.WriteFile(filepath.Join(fake, "uname"), []byte("#!/bin/sh\necho \"$FAKE_MACHINE\"\n"), 0o755)
	cmd := exec.Command(filepath.Join(dir, script))
	cmd.Env = []string{"PATH=" + fake + ":/usr/bin:/bin", "FAKE_MACHINE=" + machine}
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out)), code
}

func hasDpkgDeb() bool { _, err := exec.LookPath("dpkg-deb"); return err == nil }

// checkSelection runs each waagent script of a copy of the package whose
// handler binaries are stand-ins that print their name, with `uname -m`
// answering each machine.
func checkSelection(t *testing.T, ext string) {
	dir := t.TempDir()
	for _, f := range []string{"install.sh", "uninstall.sh", "enable.sh", "disable.sh", "update.sh", "reset.sh", "select-arch.sh"} {
		data, err := os.ReadFile(filepath.Join(ext, f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, f), data, 0o755)
	}
	for _, b := range []string{"ProxyAgentExt", "ProxyAgentExt-arm64"} {
		os.WriteFile(filepath.Join(dir, b), []byte("#!/bin/sh\necho "+b+" \"$@\"\n"), 0o755)
	}
	setup, err := os.ReadFile(filepath.Join(ext, "ProxyAgent", "proxy_agent_setup"))
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "ProxyAgent"), 0o755)
	os.WriteFile(filepath.Join(dir, "ProxyAgent", "proxy_agent_setup"), setup, 0o755)
	fake := t.TempDir()
	os.WriteFile(filepath.Join(fake, "uname"), []byte("#!/bin/sh\necho \"$FAKE_MACHINE\"\n"), 0o755)
	for _, tc := range []struct{ machine, want string }{{"x86_64", "ProxyAgentExt"}, {"aarch64", "ProxyAgentExt-arm64"}} {
		for _, verb := range []string{"install", "uninstall", "enable", "disable", "update", "reset"} {
			cmd := exec.Command(filepath.Join(dir, verb+".sh"))
			cmd.Env = []string{"PATH=" + fake + ":/usr/bin:/bin", "FAKE_MACHINE=" + tc.machine}
			out, err := cmd.CombinedOutput()
			if got := strings.TrimSpace(string(out)); err != nil || got != tc.want+" "+verb {
				t.Errorf("%s on %s: %q %v, want %q", verb, tc.machine, got, err, tc.want+" "+verb)
			}
		}
	}
	// Upstream's setup tool path runs the build's setup, arguments kept.
	for _, tc := range []struct{ machine, want string }{{"x86_64", "ProxyAgentExt"}, {"aarch64", "ProxyAgentExt-arm64"}} {
		cmd := exec.Command(filepath.Join(dir, "ProxyAgent", "proxy_agent_setup"), "uninstall", "package")
		cmd.Env = []string{"PATH=" + fake + ":/usr/bin:/bin", "FAKE_MACHINE=" + tc.machine}
		out, err := cmd.CombinedOutput()
		if got := strings.TrimSpace(string(out)); err != nil || got != tc.want+" setup uninstall package" {
			t.Errorf("proxy_agent_setup on %s: %q %v", tc.machine, got, err)
		}
	}
	// An unsupported architecture: install and enable write the error
	// status waagent reports and exit 6; the removing commands exit 0.
	statusDir, configDir := t.TempDir(), t.TempDir()
	he := `[{"name":"x","version":"1.0","handlerEnvironment":{"logFolder":"/tmp","configFolder":"` + configDir +
		`","statusFolder":"` + statusDir + `","heartbeatFile":"/tmp/hb"}}]`
	os.WriteFile(filepath.Join(dir, "HandlerEnvironment.json"), []byte(he), 0o644)
	refused := func(machine, verb, want string) {
		t.Helper()
		os.Remove(filepath.Join(statusDir, "5.status"))
		cmd := exec.Command(filepath.Join(dir, verb+".sh"))
		cmd.Env = []string{"PATH=" + fake + ":/usr/bin:/bin", "FAKE_MACHINE=" + machine, "ConfigSequenceNumber=5"}
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		if verb != "install" && verb != "enable" {
			wantCode := 0
			if verb == "update" {
				wantCode = 6 // the upgrade is aborted: the installed version stays
			}
			if code != wantCode || !strings.Contains(string(out), want) {
				t.Errorf("%s on %s: exit %d %q, want exit %d naming %q", verb, machine, code, out, wantCode, want)
			}
			if _, err := os.Stat(extension.StatusPath(statusDir, 5)); err == nil {
				t.Errorf("%s on %s wrote a status", verb, machine)
			}
			return
		}
		if code != 6 || !strings.Contains(string(out), want) {
			t.Errorf("%s on %s: exit %d %q, want exit 6 naming %q", verb, machine, code, out, want)
		}
		it, err := extension.ReadStatus(extension.StatusPath(statusDir, 5))
		if err != nil {
			t.Fatalf("%s on %s: no status: %v", verb, machine, err)
		}
		st := it.Status
		if st.Status != extension.StatusError || st.Code != handler.ExitUnsupportedOS || st.Operation != handler.OperationOSCheck || st.Name != handler.StatusName ||
			!strings.HasPrefix(st.FormattedMessage.Message, "OS version not supported: ") || !strings.Contains(st.FormattedMessage.Message, want) {
			t.Errorf("%s on %s: status %+v", verb, machine, st)
		}
	}
	for _, verb := range []string{"install", "enable", "disable", "uninstall", "update", "reset"} {
		refused("riscv64", verb, "riscv64 is not supported")
	}
	// A package without the arm64 build says so on arm64; without
	// ConfigSequenceNumber the newest settings file's number is the status's.
	os.Remove(filepath.Join(dir, "ProxyAgentExt-arm64"))
	refused("aarch64", "enable", "no build for aarch64")
	refused("aarch64", "update", "no build for aarch64")
	os.WriteFile(filepath.Join(configDir, "9.settings"), []byte("{}"), 0o644)
	cmd := exec.Command(filepath.Join(dir, "enable.sh"))
	cmd.Env = []string{"PATH=" + fake + ":/usr/bin:/bin", "FAKE_MACHINE=riscv64"}
	if err := cmd.Run(); err == nil {
		t.Error("enable on riscv64 without ConfigSequenceNumber: exit 0")
	}
	if it, err := extension.ReadStatus(extension.StatusPath(statusDir, 9)); err != nil || it.Status.Code != 6 {
		t.Errorf("enable on riscv64 without ConfigSequenceNumber: status 9: %+v %v", it, err)
	}
}

func runUnderQemu(t *testing.T, ext string) {
	qemu, err := exec.LookPath("qemu-aarch64-static")
	if err != nil {
		testenv.SkipOrFail(t, "qemu-aarch64-static is not installed (scripts/deps.sh installs qemu-user-static)")
		return
	}
	agent := filepath.Join(ext, "ProxyAgent/ProxyAgent/azure-proxy-agent-arm64")
	for _, b := range []string{agent, filepath.Join(ext, "ProxyAgentExt-arm64")} {
		out, err := exec.Command(qemu, b, "--version").Output()
		if err != nil || strings.TrimSpace(string(out)) != testVersion {
			t.Errorf("%s --version under qemu: %q %v, want %s", filepath.Base(b), out, err, testVersion)
		}
	}
	// doctor reads this machine through the emulator; nothing is
	// installed under the empty root, so it exits 1 with its findings.
	cmd := exec.Command(qemu, agent, "doctor", "--json", "--root", t.TempDir())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Errorf("doctor --json under qemu: %v, want exit 1 (nothing installed); stderr %s", err, stderr.String())
	}
	var r struct {
		Version  string `json:"version"`
		Findings []struct {
			ID       string `json:"id"`
			Severity string `json:"severity"`
			Message  string `json:"message"`
		} `json:"findings"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("doctor --json under qemu: %v\n%s", err, stdout.String())
	}
	seen := map[string]string{}
	for _, f := range r.Findings {
		seen[f.ID] = f.Severity
	}
	if r.Version != testVersion || seen["file.binary"] != "fail" || seen["prereq.kernel"] == "" || seen["listener.loopback"] == "" {
		t.Errorf("doctor under qemu: version %q, findings %v", r.Version, seen)
	}
}
