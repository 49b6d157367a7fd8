// Package e2e holds the privileged end-to-end tests of the proxy agent: the
// real azure-proxy-agent and azure-host-sim binaries, built by TestMain, run
// in a private network namespace with the eBPF redirector attached to a
// private cgroup, and real clients (curl, shells) call the metadata
// services as root and as nobody. The environment is internal/e2eenv.
//
// Run as root: go test ./e2e/ (non-root and -short skip; CI=true turns a
// skip into a failure).
package e2e
