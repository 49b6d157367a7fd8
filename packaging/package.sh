#!/bin/bash
# Builds the publishable extension zip and a .deb of the agent alone from
# already-built binaries.
#
#   packaging/package.sh VERSION BINDIR OUTDIR
#
# BINDIR must hold ProxyAgentExt and azure-proxy-agent (same architecture).
# The eBPF object shipped as ebpf_cgroup.o is $EBPF_OBJECT, else
# BINDIR/ebpf_cgroup.o, else bpf/redirect_bpfel.o. ARCH (amd64|arm64)
# defaults to the host's.
#
# Outputs:
#   OUTDIR/Microsoft.CPlat.ProxyAgent.ProxyAgentLinux-VERSION.zip
#       (to install a dev build, copy it to /var/lib/waagent under the name
#       waagent caches packages under: <Name>__<Version>.zip)
#   OUTDIR/azure-proxy-agent_VERSION_ARCH.deb   (needs dpkg-deb)
set -euo pipefail

if [ $# -ne 3 ]; then
	echo "usage: $0 VERSION BINDIR OUTDIR" >&2
	exit 2
fi
version=$1
bindir=$(cd "$2" && pwd)
mkdir -p "$3"
outdir=$(cd "$3" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
name=Microsoft.CPlat.ProxyAgent.ProxyAgentLinux

case "${ARCH:-$(uname -m)}" in
x86_64 | amd64) arch=amd64 ;;
aarch64 | arm64) arch=arm64 ;;
*) echo "unsupported architecture ${ARCH:-$(uname -m)}" >&2; exit 2 ;;
esac

for b in ProxyAgentExt azure-proxy-agent; do
	[ -x "$bindir/$b" ] || { echo "missing $bindir/$b" >&2; exit 1; }
done
ebpf=${EBPF_OBJECT:-}
if [ -z "$ebpf" ]; then
	for c in "$bindir/ebpf_cgroup.o" "$repo/bpf/redirect_bpfel.o"; do
		if [ -f "$c" ]; then ebpf=$c; break; fi
	done
fi
[ -n "$ebpf" ] && [ -f "$ebpf" ] || { echo "no eBPF object found (set EBPF_OBJECT)" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# --- extension zip (extension-handler.md §5.2 layout) ---
ext=$stage/ext
mkdir -p "$ext/ProxyAgent/ProxyAgent"
install -m 0644 "$repo/HandlerManifest.json" "$ext/HandlerManifest.json"
for c in install uninstall enable disable update reset; do
	install -m 0755 "$here/$c.sh" "$ext/$c.sh"
done
install -m 0755 "$bindir/ProxyAgentExt" "$ext/ProxyAgentExt"
install -m 0644 "$here/azure-proxy-agent.service" "$ext/ProxyAgent/azure-proxy-agent.service"
install -m 0644 "$here/azure-proxy-agent.8" "$ext/ProxyAgent/azure-proxy-agent.8"
install -m 0755 "$bindir/azure-proxy-agent" "$ext/ProxyAgent/ProxyAgent/azure-proxy-agent"
install -m 0644 "$here/proxy-agent.json" "$ext/ProxyAgent/ProxyAgent/proxy-agent.json"
install -m 0644 "$ebpf" "$ext/ProxyAgent/ProxyAgent/ebpf_cgroup.o"
zipfile=$outdir/${name}-${version}.zip
rm -f "$zipfile"
(cd "$ext" && zip -q -X -r "$zipfile" .)
echo "$zipfile"

# --- agent .deb ---
if command -v dpkg-deb >/dev/null; then
	deb=$stage/deb
	install -D -m 0755 "$bindir/azure-proxy-agent" "$deb/usr/sbin/azure-proxy-agent"
	install -D -m 0644 "$here/proxy-agent.json" "$deb/etc/azure/proxy-agent.json"
	install -D -m 0644 "$ebpf" "$deb/usr/lib/azure-proxy-agent/ebpf_cgroup.o"
	install -D -m 0644 "$here/azure-proxy-agent.service" "$deb/usr/lib/systemd/system/azure-proxy-agent.service"
	install -d "$deb/usr/share/man/man8"
	gzip -9n -c "$here/azure-proxy-agent.8" >"$deb/usr/share/man/man8/azure-proxy-agent.8.gz"
	install -d "$deb/DEBIAN"
	cat >"$deb/DEBIAN/control" <<CONTROL
Package: azure-proxy-agent
Version: $version
Architecture: $arch
Maintainer: opengpa <opengpa@users.noreply.github.com>
Section: admin
Priority: optional
Description: Azure Guest Proxy Agent (open re-implementation)
 Authorizes and signs the VM's requests to WireServer, IMDS and HostGAPlugin.
CONTROL
	echo /etc/azure/proxy-agent.json >"$deb/DEBIAN/conffiles"
	cat >"$deb/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
	systemctl unmask azure-proxy-agent.service || true
	systemctl enable azure-proxy-agent.service || true
	systemctl restart azure-proxy-agent.service || true
fi
POSTINST
	cat >"$deb/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
	systemctl stop azure-proxy-agent.service || true
	if [ "$1" = remove ]; then systemctl disable azure-proxy-agent.service || true; fi
fi
PRERM
	cat >"$deb/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
POSTRM
	chmod 0755 "$deb/DEBIAN/postinst" "$deb/DEBIAN/prerm" "$deb/DEBIAN/postrm"
	debfile=$outdir/azure-proxy-agent_${version}_${arch}.deb
	dpkg-deb --root-owner-group --build "$deb" "$debfile" >/dev/null
	echo "$debfile"
fi
