// Package systemd holds the privileged test tier that runs the VM
// extension the way every Azure VM runs it: under a real systemd as PID 1
// (a Debian bookworm machine booted with systemd-nspawn, see
// internal/nspawn). The extension's own unit, `systemctl enable --now`,
// the monitor as a transient unit (systemd-run) and the agent's restart
// after a crash are systemd's doing here, not a fake's. The simulated
// Azure host runs inside the machine's private network namespace, on the
// service addresses put on its loopback device, so no request leaves it.
package systemd
