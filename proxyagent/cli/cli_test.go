package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opengpa/gpa/internal/version"
)

func run(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = Main(args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func TestVersionAndHelp(t *testing.T) {
	for _, a := range []string{"-v", "--version"} {
		if code, out, _ := run(a); code != 0 || strings.TrimSpace(out) != version.Version {
			t.Errorf("%s: exit %d, output %q", a, code, out)
		}
	}
	if code, out, _ := run("--help", "--status"); code != 0 || !strings.Contains(out, "--status") {
		t.Errorf("--help --status: exit %d", code)
	}
	if code, out, _ := run("--help"); code != 0 || !strings.Contains(out, "--status") {
		t.Errorf("--help: exit %d, output %q", code, out)
	}
	// As upstream's parser: --version and --help among the status options win.
	for _, args := range [][]string{{"--status", "--version"}, {"-s", "-w", "3", "-v"}} {
		if code, out, _ := run(args...); code != 0 || strings.TrimSpace(out) != version.Version {
			t.Errorf("%v: exit %d, output %q", args, code, out)
		}
	}
	if code, out, _ := run("--status", "--help"); code != 0 || !strings.Contains(out, "--status") {
		t.Errorf("--status --help: exit %d", code)
	}
}

func TestBadInvocations(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"pollKeyStatusIntervalInSeconds": "soon"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"--config"}, 2, "needs a path"},
		{[]string{"--config", filepath.Join(dir, "missing.json"), "console"}, 1, "missing.json"},
		{[]string{"--config", bad}, 1, "pollKeyStatusIntervalInSeconds"},
		{[]string{"--status", "--wait"}, 2, "needs a number"},
		{[]string{"--status", "--wait", "soon"}, 2, "not a number"},
		{[]string{"--wait", "soon", "--status"}, 2, "not a number"}, // any order, as upstream's parser
		{[]string{"-s", "--wait=soon"}, 2, "not a number"},
		{[]string{"--status", "bogus"}, 2, "unknown argument"},
		{[]string{"--status", "--wait", "-1"}, 2, "not a number"},
		{[]string{"--wait", "1"}, 2, "unknown command"},            // --wait needs --status
		{[]string{"frobnicate", "--status"}, 2, "unknown command"}, // only status options are reordered
		{[]string{"--config", bad, "--status"}, 1, "pollKeyStatusIntervalInSeconds"},
	}
	for _, tt := range tests {
		code, _, errOut := run(tt.args...)
		if code != tt.code || !strings.Contains(errOut, tt.want) {
			t.Errorf("%v: exit %d stderr %q; want exit %d containing %q", tt.args, code, errOut, tt.code, tt.want)
		}
	}
}

// With nothing listening, --status reports "not finished" (exit 1).
func TestStatusWithoutAgent(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.json")
	if err := os.WriteFile(cfg, []byte(`{"listenAddress": "127.0.0.1:1"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"--status"}, {"--wait", "0", "--status"}, {"-s", "-w=0"}} {
		code, out, _ := run(append([]string{"--config", cfg}, args...)...)
		if code != 1 || !strings.Contains(out, "Failed to query the current provision state") {
			t.Fatalf("%v: exit %d output %q", args, code, out)
		}
	}
}

// The service takes one processor unless GOMAXPROCS sets a number the
// runtime applies.
func TestServiceProcs(t *testing.T) {
	for env, want := range map[string]int{"": 1, "0": 1, "-2": 1, "abc": 1, "1": 0, "4": 0} {
		if got := serviceProcs(env); got != want {
			t.Errorf("serviceProcs(%q) = %d, want %d", env, got, want)
		}
	}
}
