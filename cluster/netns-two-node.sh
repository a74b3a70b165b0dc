#!/usr/bin/env bash
# Two "nodes" on one machine: two network namespaces joined by a veth pair whose link tc caps at a given rate,
# and mpirun launching one rank in each over TCP (Open MPI's rsh launcher replaced by `ip netns exec`).
# Measures what a real two-node run pays for the network: the all-reduce and the step efficiency.
# Needs root (ip netns, tc). Usage:
#   cluster/netns-two-node.sh up RATE          create (or re-rate) the namespaces, e.g. RATE=10gbit, 25gbit, none
#   cluster/netns-two-node.sh run COMMAND...   run COMMAND under mpirun, one rank per namespace, TCP only
#   cluster/netns-two-node.sh down             remove them
set -euo pipefail
a=hd-node-a b=hd-node-b ipa=10.77.0.1 ipb=10.77.0.2
here=$(cd "$(dirname "$0")" && pwd)

case "${1:-}" in
up)
    rate=${2:?usage: netns-two-node.sh up RATE (10gbit, 25gbit or none)}
    if ! ip netns list | grep -q "^$a"; then
        ip netns add $a; ip netns add $b
        ip link add veth-a netns $a type veth peer name veth-b netns $b
        ip -n $a addr add $ipa/24 dev veth-a; ip -n $b addr add $ipb/24 dev veth-b
        for ns in $a $b; do ip -n $ns link set lo up; done
        ip -n $a link set veth-a up; ip -n $b link set veth-b up
    fi
    for pair in "$a veth-a" "$b veth-b"; do
        set -- $pair
        tc -n "$1" qdisc del dev "$2" root 2>/dev/null || true
        # A token bucket per direction: RATE sustained, a burst of 1 ms at that rate, packets queued at most 5 ms.
        if [ "$rate" != none ]; then
            bits=$(numfmt --from=si "$(echo "${rate%bit}" | tr gmk GMK)")
            burst=$(( bits / 8 / 1000 ))
            tc -n "$1" qdisc add dev "$2" root tbf rate "$rate" burst "$burst" latency 5ms
        fi
    done
    ip netns exec $a bash -c "exec 3<>/dev/tcp/$ipb/1" 2>/dev/null || true   # ARP warm-up (a refused connection is fine)
    echo "namespaces $a ($ipa) and $b ($ipb) joined by veth, link rate: $rate"
    ;;
run)
    shift
    # Open MPI starts the remote daemon through this agent: its first argument is the host.
    agent=$(mktemp /tmp/hd-netns-rsh.XXXXXX)
    cat > "$agent" <<AGENT
#!/usr/bin/env bash
host=\$1; shift
case "\$host" in $ipa) ns=$a ;; $ipb) ns=$b ;; *) echo "netns agent: unknown host \$host" >&2; exit 1 ;; esac
exec ip netns exec "\$ns" /bin/sh -c "\$*"
AGENT
    chmod +x "$agent"
    trap 'rm -f "$agent"' EXIT
    extra=()
    if [ "$(id -u)" = 0 ]; then extra+=(--allow-run-as-root); fi
    ip netns exec $a mpirun "${extra[@]}" --host $ipa:1,$ipb:1 -np 2 --bind-to none \
        --mca plm_rsh_agent "$agent" --mca plm_rsh_no_tree_spawn 1 \
        --mca btl tcp,self --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24 \
        -x PATH "$@"
    ;;
down)
    ip netns del $a 2>/dev/null || true; ip netns del $b 2>/dev/null || true
    echo "removed $a and $b"
    ;;
*)
    sed -n 2,9p "$0"; exit 2 ;;
esac
