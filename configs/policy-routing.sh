#!/bin/sh
# Policy routing for the haka-proxy gateway, for operators who install the
# rules themselves (with configs/nftables-haka.nft) instead of letting
# `haka-proxy run --tproxy --nft` or `haka-proxy nft apply` do it. This is
# what they install; print the commands for other flags with
# `haka-proxy nft show`.
#
#   policy-routing.sh add|del
#   MARK=0x1 TABLE=100 IPV6=1 policy-routing.sh add
#
# Packets that nftables marked (TPROXY-assigned connections and the
# server's replies to spoofed connections) are looked up in TABLE, whose
# only route makes every destination local, so the host delivers them to
# haka-proxy's sockets instead of forwarding them.
#
# Everything is tagged "protocol 104", which `haka-proxy nft remove` uses
# to find and remove it.
set -eu

MARK=${MARK:-0x1}
TABLE=${TABLE:-100}
IPV6=${IPV6:-1}
PROTO=104

fams="-4"
if [ "$IPV6" = 1 ]; then
	fams="-4 -6"
fi

case "${1:-}" in
add)
	for f in $fams; do
		dst=0.0.0.0/0
		[ "$f" = -6 ] && dst=::/0
		# The route first, so the rule never selects an empty table.
		ip "$f" route add local "$dst" dev lo table "$TABLE" protocol "$PROTO"
		ip "$f" rule add fwmark "$MARK" lookup "$TABLE" protocol "$PROTO"
	done
	;;
del)
	for f in $fams; do
		dst=0.0.0.0/0
		[ "$f" = -6 ] && dst=::/0
		ip "$f" rule del fwmark "$MARK" lookup "$TABLE" protocol "$PROTO"
		ip "$f" route del local "$dst" dev lo table "$TABLE" protocol "$PROTO"
	done
	;;
*)
	echo "usage: $0 add|del (environment: MARK=$MARK TABLE=$TABLE IPV6=$IPV6)" >&2
	exit 2
	;;
esac
