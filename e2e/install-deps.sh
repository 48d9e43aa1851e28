#!/bin/sh
# Installs what the kernel and e2e test layers need on Debian: iptables,
# nftables, conntrack, iproute2. Only acts as root and only when missing.
set -e
missing=""
for c in iptables-restore nft conntrack ip bridge; do
	command -v "$c" >/dev/null 2>&1 || missing="$missing $c"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
	echo "install-deps: missing$missing; run as root to install them (kernel/e2e tests will skip)" >&2
	exit 0
fi
echo "install-deps: installing iptables nftables conntrack iproute2 (missing:$missing)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq iptables nftables conntrack iproute2 >/dev/null
