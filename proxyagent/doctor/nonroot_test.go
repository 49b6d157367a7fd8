package doctor_test

import (
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/opengpa/gpa/internal/testenv"
	"github.com/opengpa/gpa/proxyagent/doctor"
)

// helperEnv makes the test binary run doctor with the options in its
// value (JSON) and print the report as JSON, instead of running tests.
const helperEnv = "GPA_DOCTOR_TEST_HELPER"

func TestMain(m *testing.M) {
	if v := os.Getenv(helperEnv); v != "" {
		var roots [2]string // system root, install root
		if err := json.Unmarshal([]byte(v), &roots); err != nil {
			os.Exit(3)
		}
		o := doctor.Options{SystemRoot: roots[0], InstallRoot: roots[1], UID: os.Geteuid(), Now: func() time.Time { return now }}
		r := doctor.Run(o, "helper")
		doctor.PrintJSON(os.Stdout, r)
		if r.Failed() {
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestDoctorAsNobody: an unprivileged user sees every check it can make;
// the 0700 key folder, the 0640 status file and the 0700 pin folder are
// reported as not visible, not as failures, and the exit is 0.
func TestDoctorAsNobody(t *testing.T) {
	testenv.RequirePrivileged(t)
	in := newInstall(t, testenv.Debian12)
	for _, d := range []string{in.root, in.sys} {
		os.Chmod(d, 0o755)
		os.Chmod(filepath.Dir(d), 0o755)
	}
	// The test binary, where nobody can run it.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	binDir := t.TempDir()
	os.Chmod(binDir, 0o755)
	os.Chmod(filepath.Dir(binDir), 0o755)
	bin := filepath.Join(binDir, "doctor.test")
	src, _ := os.Open(self)
	dst, _ := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	io.Copy(dst, src)
	src.Close()
	dst.Close()

	opts, _ := json.Marshal([2]string{in.sys, in.root})
	cmd := exec.Command(bin)
	cmd.Env = []string{helperEnv + "=" + string(opts)}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("doctor as nobody: %v\n%s", err, out)
	}
	var r doctor.Report
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if r.UID != 65534 {
		t.Errorf("uid %d", r.UID)
	}
	want := map[string]doctor.Severity{
		"prereq.cgroup2": doctor.OK, "config": doctor.OK, "file.binary": doctor.OK, "file.keys": doctor.OK,
		"file.key": doctor.Unknown, "status.fresh": doctor.Unknown, "key.latched": doctor.Unknown,
		"redirect.pinned": doctor.Unknown, "listener.loopback": doctor.OK, "logs.writable": doctor.OK,
	}
	for id, sev := range want {
		if got := worst(r, id); got != sev {
			t.Errorf("%s: %s, want %s (%+v)", id, got, sev, findings(r)[id])
		}
	}
	for _, f := range r.Findings {
		if f.Severity == doctor.Fail {
			t.Errorf("failure as nobody: %+v", f)
		}
	}
}
