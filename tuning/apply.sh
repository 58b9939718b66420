#!/usr/bin/env bash
# Applies the kernel settings of tuning/README.md, idempotently; never lowers a higher value.
# usage: sudo tuning/apply.sh
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "apply.sh: run as root" >&2; exit 1; }

CONF=/etc/sysctl.d/90-imgate.conf
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
  if ! have=$(sysctl -n "$key" 2>/dev/null | tr '\t' ' '); then
    echo "skip  $key (not on this kernel or module not loaded)"
    continue
  fi
  want=${WANT[$key]}
  if satisfied "$key" "$have" "$want"; then
    echo "ok    $key = $have"
    echo "$key = $have" >>"$CONF.tmp"
  else
    sysctl -q -w "$key=$want"
    echo "set   $key = $want (was $have)"
    echo "$key = $want" >>"$CONF.tmp"
  fi
done
sort "$CONF.tmp" >"$CONF" && rm -f "$CONF.tmp"
echo "written to $CONF"
echo "per-process limits (set in the service manager or limits.conf): LimitNOFILE >= connections + 1024"
