#!/bin/sh
# Installed as ProxyAgent/proxy_agent_setup, upstream's setup tool's path in
# the package: runs the setup of the ProxyAgentExt built for this machine,
#   proxy_agent_setup install|backup|restore|purge|uninstall [service|package]
dir=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd) || exit 1
. "$dir/select-arch.sh"
exec "$ext" setup "$@"
