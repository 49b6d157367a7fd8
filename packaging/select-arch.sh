# Sourced by the waagent scripts (install.sh, enable.sh, ...) with $dir set
# to the handler root: sets $ext to the ProxyAgentExt built for this
# machine's `uname -m`, or exits 6 (upstream's unsupported-OS exit code).
machine=$(uname -m)
case $machine in
x86_64 | amd64) ext=$dir/ProxyAgentExt ;;
aarch64 | arm64) ext=$dir/ProxyAgentExt-arm64 ;;
*)
	echo "ProxyAgentExt: architecture $machine is not supported (x86_64 and aarch64 are)" >&2
	exit 6
	;;
esac
if [ ! -x "$ext" ]; then
	echo "ProxyAgentExt: this package has no build for $machine ($ext is missing)" >&2
	exit 6
fi
