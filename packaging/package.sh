#!/bin/bash
# Builds the publishable extension zips (one per architecture and one for
# both) and a .deb of the agent per architecture from already-built
# binaries.
#
#   packaging/package.sh VERSION BINDIR OUTDIR
#
# BINDIR holds ProxyAgentExt and azure-proxy-agent either in linux-amd64/
# and linux-arm64/ subdirectories (what `make package` builds), or directly,
# built for ARCH (amd64|arm64, default the host's). With one architecture
# the zip for "both" is that architecture's package. The eBPF object shipped
# as ebpf_cgroup.o is $EBPF_OBJECT, else BINDIR/ebpf_cgroup.o, else
# bpf/redirect_bpfel.o: little-endian BPF, the same for both architectures.
#
# The zips keep upstream's layout. The one for both architectures has the
# amd64 build at upstream's paths (ProxyAgentExt,
# ProxyAgent/ProxyAgent/azure-proxy-agent) and the arm64 build beside them
# with an -arm64 suffix; one per architecture, as upstream ships them, has
# that architecture's build at upstream's paths. The waagent scripts run
# the one for `uname -m` (select-arch.sh).
#
# Outputs:
#   OUTDIR/Microsoft.CPlat.ProxyAgent.ProxyAgentLinux-VERSION.zip (both)
#   OUTDIR/linux-ARCH/Microsoft.CPlat.ProxyAgent.ProxyAgentLinux-VERSION.zip
#       per architecture
#       (to install a dev build, copy one to /var/lib/waagent under the
#       name waagent caches packages under: <Name>__<Version>.zip)
#   OUTDIR/azure-proxy-agent_VERSION_ARCH.deb per architecture (needs dpkg-deb)
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

# archdir[amd64|arm64] is the directory of that architecture's binaries.
declare -A archdir=()
for a in amd64 arm64; do
	[ -x "$bindir/linux-$a/ProxyAgentExt" ] && archdir[$a]=$bindir/linux-$a
done
if [ ${#archdir[@]} -eq 0 ]; then
	case "${ARCH:-$(uname -m)}" in
	x86_64 | amd64) archdir[amd64]=$bindir ;;
	aarch64 | arm64) archdir[arm64]=$bindir ;;
	*) echo "unsupported architecture ${ARCH:-$(uname -m)}" >&2; exit 2 ;;
	esac
fi
for a in "${!archdir[@]}"; do
	for b in ProxyAgentExt azure-proxy-agent; do
		[ -x "${archdir[$a]}/$b" ] || { echo "missing ${archdir[$a]}/$b" >&2; exit 1; }
	done
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

# --- extension zips (extension-handler.md §5.2 layout) ---
# stage_ext DIR PLAIN [SUFFIXED] stages a package in DIR with the PLAIN
# architecture's build at upstream's paths and, if given, the SUFFIXED
# one's beside them with its -<arch> suffix.
stage_ext() {
	local d=$1 plain=$2 suffixed=${3:-}
	mkdir -p "$d/ProxyAgent/ProxyAgent"
	install -m 0644 "$repo/HandlerManifest.json" "$d/HandlerManifest.json"
	for c in install uninstall enable disable update reset; do
		install -m 0755 "$here/$c.sh" "$d/$c.sh"
	done
	sed "s/^plain_arch=.*/plain_arch=$plain/" "$here/select-arch.sh" >"$d/select-arch.sh"
	chmod 0644 "$d/select-arch.sh"
	install -m 0755 "${archdir[$plain]}/ProxyAgentExt" "$d/ProxyAgentExt"
	install -m 0755 "${archdir[$plain]}/azure-proxy-agent" "$d/ProxyAgent/ProxyAgent/azure-proxy-agent"
	if [ -n "$suffixed" ]; then
		install -m 0755 "${archdir[$suffixed]}/ProxyAgentExt" "$d/ProxyAgentExt-$suffixed"
		install -m 0755 "${archdir[$suffixed]}/azure-proxy-agent" "$d/ProxyAgent/ProxyAgent/azure-proxy-agent-$suffixed"
	fi
	install -m 0755 "$here/proxy_agent_setup.sh" "$d/ProxyAgent/proxy_agent_setup"
	install -m 0644 "$here/azure-proxy-agent.service" "$d/ProxyAgent/azure-proxy-agent.service"
	install -m 0644 "$here/azure-proxy-agent.8" "$d/ProxyAgent/azure-proxy-agent.8"
	install -m 0644 "$here/proxy-agent.json" "$d/ProxyAgent/ProxyAgent/proxy-agent.json"
	install -m 0644 "$ebpf" "$d/ProxyAgent/ProxyAgent/ebpf_cgroup.o"
}

# make_zip DIR ZIP zips the staged package DIR into ZIP.
make_zip() {
	rm -f "$2"
	(cd "$1" && zip -q -X -r "$2" .)
	echo "$2"
}

# One package per architecture, as upstream ships them: its build at
# upstream's paths.
for a in "${!archdir[@]}"; do
	stage_ext "$stage/ext-$a" "$a"
	mkdir -p "$outdir/linux-$a"
	make_zip "$stage/ext-$a" "$outdir/linux-$a/${name}-${version}.zip"
done
# And one for both: amd64 at upstream's paths, arm64 beside them.
if [ -n "${archdir[amd64]:-}" ] && [ -n "${archdir[arm64]:-}" ]; then
	stage_ext "$stage/ext" amd64 arm64
elif [ -n "${archdir[amd64]:-}" ]; then
	stage_ext "$stage/ext" amd64
else
	stage_ext "$stage/ext" arm64
fi
make_zip "$stage/ext" "$outdir/${name}-${version}.zip"

# --- agent .deb ---
for arch in "${!archdir[@]}"; do
	command -v dpkg-deb >/dev/null || break
	deb=$stage/deb-$arch
	install -D -m 0755 "${archdir[$arch]}/azure-proxy-agent" "$deb/usr/sbin/azure-proxy-agent"
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
done
