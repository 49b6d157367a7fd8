// Package testsupport holds the helpers that tests of several packages
// share and that need no privilege: waiting for an event with a deadline,
// a log sink safe for concurrent writers, and a settable clock.
// Privileged helpers (network namespaces, cgroups, bpffs) live in
// internal/testenv. Only tests import this package; production code must
// not.
package testsupport

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"
)

// Deadline is how long WaitFor waits before failing the test. It is
// generous because a failing wait is the only case that spends it.
const Deadline = 10 * time.Second

// WaitFor polls cond until it holds and fails the test with what when it
// does not hold within Deadline. Use it to wait for a state change that
// has no channel to wait on (a file, a counter, a status message); it
// never asserts that something did not happen.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	WaitForUntil(t, time.Now().Add(Deadline), what, cond)
}

// WaitForUntil is WaitFor with an explicit deadline.
func WaitForUntil(t testing.TB, deadline time.Time, what string, cond func() bool) {
	t.Helper()
	for delay := time.Millisecond; !cond(); delay = min(2*delay, 50*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(delay)
	}
}

// WaitForCtx is WaitFor bounded by ctx instead of Deadline.
func WaitForCtx(t testing.TB, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for delay := time.Millisecond; !cond(); delay = min(2*delay, 50*time.Millisecond) {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(delay):
		}
	}
}

// Receive waits for a value on ch and fails the test with what when none
// arrives within Deadline.
func Receive[T any](t testing.TB, what string, ch <-chan T) T {
	t.Helper()
	timer := time.NewTimer(Deadline)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// SyncBuffer is a bytes.Buffer that a logger and a test may share: every
// method takes a lock.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Clock is a settable clock safe for concurrent use; pass its Now where
// the code under test takes a time source.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock returns a clock reading t.
func NewClock(t time.Time) *Clock { return &Clock{t: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Set sets the clock to t.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
