#!/usr/bin/env bash
# Installs what the tests and the demo need on a fresh Debian machine (root).
set -euo pipefail
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v curl >/dev/null || need+=(curl)
command -v nsenter >/dev/null || need+=(util-linux)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v systemd-nspawn >/dev/null || need+=(systemd-container) # e2e/systemd boots systemd as PID 1
command -v debootstrap >/dev/null || need+=(debootstrap)             # ... on a Debian root file system it builds once
command -v zip >/dev/null || need+=(zip)
command -v unzip >/dev/null || need+=(unzip)
command -v dpkg-deb >/dev/null || need+=(dpkg)
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v promtool >/dev/null || need+=(prometheus) # promtool lints /metrics; the e2e test scrapes with the server
command -v gcc >/dev/null || need+=(gcc libc6-dev) # go test -race needs cgo
[ -d /usr/lib/python3/dist-packages/azurelinuxagent ] || need+=(waagent)
/usr/bin/python3 -c 'import distro' 2>/dev/null || need+=(python3-distro)
if [ ${#need[@]} -gt 0 ]; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends "${need[@]}"
fi
go mod download
