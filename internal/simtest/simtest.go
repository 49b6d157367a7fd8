// Package simtest starts the simulated Azure host (package hostsim) for
// tests, the one way every package's tests do it.
package simtest

import (
	"testing"

	"github.com/opengpa/gpa/hostsim"
)

// Start creates a simulated host from cfg, starts it and closes it when
// the test ends; any failure fails the test.
func Start(t testing.TB, cfg hostsim.Config) *hostsim.Sim {
	t.Helper()
	sim, err := hostsim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	return sim
}
