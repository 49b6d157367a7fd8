// Package redirector loads, attaches and pins the agent's eBPF programs
// (package bpf): cgroup/connect4 and cgroup/connect6 send TCP connects to
// the metadata endpoints to the proxy listener, and a sockops program files
// the connecting process's identity under the client's address and port.
//
// A Redirector is the production identity.Source: Lookup consumes the
// kernel's record for an accepted connection.
//
// Links and maps stay pinned under Config.PinDir when the agent stops, so
// while it is down or restarting redirected connects are refused (nothing
// listens on the listener address) instead of reaching the endpoints
// directly; the next Load takes the pinned objects over with no gap.
// Remove (or RemovePinned, for uninstall) detaches and deletes everything.
package redirector
