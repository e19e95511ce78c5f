#!/bin/bash
# A real Slurm cluster on this machine, to try train.sbatch and sweep.sbatch as on a real one:
# a controller and N nodes (default 2, 1 CPU each), each its own host: its own network
# namespace with its own address on a private bridge, and its own hostname, equal to its
# node name (torchrun's rendezvous picks the agent that hosts its store by comparing the
# endpoint's name with the hostname).
#
#   apt-get install -y slurm-wlm munge           # once; this script installs nothing
#   launch/slurm/local_cluster.sh up [N]         # as root; prints the SLURM_CONF to export
#   launch/slurm/local_cluster.sh status
#   launch/slurm/local_cluster.sh kill-node NAME # every process of that host, as if it died
#   launch/slurm/local_cluster.sh down           # daemons, namespaces, bridge, /etc/hosts lines
#
# Environment (all optional; give a second cluster other values for all four):
#   DREG_CLUSTER_NAME   prefix of node names, namespaces and the bridge (default: dreg;
#                       nodes dreg1..dregN, controller dregctl)
#   DREG_CLUSTER_NET    the first three octets of the private /24 (default: 10.213.7)
#   DREG_CLUSTER_DIR    folder for slurm.conf, cgroup.conf, state and logs
#                       (default: /tmp/<name>-cluster)
#   DREG_CLUSTER_PORT   slurmctld's port (default: 6817)
#   DREG_CLUSTER_SLURMD_TIMEOUT  seconds before the controller declares a silent node DOWN
#                       (default: 300, Slurm's own, so that a lost node looks as it does on a
#                       real cluster)
#
# Each daemon runs with only its namespace's network (nsenter --net, so the host's mounts,
# /sys/fs/cgroup included, stay as they are) and its own UTS namespace. munged runs once
# on the host with its own key and socket; the nodes reach it by path. Processes are
# tracked without cgroups (proctrack/linuxproc, task/none); cgroup.conf names the v1
# hierarchy that is mounted here, which slurmd 22.05 probes at start-up.
set -euo pipefail

NAME=${DREG_CLUSTER_NAME:-dreg}
NET=${DREG_CLUSTER_NET:-10.213.7}
DIR=${DREG_CLUSTER_DIR:-/tmp/$NAME-cluster}
PORT=${DREG_CLUSTER_PORT:-6817}
SLURMD_TIMEOUT=${DREG_CLUSTER_SLURMD_TIMEOUT:-300}
BRIDGE=$NAME-br
CTL=${NAME}ctl
TAG="# added by local_cluster.sh ($NAME)"
MARK=$DIR/.local-cluster

die() { echo "local_cluster.sh: error: $*" >&2; exit 1; }
say() { echo "local_cluster.sh: $*" >&2; }

nodes() {  # the node names of the cluster that is up
    [[ -f $DIR/nodes ]] && cat "$DIR/nodes"
}

in_ns() {  # in_ns NAMESPACE HOSTNAME COMMAND...: run a daemon as host HOSTNAME
    local ns=$1 host=$2
    shift 2
    # At nice 0 even from a niced shell: a starved munged or slurmd misses Slurm's RPC timeouts
    # and nodes fall "not responding". Jobs still run at the submitter's nice
    # (PropagatePrioProcess=1 in slurm.conf).
    nice -n "$((-$(nice)))" nsenter --net="/run/netns/$ns" unshare --uts sh -c 'hostname "$0" && exec "$@"' \
        "$host" "$@"
}

kill_ns() {  # every process in network namespace $1, which only this script's daemons started
    local pids
    pids=$(ip netns pids "$1" 2>/dev/null || true)
    [[ -z $pids ]] && return 0
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    for _ in $(seq 50); do
        [[ -z $(ip netns pids "$1" 2>/dev/null || true) ]] && return 0
        sleep 0.1
    done
}

write_conf() {  # write_conf N
    local n=$1 i
    mkdir -p "$DIR/ctld" "$DIR/munge"
    cat > "$DIR/slurm.conf" <<EOF
# Written by launch/slurm/local_cluster.sh for a throw-away cluster on one machine.
ClusterName=$NAME
SlurmctldHost=$CTL($NET.1)
SlurmctldPort=$PORT
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/%n/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/%n/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/%n/slurmd.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
PropagatePrioProcess=1
SlurmdTimeout=$SLURMD_TIMEOUT
InactiveLimit=0
KillWait=30
MinJobAge=600
MailProg=/bin/true
EOF
    for i in $(seq "$n"); do
        echo "NodeName=$NAME$i NodeAddr=$NET.$((10 + i)) CPUs=1 RealMemory=1000 State=UNKNOWN" >> "$DIR/slurm.conf"
    done
    echo "PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP" >> "$DIR/slurm.conf"
    cat > "$DIR/cgroup.conf" <<EOF
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
CgroupAutomount=no
EOF
}

