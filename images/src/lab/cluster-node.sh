# shellcheck shell=dash
# Sourced first in every L1 of `hpmmap-lab cluster` (images/src/lab/cluster.rs writes the
# line that sources it): names the node, puts its igb PF on the cluster network, starts
# munged, slurmd and (node 1) slurmctld. Node 1 then waits for every node to be idle before
# the caller's command runs; the other nodes keep their daemons up until node 1 is gone.
#   $1: this node's number (1..N)   $2: N
CLUSTER_NODE=$1
CLUSTER_NODES=$2
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/lab/bin
export SLURM_CONF=/etc/slurm/slurm.conf
cl() { echo "cluster node$CLUSTER_NODE: $*"; }

hostname "node$CLUSTER_NODE"
# The igb PF is L1's only NIC; the kernel names it (no udev in the lab).
dev=
for d in /sys/class/net/*; do
    [ "${d##*/}" = lo ] || { dev=${d##*/}; break; }
done
if [ -z "$dev" ]; then
    cl "FAIL no network interface (igb not probed?)"
    return 1
fi
ip addr add "10.16.0.$CLUSTER_NODE/24" dev "$dev"
ip link set "$dev" up
cl "address 10.16.0.$CLUSTER_NODE on $dev"

mkdir -p /var/lib/munge /var/log/munge /run/munge /var/spool/slurmd /var/spool/slurmctld \
    /var/log/slurm /run/slurm /sys/fs/cgroup
# cgroup/v1 is what slurmd 22.05 runs with here (DESIGN.md); its freezer hierarchy is the
# one slurmd looks for even with proctrack/linuxproc.
mount -t tmpfs cgroup_root /sys/fs/cgroup 2>/dev/null
for c in freezer cpuset memory devices cpuacct,cpu; do
    mkdir -p "/sys/fs/cgroup/$c"
    mount -t cgroup -o "$c" "$c" "/sys/fs/cgroup/$c" 2>/dev/null
done
# munged refuses a key or directories others could write; root owns them all here.
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0400 /etc/munge/munge.key
chmod 0755 /run/munge
if ! munged --force; then
    cl "FAIL munged did not start"
    return 1
fi
if [ "$CLUSTER_NODE" = 1 ]; then
    if ! slurmctld -i; then
        cl "FAIL slurmctld did not start"; cat /var/log/slurm/slurmctld.log
        return 1
    fi
fi
if ! slurmd -N "node$CLUSTER_NODE"; then
    cl "FAIL slurmd did not start"; cat /var/log/slurm/slurmd.log
    return 1
fi
hp=/sys/kernel/mm/hugepages/hugepages-1048576kB
cl "1 GiB pages: $(cat $hp/nr_hugepages) reserved at boot, $(cat $hp/free_hugepages) free"
cl "munged, slurmd$( [ "$CLUSTER_NODE" = 1 ] && echo ', slurmctld') started"

# cluster_wait_idle SECS: node 1 waits until every node reports idle.
cluster_wait_idle() {
    t=0
    while [ "$t" -lt "$1" ]; do
        idle=$(sinfo -h -N -t idle -o '%N' 2>/dev/null | sort -u | wc -l)
        if [ "$idle" -ge "$CLUSTER_NODES" ]; then
            cl "all $CLUSTER_NODES nodes idle after ${t} s"
            return 0
        fi
        sleep 2
        t=$((t + 2))
    done
    cl "FAIL only $idle of $CLUSTER_NODES nodes idle after $1 s"
    sinfo -N -l 2>&1
    tail -n 30 /var/log/slurm/slurmctld.log
    return 1
}

# cluster_serve: the other nodes serve until node 1, once seen, stops answering (it powers
# off when the caller's command is done).
cluster_serve() {
    seen=0
    misses=0
    while :; do
        if ping -c 1 -W 2 10.16.0.1 >/dev/null 2>&1; then
            seen=1
            misses=0
        elif [ "$seen" = 1 ]; then
            misses=$((misses + 1))
            [ "$misses" -ge 3 ] && break
        fi
        sleep 3
    done
    cl "node1 gone; slurmd log tail:"
    tail -n 40 /var/log/slurm/slurmd.log
}
return 0
