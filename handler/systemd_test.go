package handler

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fakeSystemctl puts a systemctl on PATH that records its arguments and
// answers is-active/is-enabled with activeRC and show with showOut.
func fakeSystemctl(t *testing.T, activeRC int, showOut string) (logPath string) {
	dir := t.TempDir()
	logPath = filepath.Join(dir, "calls")
	script := "#!/bin/sh\necho \"$*\" >> " + logPath + "\ncase \"$1\" in\n" +
		"is-active|is-enabled) exit " + strconv.Itoa(activeRC) + ";;\n" +
		"show) printf '%s\\n' '" + showOut + "';;\nesac\nexit 0\n"
	os.WriteFile(filepath.Join(dir, "systemctl"), []byte(script), 0o755)
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
	return logPath
}

func calls(t *testing.T, p string) []string {
	b, _ := os.ReadFile(p)
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

func bundle(t *testing.T, version string) string {
	ext := t.TempDir()
	os.MkdirAll(filepath.Join(ext, "ProxyAgent/ProxyAgent"), 0o755)
	os.WriteFile(filepath.Join(ext, bundledAgent(ext)), versionScript(version), 0o755)
	cfg, _ := os.ReadFile("../packaging/proxy-agent.json")
	os.WriteFile(filepath.Join(ext, BundledConfig), cfg, 0o644)
	unit, _ := os.ReadFile("../packaging/azure-proxy-agent.service")
	os.WriteFile(filepath.Join(ext, BundledUnit), unit, 0o644)
	os.WriteFile(filepath.Join(ext, BundledEBPF), []byte("elf"), 0o644)
	return ext
}

func TestSystemdSetup(t *testing.T) {
	tests := []struct {
		name      string
		activeRC  int
		wantErr   bool
		wantCalls []string
	}{
		{"install starts and stays up", 0, false, []string{"stop " + UnitName, "daemon-reload", "unmask " + UnitName, "enable " + UnitName, "start " + UnitName, "is-active --quiet " + UnitName}},
		{"install fails when the agent does not stay up", 3, true, []string{"start " + UnitName, "is-active --quiet " + UnitName}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			log := fakeSystemctl(t, tc.activeRC, "")
			l := Layout{Root: t.TempDir()}
			opts := DefaultOptions()
			opts.ServiceSettle = 100 * time.Millisecond
			s := &Setup{ExtDir: bundle(t, "2.0.0"), Layout: l, Service: &Systemd{Layout: l, Log: discardLog()}, Opts: opts, Log: discardLog()}
			err := s.Install(context.Background())
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v", err)
			}
			got := strings.Join(calls(t, log), "\n")
			for _, c := range tc.wantCalls {
				if !strings.Contains(got, c) {
					t.Errorf("systemctl %q not called; calls:\n%s", c, got)
				}
			}
			if mode(t, l.UnitFile()) != 0o644 || mode(t, l.AgentBinary()) != 0o755 || mode(t, l.AgentConfig()) != 0o644 {
				t.Error("installed file modes wrong")
			}
			if _, err := os.Stat(l.SupervisorBinary()); err == nil {
				t.Error("supervisor installed under systemd")
			}
		})
	}
	t.Run("uninstall", func(t *testing.T) {
		log := fakeSystemctl(t, 0, "")
		l := Layout{Root: t.TempDir()}
		os.MkdirAll(l.UnitDir(), 0o755)
		os.WriteFile(l.UnitFile(), []byte("x"), 0o644)
		s := &Setup{Layout: l, Service: &Systemd{Layout: l, Log: discardLog()}, Log: discardLog()}
		if err := s.Uninstall(); err != nil {
			t.Fatal(err)
		}
		want := []string{"stop " + UnitName, "disable " + UnitName, "daemon-reload"}
		if got := calls(t, log); strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("calls %v, want %v", got, want)
		}
		if _, err := os.Stat(l.UnitFile()); err == nil {
			t.Error("unit file kept")
		}
		// "uninstall package" removes the installed files too; twice is fine.
		files := []string{l.AgentBinary(), l.AgentConfig(), l.EBPFObject(), l.ManPage()}
		for _, f := range files {
			os.MkdirAll(filepath.Dir(f), 0o755)
			os.WriteFile(f, []byte("x"), 0o644)
		}
		for range 2 {
			if err := s.RemovePackage(); err != nil {
				t.Fatal(err)
			}
		}
		for _, f := range files {
			if _, err := os.Stat(f); err == nil {
				t.Errorf("%s kept by uninstall package", f)
			}
		}
	})
	t.Run("exec path from systemctl show", func(t *testing.T) {
		fakeSystemctl(t, 0, "ExecStart={ path=/opt/x/azure-proxy-agent ; argv[]=/opt/x/azure-proxy-agent --config /c ; }")
		l := Layout{Root: t.TempDir()}
		os.MkdirAll(l.UnitDir(), 0o755)
		os.WriteFile(l.UnitFile(), []byte("[Service]\nExecStart=/other\n"), 0o644)
		p, err := (&Systemd{Layout: l}).ExecPath()
		if err != nil || p != "/opt/x/azure-proxy-agent" {
			t.Errorf("ExecPath = %q, %v", p, err)
		}
		os.Remove(l.UnitFile())
		if _, err := (&Systemd{Layout: l}).ExecPath(); err == nil {
			t.Error("ExecPath without a unit file succeeded")
		}
	})
}
