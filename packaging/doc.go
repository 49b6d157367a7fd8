// Package packaging holds no code: this directory has the systemd unit,
// the default config, the waagent scripts and package.sh, and this
// package's tests check what package.sh builds — the layout of the
// extension zip, the amd64 and arm64 builds in it (ELF headers, and the
// arm64 agent run under qemu-user where it is installed), and that the
// scripts run the build for `uname -m`.
package packaging
