# Sourced by the waagent scripts (install.sh, enable.sh, ...) with $dir set
# to the handler root: sets $ext to the ProxyAgentExt built for this
# machine's `uname -m`. Where there is none, install and enable write the
# error status waagent reports, operation CheckOSVersionSupport, code 6,
# and exit 6 (upstream's unsupported-OS exit code); update and the setup
# tool exit 6 as well (waagent aborts an upgrade to this package, so the
# installed version stays); disable, uninstall and reset exit 0, since
# nothing of this package ran here to stop or remove.
#
# plain_arch is the architecture of the builds at upstream's paths
# (ProxyAgentExt, ProxyAgent/ProxyAgent/azure-proxy-agent): amd64 in the
# two-architecture package, whose arm64 build sits beside them with an
# -arm64 suffix, and in the amd64 package; package.sh sets it to arm64 in
# the arm64 package.
plain_arch=amd64

# refuse MESSAGE: tell stderr, write the status for install and enable,
# and exit as above.
refuse() {
	echo "ProxyAgentExt: $1" >&2
	case $(basename -- "$0") in
	disable.sh | uninstall.sh | reset.sh) exit 0 ;;
	install.sh | enable.sh) ;;
	*) exit 6 ;; # update: waagent aborts the upgrade, the installed version stays
	esac
	# HandlerEnvironment.json, as waagent writes it: one JSON line.
	status_dir=$(sed -n 's/.*"statusFolder"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$dir/HandlerEnvironment.json" 2>/dev/null)
	config_dir=$(sed -n 's/.*"configFolder"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$dir/HandlerEnvironment.json" 2>/dev/null)
	seq=$ConfigSequenceNumber
	if [ -z "$seq" ] && [ -n "$config_dir" ]; then
		# The newest settings file's number, as the handler does.
		seq=$(ls -t "$config_dir" 2>/dev/null | sed -n 's/^\([0-9][0-9]*\)\.settings$/\1/p' | head -n 1)
	fi
	case $seq in
	'') seq=0 ;;
	*[!0-9]*) seq= ;; # the handler refuses it too: no status
	*) seq=$(printf '%s' "$seq" | sed 's/^0*\([0-9]\)/\1/') ;;
	esac
	if [ -n "$status_dir" ] && [ -n "$seq" ] && mkdir -p "$status_dir" 2>/dev/null; then
		msg=$(printf '%s' "OS version not supported: $1" | tr -d '"\\' | tr -c '[:print:]' ' ')
		now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
		printf '[{"version":"1.0","timestampUTC":"%s","status":{"name":"ProxyAgentVMExtension","operation":"CheckOSVersionSupport","status":"error","code":6,"formattedMessage":{"lang":"en-US","message":"%s"}}}]\n' \
			"$now" "$msg" >"$status_dir/$seq.status.tmp" &&
			mv -f "$status_dir/$seq.status.tmp" "$status_dir/$seq.status"
	fi
	exit 6
}

machine=$(uname -m | tr -cd 'A-Za-z0-9_.-')
case $machine in
x86_64 | amd64) want=amd64 ;;
aarch64 | arm64) want=arm64 ;;
*) refuse "architecture $machine is not supported (x86_64 and aarch64 are)" ;;
esac
if [ "$want" = "$plain_arch" ]; then
	ext=$dir/ProxyAgentExt
else
	ext=$dir/ProxyAgentExt-$want
fi
if [ ! -x "$ext" ]; then
	refuse "this package has no build for $machine (it has $plain_arch's): use the package for linux-$want"
fi
