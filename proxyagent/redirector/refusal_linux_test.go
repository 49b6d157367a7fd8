package redirector

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/opengpa/gpa/internal/testenv"
)

// TestRefusedBPFExplained: when bpf() is refused, Load says by what and
// how to fix it, instead of a bare "raise memlock limit: operation not
// permitted". The agent side runs as a child of the test binary behind a
// seccomp filter that answers bpf() with EPERM (as a container runtime's
// default profile does), or without the capabilities bpf() needs (setpriv
// drops them from the bounding set).
func TestRefusedBPFExplained(t *testing.T) {
	e := newEnv(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		testenv.SkipOrFail(t, "setpriv (util-linux) not installed: %v", err)
	}
	for _, tc := range []struct {
		name string
		argv []string
		mode string
		want string
	}{
		{"seccomp", []string{exe}, "refused-seccomp", "a seccomp filter blocks the bpf() system call"},
		{"capabilities", []string{setpriv, "--inh-caps=-all", "--bounding-set=-bpf,-sys_admin,-net_admin,-perfmon,-sys_resource", "--", exe},
			"refused-load", "the agent lacks the capabilities bpf() needs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, tc.argv[0], tc.argv[1:]...)
			cmd.Env = append(os.Environ(), "GPA_REDIRECTOR_HELPER="+tc.mode,
				"GPA_HELPER_CGROUP="+e.cg.Path, "GPA_HELPER_PIN="+e.cfg.PinDir)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("%v: %s", err, stderr.String())
			}
			var loadErr string
			if err := json.Unmarshal(out, &loadErr); err != nil {
				t.Fatalf("helper output %q: %v", out, err)
			}
			if loadErr == "" {
				t.Fatal("Load succeeded with bpf() refused")
			}
			t.Logf("Load: %s", loadErr)
			if !strings.Contains(loadErr, tc.want) {
				t.Errorf("Load error %q, want it to say %q", loadErr, tc.want)
			}
			if _, err := os.Stat(e.cfg.PinDir + "/" + hooks[0].pin); err == nil {
				t.Error("a link was pinned although bpf() was refused")
			}
		})
	}
}

// refusedHelper runs the agent side of TestRefusedBPFExplained. In mode
// "refused-seccomp" it installs a seccomp filter on every thread that
// answers bpf() with EPERM and executes itself again in mode
// "refused-load" (the filter is inherited, so it is in place from the
// first instruction, as in a container); "refused-load" prints Load's
// error as a JSON string ("" if it loaded).
func refusedHelper(mode string) int {
	if mode == "refused-seccomp" {
		if err := denyBPF(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		exe, _ := os.Executable()
		// Replace the mode: of duplicate variables Go reads the first.
		var env []string
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "GPA_REDIRECTOR_HELPER=") {
				env = append(env, kv)
			}
		}
		env = append(env, "GPA_REDIRECTOR_HELPER=refused-load")
		err := syscall.Exec(exe, []string{exe}, env)
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	msg := ""
	r, err := Load(Config{CgroupPath: os.Getenv("GPA_HELPER_CGROUP"), PinDir: os.Getenv("GPA_HELPER_PIN"),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		msg = err.Error()
	} else {
		r.Remove()
	}
	json.NewEncoder(os.Stdout).Encode(msg)
	return 0
}

// denyBPF installs, on all threads, a seccomp filter that fails bpf() with
// EPERM and allows every other system call.
func denyBPF() error {
	filter := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 0}, // seccomp_data.nr
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 1, K: unix.SYS_BPF},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW},
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	if _, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC,
		uintptr(unsafe.Pointer(&prog))); errno != 0 {
		return fmt.Errorf("seccomp: %w", errno)
	}
	return nil
}
