# Sourced by the waagent scripts (install.sh, enable.sh, ...) with $dir set
# to the handler root: sets $ext to the ProxyAgentExt built for this
# machine's `uname -m`, or exits 6 (upstream's unsupported-OS exit code).
#
# plain_arch is the architecture of the builds at upstream's paths
# (ProxyAgentExt, ProxyAgent/ProxyAgent/azure-proxy-agent): amd64 in the
# two-architecture package, whose arm64 build sits beside them with an
# -arm64 suffix, and in the amd64 package; package.sh sets it to arm64 in
# the arm64 package.
plain_arch=amd64
machine=$(uname -m)
case $machine in
x86_64 | amd64) want=amd64 ;;
aarch64 | arm64) want=arm64 ;;
*)
	echo "ProxyAgentExt: architecture $machine is not supported (x86_64 and aarch64 are)" >&2
	exit 6
	;;
esac
if [ "$want" = "$plain_arch" ]; then
	ext=$dir/ProxyAgentExt
else
	ext=$dir/ProxyAgentExt-$want
fi
if [ ! -x "$ext" ]; then
	echo "ProxyAgentExt: this package has no build for $machine (it has $plain_arch's)" >&2
	exit 6
fi
