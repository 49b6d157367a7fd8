//go:build !linux

package testenv

import "testing"

// RequirePrivileged skips (or fails under CI, see SkipOrFail): the
// privileged tests need Linux.
func RequirePrivileged(t testing.TB) {
	t.Helper()
	SkipOrFail(t, "privileged test needs Linux")
}
