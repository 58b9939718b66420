#!/usr/bin/env bash
# Applies the kernel settings of tuning/README.md, idempotently; never lowers a higher value
# and never drops a reserved port. Reserves imgate's default listening ports, and those of the
# imgate configurations given, so no outgoing connection takes them as its ephemeral port.
# usage: sudo tuning/apply.sh [imgate.toml ...]
set -euo pipefail
. "$(dirname "$0")/ports.sh"
if [ "$SYSCTL_ROOT" = /proc/sys ] && [ "$(id -u)" -ne 0 ]; then
  echo "apply.sh: run as root" >&2; exit 1
fi

CONF=${IMGATE_SYSCTL_CONF:-/etc/sysctl.d/90-imgate.conf}
declare -A WANT=(
  [fs.file-max]="4194304"
  [fs.nr_open]="2097152"
  [net.ipv4.ip_local_port_range]="1024 65535"
  [net.core.somaxconn]="65535"
  [net.ipv4.tcp_max_syn_backlog]="65535"
  [net.core.netdev_max_backlog]="65535"
  [net.ipv4.tcp_mem]="2097152 3145728 4194304"
  [net.ipv4.tcp_rmem]="4096 16384 4194304"
  [net.ipv4.tcp_wmem]="4096 16384 4194304"
  [net.ipv4.tcp_tw_reuse]="1"
  [net.netfilter.nf_conntrack_max]="2097152"
)

# Whether every field of $1 is at least the matching field of $2 (port range: the low end must
# be at most, the high end at least).
satisfied() {
  local key=$1 have=$2 want=$3
  read -r -a h <<<"$have"; read -r -a w <<<"$want"
  if [ "$key" = net.ipv4.ip_local_port_range ]; then
    [ "${h[0]}" -le "${w[0]}" ] && [ "${h[1]}" -ge "${w[1]}" ]; return
  fi
  for i in "${!w[@]}"; do [ "${h[$i]:-0}" -ge "${w[$i]}" ] || return 1; done
}

: >"$CONF.tmp"
for key in "${!WANT[@]}"; do
  if ! have=$(sysctl_get "$key" 2>/dev/null); then
    echo "skip  $key (not on this kernel or module not loaded)"
    continue
  fi
  want=${WANT[$key]}
  if satisfied "$key" "$have" "$want"; then
    echo "ok    $key = $have"
    echo "$key = $have" >>"$CONF.tmp"
  else
    sysctl_set "$key" "$want"
    echo "set   $key = $want (was $have)"
    echo "$key = $want" >>"$CONF.tmp"
  fi
done
# imgate's ports inside the widened ephemeral range, added to whatever is reserved already.
key=net.ipv4.ip_local_reserved_ports
if have=$(sysctl_get "$key" 2>/dev/null); then
  have=$(tr -d ' \n' <<<"$have")
  want=$({ expand_ports "$have"; imgate_ports "$@"; } | compact_ports)
  if [ "$(expand_ports "$have" | compact_ports)" = "$want" ]; then
    echo "ok    $key = $have"
  else
    sysctl_set "$key" "$want"
    echo "set   $key = $want (was ${have:-empty})"
  fi
  echo "$key = $want" >>"$CONF.tmp"
else
  echo "skip  $key (not on this kernel)"
fi
sort "$CONF.tmp" >"$CONF" && rm -f "$CONF.tmp"
echo "written to $CONF"
echo "per-process limits (set in the service manager or limits.conf): LimitNOFILE >= connections + 1024"
