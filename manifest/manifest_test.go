package manifest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRootManifest lints the manifest shipped at the repository root, with
// the command scripts from packaging/ laid out as in the extension zip.
func TestRootManifest(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", FileName))
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	for _, c := range []string{"install", "uninstall", "update", "enable", "disable", "reset"} {
		b, err := os.ReadFile(filepath.Join("..", "packaging", c+".sh"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, c+".sh"), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, err := range Lint(data, root) {
		t.Error(err)
	}
	m, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{
		"installCommand":   m.Handler.InstallCommand,
		"uninstallCommand": m.Handler.UninstallCommand,
		"updateCommand":    m.Handler.UpdateCommand,
		"enableCommand":    m.Handler.EnableCommand,
		"disableCommand":   m.Handler.DisableCommand,
	}
	for k, v := range Commands {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	if !m.UpdateWithInstall() {
		t.Error("shipped manifest must run install after update")
	}
}

func TestLint(t *testing.T) {
	const good = `[{"version":1.0,"handlerManifest":{"installCommand":"./install.sh","uninstallCommand":"./uninstall.sh","updateCommand":"./update.sh","enableCommand":"./enable.sh","disableCommand":"./disable.sh","reportHeartbeat":true,"updateMode":"UpdateWithInstall","supportsMultipleExtensions":false},"resourceLimits":{"services":[{"name":"azure-proxy-agent.service","cpuQuotaPercentage":15}]}}]`
	tests := []struct {
		name    string
		in      string
		wantErr string // substring of one error; "" means clean
	}{
		{"good", good, ""},
		{"object not array", `{"handlerManifest":{}}`, "not a JSON array"},
		{"empty array", `[]`, "empty array"},
		{"no handlerManifest", `[{}]`, "handlerManifest missing"},
		{"string boolean", strings.Replace(good, `"reportHeartbeat":true`, `"reportHeartbeat":"true"`, 1), "reportHeartbeat must be a JSON boolean"},
		{"misspelled multi", strings.Replace(good, `"supportsMultipleExtensions"`, `"supportMultipleExtensions"`, 1), "misspelled"},
		{"absolute command", strings.Replace(good, `"./enable.sh"`, `"/enable.sh"`, 1), "absolute"},
		{"escaping command", strings.Replace(good, `"./enable.sh"`, `"../x/enable.sh"`, 1), "leaves the handler root"},
		{"missing command", strings.Replace(good, `"disableCommand":"./disable.sh",`, ``, 1), "disableCommand: missing"},
		{"implicit updateMode", strings.Replace(good, `"updateMode":"UpdateWithInstall",`, ``, 1), "not set explicitly"},
		{"bad updateMode", strings.Replace(good, `"UpdateWithInstall"`, `"Sometimes"`, 1), "neither"},
		{"no heartbeat", strings.Replace(good, `"reportHeartbeat":true`, `"reportHeartbeat":false`, 1), "reportHeartbeat must be true"},
		{"wrong quota", strings.Replace(good, `"cpuQuotaPercentage":15`, `"cpuQuotaPercentage":30`, 1), "cpuQuotaPercentage must equal"},
		{"no quota", strings.Replace(good, `,"cpuQuotaPercentage":15`, ``, 1), "cpuQuotaPercentage must equal"},
		{"no service", strings.Replace(good, `azure-proxy-agent.service`, `other.service`, 1), "no entry for azure-proxy-agent.service"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			errs := Lint([]byte(tc.in), "")
			if tc.wantErr == "" {
				for _, e := range errs {
					t.Error(e)
				}
				return
			}
			for _, e := range errs {
				if strings.Contains(e.Error(), tc.wantErr) {
					return
				}
			}
			t.Errorf("errors %v do not mention %q", errs, tc.wantErr)
		})
	}
}

func TestLintResolvesCommands(t *testing.T) {
	data, _ := os.ReadFile(filepath.Join("..", FileName))
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "enable.sh"), []byte("#!/bin/sh\n"), 0o644) // not executable; others absent
	errs := Lint(data, root)
	var joined []string
	for _, e := range errs {
		joined = append(joined, e.Error())
	}
	all := strings.Join(joined, "\n")
	for _, want := range []string{"enableCommand: \"./enable.sh\" is not an executable", "installCommand: \"./install.sh\" does not resolve"} {
		if !strings.Contains(all, want) {
			t.Errorf("missing %q in:\n%s", want, all)
		}
	}
}

func TestUpdateWithInstall(t *testing.T) {
	tests := []struct {
		mode string
		want bool
	}{{"", true}, {"UpdateWithInstall", true}, {"updatewithinstall", true}, {"UpdateWithoutInstall", false}}
	for _, tc := range tests {
		if got := (Manifest{Handler: Handler{UpdateMode: tc.mode}}).UpdateWithInstall(); got != tc.want {
			t.Errorf("%q: got %v", tc.mode, got)
		}
	}
}
