#!/bin/sh
# waagent runs this from the handler root; it hands the command to the
# ProxyAgentExt built for this machine's architecture.
dir=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd) || exit 1
. "$dir/select-arch.sh"
exec "$ext" disable