add_host() {  # add_host NAMESPACE ADDRESS HOSTNAME
    local ns=$1 addr=$2 host=$3
    ip netns add "$ns"
    ip link add "$ns-h" type veth peer name eth0 netns "$ns"
    ip link set "$ns-h" master "$BRIDGE" up
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    echo "$addr $host $TAG" >> /etc/hosts
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...
    local limit=$1 what=$2
    shift 2
    for _ in $(seq $((limit * 5))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "$what did not come up in $limit s; see the logs in $DIR"
}

up() {
    local n=${1:-2} i
    [[ $n =~ ^[1-9][0-9]?$ ]] || die "the number of nodes must be 1 to 99, not '$n'"
    [[ $(id -u) == 0 ]] || die "run as root (it creates network namespaces and a bridge)"
    for cmd in slurmctld slurmd munged ip nsenter unshare; do
        command -v "$cmd" >/dev/null || die "$cmd not found; install Slurm and munge first: apt-get install -y slurm-wlm munge"
    done
    [[ -e $MARK ]] && die "a cluster is already up in $DIR; run '$0 down' first"
    ip link show "$BRIDGE" >/dev/null 2>&1 && die "interface $BRIDGE exists already; run '$0 down' first"
    if ip -4 addr | grep -q " $NET\."; then
        die "addresses $NET.0/24 are in use on this machine; set DREG_CLUSTER_NET to another private /24"
    fi
    mkdir -p "$DIR"
    touch "$MARK"
    trap 'say "start-up failed; tearing down"; down >/dev/null 2>&1 || true' EXIT

    write_conf "$n"
    for i in $(seq "$n"); do echo "$NAME$i"; done > "$DIR/nodes"
    export SLURM_CONF=$DIR/slurm.conf

    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    chmod 700 "$DIR/munge"
    chmod 400 "$DIR/munge/munge.key"
    nice -n "$((-$(nice)))" munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed"

    ip link add "$BRIDGE" type bridge
    ip addr add "$NET.254/24" dev "$BRIDGE"  # the host's own address on the bridge, for sbatch & co.
    ip link set "$BRIDGE" up
    add_host "$CTL" "$NET.1" "$CTL"
    for i in $(seq "$n"); do
        add_host "$NAME$i" "$NET.$((10 + i))" "$NAME$i"
    done

    in_ns "$CTL" "$CTL" slurmctld -c -f "$SLURM_CONF"
    wait_for 30 slurmctld scontrol ping
    for i in $(seq "$n"); do
        mkdir -p "$DIR/$NAME$i/spool"
        in_ns "$NAME$i" "$NAME$i" slurmd -f "$SLURM_CONF" -N "$NAME$i"
    done
    wait_for 60 "$n idle node(s)" bash -c "[[ \$(sinfo -h -t idle -o %D) == $n ]]"
    trap - EXIT
    say "up: $n node(s) ($(paste -sd, "$DIR/nodes")), controller $CTL; logs in $DIR"
    echo "export SLURM_CONF=$SLURM_CONF"
}

kill_node() {  # kill_node NAME: every process of host NAME, as if the machine had died
    local node=${1:?usage: $0 kill-node NODE}
    nodes | grep -qx "$node" || die "$node is not a node of the cluster in $DIR"
    kill_ns "$node"
    say "killed every process on $node"
}

start_node() {  # start_node NAME: a killed node's slurmd again (the controller resumes the node)
    local node=${1:?usage: $0 start-node NODE}
    nodes | grep -qx "$node" || die "$node is not a node of the cluster in $DIR"
    [[ -n $(ip netns pids "$node" 2>/dev/null) ]] && die "$node is still running"
    in_ns "$node" "$node" slurmd -f "$DIR/slurm.conf" -N "$node"
    say "started slurmd on $node"
}

namespaces() {  # this cluster's namespaces, also those of an earlier run whose folder is gone
    { nodes; echo "$CTL"; ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${NAME}([0-9]+|ctl)$"; } | sort -u
}

down() {
    local ns pids
    for ns in $(namespaces); do
        kill_ns "$ns"
        ip netns del "$ns" 2>/dev/null || true
    done
    if [[ -f $DIR/munge/munged.pid ]]; then
        pids=$(cat "$DIR/munge/munged.pid")
        kill "$pids" 2>/dev/null || true
    fi
    ip link del "$BRIDGE" 2>/dev/null || true
    if grep -qF "$TAG" /etc/hosts; then
        # Rewritten in place: /etc/hosts is often a bind mount, which a rename would fail on.
        local kept
        kept=$(grep -vF "$TAG" /etc/hosts || true)
        printf '%s\n' "$kept" > /etc/hosts
    fi
    if [[ -e $MARK ]]; then  # only a folder this script made
        rm -rf "$DIR"
    fi
    say "down"
}

status() {
    if [[ ! -e $MARK ]]; then
        echo "no cluster in $DIR"
        return 1
    fi
    export SLURM_CONF=$DIR/slurm.conf
    echo "SLURM_CONF=$SLURM_CONF"
    sinfo -N -o '%N %t %c' || true
    squeue || true
}

case ${1:-} in
    up) shift; up "$@" ;;
    down) down ;;
    status) status ;;
    kill-node) shift; kill_node "$@" ;;
    start-node) shift; start_node "$@" ;;
    *) echo "usage: $0 up [NODES] | down | status | kill-node NODE | start-node NODE" >&2; exit 2 ;;
esac
