// Package testenv is test support for privileged end-to-end tests: it
// creates network namespaces with addresses on their loopback, cgroup v2
// groups and private bpffs mounts, runs commands and Go functions inside
// them (optionally as another user), and removes everything it created,
// also when a test fails. NewSystemRoot crafts a procfs/sysfs/os-release
// root for code that checks what a machine has.
//
// Tests that need root call RequirePrivileged first. Outside CI such a test
// skips with a reason; with CI=true in the environment a skip becomes a
// failure, so CI can never pass by skipping the tests that matter.
package testenv

import (
	"fmt"
	"os"
	"sync/atomic"
	"testing"
)

// InCI reports whether the environment variable CI is "true", in which case
// SkipOrFail fails instead of skipping.
func InCI() bool { return os.Getenv("CI") == "true" }

// SkipOrFail stops the test: it skips with the formatted reason, or, when
// InCI, fails with it. Use it for any missing privilege or kernel feature.
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("CI=true, so this privileged test may not skip: %s", msg)
		return
	}
	t.Skip(msg)
}

var seq atomic.Uint64

// uniqueName returns prefix-<pid>-<n>, unique within this machine while
// this process lives.
func uniqueName(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), seq.Add(1))
}
