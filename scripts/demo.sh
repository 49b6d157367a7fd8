#!/usr/bin/env bash
# The whole system on a simulated VM in a network namespace (`make demo`):
# builds what is missing and runs bin/gpa-demo as root.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
	echo "demo: needs root (it creates a network namespace, a cgroup and a bpffs and loads eBPF programs)." >&2
	echo "      run: sudo make demo" >&2
	exit 1
fi
GO=${GO:-go}
mkdir -p bin
for b in azure-proxy-agent azure-host-sim ProxyAgentExt; do
	if [ ! -x "bin/$b" ]; then
		CGO_ENABLED=0 $GO build -trimpath -ldflags "-X github.com/opengpa/gpa/internal/version.Version=$(cat VERSION)" -o "bin/$b" "./cmd/$b"
	fi
done
CGO_ENABLED=0 $GO build -trimpath -o bin/gpa-demo ./cmd/gpa-demo
exec bin/gpa-demo -bin bin -src . "$@"
