#!/bin/sh
# waagent runs this from the handler root; it hands the command to ProxyAgentExt.
dir=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd) || exit 1
exec "$dir/ProxyAgentExt" update
