# shellcheck shell=dash
# The cross-node MPI part of the Slurm lab (tests/tests/slurm_lab.rs), run on node1 of a
# two-node `hpmmap-lab cluster`: each node's job VM gets an igb VF (--hpmmap-vf) with
# 10.17.0.K (the lab's node.conf VF_IP -> hpmmap.ip=), and two MPICH ranks, one in each
# node's VM, allreduce over the VFs; the VFs' packet counters in the VMs show the traffic.
# Two allocations one after the other: the second gets the same VFs and pages back.
#   sh mpi-vf.sh            on node1: sets up the VFs, runs the jobs, prints mpivf_rN_* lines
#   sh mpi-vf.sh node       on every node (srun): one VF on the igb PF
#   sh mpi-vf.sh steps N    inside allocation N (salloc)
case ${1:-} in
node)
    # igbvf in L1 goes in only once the PF's link is back after SR-IOV re-initialised it
    # (vmm/pci/lab/vf-e2e-l1.sh); the VMM binds the VF to vfio-pci for the job.
    rmmod igbvf 2>/dev/null
    pf=
    for n in /sys/class/net/*; do
        d=$(readlink "$n/device/driver" 2>/dev/null)
        [ "${d##*/}" = igb ] && pf=${n##*/}
    done
    PF=$(basename "$(readlink "/sys/class/net/$pf/device")")
    echo 1 >"/sys/bus/pci/devices/$PF/sriov_numvfs"
    for _ in $(seq 1 30); do [ "$(cat "/sys/class/net/$pf/carrier")" = 1 ] && break; sleep 1; done
    sleep 1
    modprobe igbvf
    echo "mpivf_node $(hostname) vf=$(basename "$(readlink "/sys/bus/pci/devices/$PF/virtfn0")") pf_carrier=$(cat "/sys/class/net/$pf/carrier")"
    ;;
steps)
    k=mpivf_r$2
    # One task per node's VM: its address and the VF netdev's counters (rx,tx packets).
    counters() {
        # shellcheck disable=SC2016 # expanded in the VM
        srun -N2 -n2 sh -c 'd=/sys/class/net/eth0/statistics; a=$(ip addr show dev eth0 | sed -n "s/.*inet \([0-9.]*\).*/\1/p"); echo "$0_node$SLURM_NODEID=$a,$(cat $d/rx_packets),$(cat $d/tx_packets)"' "${k}_$1"
    }
    counters before
    srun -N2 -n2 --mpi=pmi2 -o /tmp/mpivf.out -e /tmp/mpivf.err /job/allreduce 2>/tmp/mpivf.srun
    echo "${k}_rc=$?"
    sed "s/^/${k}_out: /" /tmp/mpivf.out
    sed "s/^/${k}_err: /" /tmp/mpivf.err
    sed "s/^/${k}_srun: /" /tmp/mpivf.srun
    counters after
    ;;
*)
    echo "== MPICH ranks in two nodes' VMs over their VFs"
    srun -N2 sh /lab/mpi-vf.sh node
    # Both nodes' PFs sit at the same address, so are their VFs: node1's name is every node's.
    vf=
    for d in /sys/class/net/*/device/virtfn0; do [ -e "$d" ] && vf=$(basename "$(readlink "$d")"); done
    for round in 1 2; do
        k=mpivf_r$round
        start=$(date +%s)
        salloc -N2 --hpmmap-image=/images/mpi --hpmmap-mem=1G --hpmmap-vcpus=1 --hpmmap-vf="$vf" \
            sh /lab/mpi-vf.sh steps "$round"
        echo "${k}_salloc_rc=$?"
        echo "${k}_secs=$(($(date +%s) - start))"
        t=0
        while [ $t -lt 60 ] && pidof hpmmap-vmm >/dev/null; do sleep 1; t=$((t + 1)); done
        echo "${k}_vmms_left=$(pidof hpmmap-vmm | wc -w)"
        n=0
        for d in /sys/bus/pci/drivers/vfio-pci/0000:*; do [ -e "$d" ] && n=$((n + 1)); done
        echo "${k}_vfio=$n"
    done
    echo "mpivf_scenario=done"
    ;;
esac
