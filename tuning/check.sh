#!/usr/bin/env bash
# Says what this host (and this shell's limits) lacks for N client connections with the load
# generator on the same host, and whether imgate's listening ports (the defaults, and those of
# the imgate configurations given) are kept out of the ephemeral port range. Exit 0 when
# nothing is missing, 1 otherwise.
# usage: tuning/check.sh N [imgate.toml ...]
set -uo pipefail
. "$(dirname "$0")/ports.sh"
N=${1:?usage: tuning/check.sh N [imgate.toml ...]}
shift
missing=0
need() { # what, have, want, why
  if [ "$2" -ge "$3" ]; then
    printf 'ok       %-34s %12s >= %s\n' "$1" "$2" "$3"
  else
    printf 'MISSING  %-34s %12s <  %s  (%s)\n' "$1" "$2" "$3" "$4"; missing=1
  fi
}
sys() { sysctl_get "$1" 2>/dev/null | awk '{print $NF}'; }
sockets=$((2 * N))
need fs.file-max "$(sys fs.file-max)" $((sockets + 65536)) "both ends of every connection are files"
need net.core.somaxconn "$(sys net.core.somaxconn)" 65535 "connect storms"
need net.ipv4.tcp_max_syn_backlog "$(sys net.ipv4.tcp_max_syn_backlog)" 65535 "connect storms"
# ~9.8 KB of kernel memory per idle loopback pair; tcp_mem's hard limit is in pages.
need "net.ipv4.tcp_mem (max, pages)" "$(sys net.ipv4.tcp_mem)" $((N * 10000 / 4096)) "kernel TCP memory"
low=$(sysctl_get net.ipv4.ip_local_port_range | awk '{print $1}')
high=$(sysctl_get net.ipv4.ip_local_port_range | awk '{print $2}')
ports=$((high - low + 1))
sources=$(( (N + ports - 1) / ports ))
echo "info     ephemeral ports per source address: $ports; source addresses needed: $sources (127.0.0.x)"
# An imgate port inside the ephemeral range and not reserved can be taken by an outgoing
# connection, and imgate then fails to start ("Address already in use").
reserved=$(expand_ports "$(sysctl_get net.ipv4.ip_local_reserved_ports 2>/dev/null | tr -d ' \n')")
exposed=$(imgate_ports "$@" | awk -v lo="$low" -v hi="$high" '$1 >= lo && $1 <= hi' |
  grep -vxF -f <(printf '%s\n' $reserved 0) | compact_ports)
if [ -z "$exposed" ]; then
  printf 'ok       %-34s imgate ports %s reserved or outside %s-%s\n' \
    net.ipv4.ip_local_reserved_ports "$(imgate_ports "$@" | compact_ports)" "$low" "$high"
else
  printf 'MISSING  %-34s %s inside the ephemeral range %s-%s  (an outgoing connection can take them and imgate then cannot bind; sudo tuning/apply.sh reserves them)\n' \
    net.ipv4.ip_local_reserved_ports "$exposed" "$low" "$high"
  missing=1
fi
if conntrack=$(sysctl_get net.netfilter.nf_conntrack_max 2>/dev/null); then
  need net.netfilter.nf_conntrack_max "$conntrack" "$sockets" "tracked connections"
fi
nofile=$(ulimit -Hn)
per_process=$((nofile - 100))
processes=$(( (N + per_process - 1) / per_process ))
if [ "$nofile" -ge $((N + 1024)) ]; then
  echo "ok       RLIMIT_NOFILE (hard)                  $nofile: one comet process holds N"
else
  echo "info     RLIMIT_NOFILE (hard) is $nofile: run at least $processes comet processes and as many load-generator processes (tuning/README.md)"
fi
mem_kb=$(awk '/MemTotal/ {print $2}' /proc/meminfo)
need "memory (KiB)" "$mem_kb" $((N * 10 + N * 2)) "~10 KB kernel + ~2 KB user space per connection pair"
exit $missing
