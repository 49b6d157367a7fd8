// Package nspawn is test support for the tier that runs the extension the
// way every Azure VM does: under a real systemd as PID 1. It boots a Debian
// bookworm root file system (debootstrap's minbase plus systemd, dbus,
// iproute2 and curl; built once into CacheDir, outside the repository, and
// reused by later runs under a lock) with systemd-nspawn, in a private
// network namespace that has only a loopback device, from a cgroup the test
// created, with a throw-away overlay over the cached tree and a private
// bpffs on /sys/fs/bpf. Commands run inside through nsenter -a. Close
// kills the machine and removes its group; nothing it ran survives it.
package nspawn
