# imgate's listening ports, for apply.sh and check.sh (sourced, not run).
#
# The kernel hands out ephemeral ports (the local port of an outgoing connection: a cluster
# link, Redis, a load generator's client) from net.ipv4.ip_local_port_range. apply.sh widens
# that range to 1024-65535, which covers imgate's ports: an outgoing connection holding 3101
# makes the next imgate start fail to bind it. Ports listed in
# net.ipv4.ip_local_reserved_ports are never handed out.

# imgate's default ports (goim's: comet TCP 3101, WebSocket 3102, wss 3103, TLS TCP 3104, comet
# link 3109, logic HTTP 3111, logic link 3119), the second comet and logic of cluster/*.toml
# (3201, 3202, 3209, 3211, 3219), and the extra comets' links of tuning/README.md (3309-3509).
IMGATE_DEFAULT_PORTS="3101-3104,3109,3111,3119,3201,3202,3209,3211,3219,3309,3409,3509"

# The sysctl tree read and written (tests point it elsewhere).
SYSCTL_ROOT=${SYSCTL_ROOT:-/proc/sys}

# sysctl_get KEY: the value of KEY (tabs as spaces); fails if the kernel has no such key.
sysctl_get() {
  local file="$SYSCTL_ROOT/${1//.//}"
  [ -r "$file" ] || return 1
  tr '\t' ' ' <"$file"
}

# sysctl_set KEY VALUE
sysctl_set() {
  printf '%s\n' "$2" >"$SYSCTL_ROOT/${1//.//}"
}

# expand_ports LIST: "3101-3104,3109" as one port per line.
expand_ports() {
  local item lo hi
  for item in ${1//,/ }; do
    lo=${item%-*}; hi=${item#*-}
    [[ $lo =~ ^[0-9]+$ && $hi =~ ^[0-9]+$ ]] || continue
    seq "$lo" "$hi"
  done
}

# compact_ports: ports on stdin, one per line, as "3101-3104,3109" (sorted, without repeats).
compact_ports() {
  sort -n -u | awk '
    NR == 1 { lo = hi = $1; next }
    $1 == hi + 1 { hi = $1; next }
    { out = out sep (hi > lo ? lo "-" hi : lo); sep = ","; lo = hi = $1 }
    END { if (NR) print out sep (hi > lo ? lo "-" hi : lo) }'
}

# config_ports FILE...: the ports of every *_bind address in these imgate configurations.
config_ports() {
  [ $# -gt 0 ] || return 0
  grep -hE '^[[:space:]]*[a-z_]*bind[[:space:]]*=' "$@" | grep -oE ':[0-9]+"' | tr -d ':"' |
    grep -vx 0 || true
}

# imgate_ports FILE...: the defaults and the ports the given configurations listen on, one
# per line.
imgate_ports() {
  { expand_ports "$IMGATE_DEFAULT_PORTS"; config_ports "$@"; } | sort -n -u
}
