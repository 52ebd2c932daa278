# shellcheck shell=dash
# The Slurm scenario, run on node1 of `hpmmap-lab cluster` once every node is idle
# (tests/tests/slurm_lab.rs): bad options refused at submit time, srun and sbatch with
# --hpmmap-image, one VM per node per job, output and exit status, scancel mid-job leaving
# nothing behind. One `key=value` line per fact; command output prefixed with its name.
#   $1: nodes in the cluster   $2: "full" for the sbatch and scancel parts too
# Image: /images/ok (its own job prints hpmmap-lab-job-ran; served steps never run it).
nodes=${1:-2}
full=${2:-}
log() { sed "s/^/$1: /"; }
# facts NAME: what a node holds of hpmmap after jobs, on every node (a plain step, no VM).
facts() {
    # shellcheck disable=SC2016 # expanded on each node
    srun -N"$nodes" sh -c '
        vmms=$(pidof hpmmap-vmm | wc -w)
        runs=$(ls /run/hpmmap-slurm 2>/dev/null | wc -l)
        vfio=$(ls /sys/bus/pci/drivers/vfio-pci 2>/dev/null | grep -c :)
        jobs=$(hpmmap-offline status --json | tr -d " \n" | sed -n "s/.*\"jobs\":\[\([^]]*\)\].*/\1/p")
        free=$(cat /sys/kernel/mm/hugepages/hugepages-1048576kB/free_hugepages)
        echo "$(hostname) vmm=$vmms rundirs=$runs vfio=$vfio jobs=[$jobs] free_1g=$free"
    ' | sort | log "$1"
    echo "$1_drained=$(sinfo -h -N -t drain,drained,draining,down -o %N | sort -u | wc -l)"
}
# wait_gone JOB: until the job left the queue and every node is idle again (epilog done).
wait_gone() {
    t=0
    while [ $t -lt 300 ]; do
        if ! squeue -h -j "$1" 2>/dev/null | grep -q . &&
            [ "$(sinfo -h -N -t idle -o %N | sort -u | wc -l)" -ge "$nodes" ]; then
            return 0
        fi
        sleep 2
        t=$((t + 2))
    done
    echo "wait_gone_$1=timeout"
}
# vm_starts JOB: VM starts of the job on each node, from the helper's log.
vm_starts() {
    srun -N"$nodes" sh -c "echo \$(hostname)=\$(grep -c '^start job $1 ' /var/log/hpmmap-slurm.log 2>/dev/null)" |
        sort | tr '\n' ' '
}

echo "== help"
srun --help 2>&1 | grep -e '--hpmmap-' | log help

echo "== bad options: refused at submit time"
srun -N1 --hpmmap-image=/no/such/image true >/tmp/bad1 2>&1
echo "bad_image_rc=$?"
log bad_image </tmp/bad1
srun -N1 --hpmmap-image=/images/ok --hpmmap-mem=1536M true >/tmp/bad2 2>&1
echo "bad_mem_rc=$?"
log bad_mem </tmp/bad2
srun -N1 --hpmmap-image=/images/ok --hpmmap-vcpus=0 true >/tmp/bad3 2>&1
echo "bad_vcpus_rc=$?"
log bad_vcpus </tmp/bad3
sbatch -N1 --hpmmap-image=/etc --wrap true >/tmp/bad4 2>&1
echo "bad_sbatch_rc=$?"
log bad_sbatch </tmp/bad4
echo "queue_after_bad=$(squeue -h | wc -l)"
facts after_bad

echo "== a VF the node lacks: the step fails at its start with the cause, nothing is left"
srun -N1 --hpmmap-image=/images/ok --hpmmap-mem=1G --hpmmap-vcpus=1 --hpmmap-vf=0000:7f:1f.7 true >/tmp/badvf 2>&1
echo "bad_vf_rc=$?"
log bad_vf </tmp/badvf
badvf_job=$(scontrol show jobs 2>/dev/null | sed -n 's/^JobId=\([0-9]*\) .*/\1/p' | sort -n | tail -n 1)
wait_gone "$badvf_job"
facts after_bad_vf

echo "== srun with --hpmmap-image on every node: the tasks run in the VMs"
start=$(date +%s)
# In the VM: its hostname is the image's (job), its kernel command line has hpmmap.serve=1,
# Slurm's variables arrived, stdin came through; task 1 exits 3, so srun's status is 3.
# shellcheck disable=SC2016 # expanded in the VM
echo piped-in | srun -N"$nodes" --hpmmap-image=/images/ok --hpmmap-mem=1G --hpmmap-vcpus=1 -o /tmp/srun.out -e /tmp/srun.task-err sh -c '
    read -r line
    echo "in-vm host=$(hostname) serve=$(grep -c hpmmap.serve=1 /proc/cmdline) task=$SLURM_PROCID of=$SLURM_NTASKS stdin=$line"
    echo "in-vm-stderr task=$SLURM_PROCID" >&2
    [ "$SLURM_PROCID" = 1 ] && exit 3
    exit 0' 2>/tmp/srun.err
echo "srun_rc=$?"
echo "srun_secs=$(($(date +%s) - start))"
log srun_out </tmp/srun.out
log srun_err </tmp/srun.err
log srun_task_err </tmp/srun.task-err
srun_job=$(scontrol show jobs 2>/dev/null | sed -n 's/^JobId=\([0-9]*\) .*/\1/p' | sort -n | tail -n 1)
echo "srun_job=$srun_job"
wait_gone "$srun_job"
echo "srun_vm_starts=$(vm_starts "$srun_job")"
facts after_srun

if [ "$full" = full ]; then
    echo "== sbatch, default size: more than the node's free 1 GiB pages, refused at step start"
    # The job holds the node's RealMemory (2048 MB): the VM would take 2 GiB, the node has 1.
    jid=$(sbatch --parsable -N"$nodes" --hpmmap-image=/images/ok -o /tmp/nopages.out \
        --wrap 'srun -N'"$nodes"' true; echo step_rc=$?')
    echo "nopages_job=$jid"
    wait_gone "$jid"
    log nopages_out </tmp/nopages.out
    facts after_nopages

    echo "== sbatch: two steps, one VM per node"
    jid=$(sbatch --parsable -N"$nodes" --hpmmap-image=/images/ok --hpmmap-mem=1G -o /tmp/sbatch.out \
        --wrap 'srun -N'"$nodes"' sh -c "exit 4"; echo step1_rc=$?; srun -N'"$nodes"' true; echo step2_rc=$?')
    echo "sbatch_job=$jid"
    wait_gone "$jid"
    log sbatch_out </tmp/sbatch.out
    echo "sbatch_vm_starts=$(vm_starts "$jid")"
    facts after_sbatch

    echo "== scancel while the VMs run"
    jid=$(sbatch --parsable -N"$nodes" --hpmmap-image=/images/ok --hpmmap-mem=1G -o /tmp/cancel.out \
        --wrap 'srun -N'"$nodes"' sleep 600')
    echo "cancel_job=$jid"
    running=0
    t=0
    # The VMs boot in about 10 s here; a job that failed to start them stops the wait.
    while [ $t -lt 120 ] && squeue -h -j "$jid" 2>/dev/null | grep -q .; do
        # By process name, then argv: a pattern on argv would also match this sh.
        # shellcheck disable=SC2016 # expanded on each node
        running=$(srun --jobid="$jid" --overlap -N"$nodes" sh -c '
            for p in $(pidof hpmmap-vmm); do tr "\0" " " </proc/$p/cmdline; echo; done |
                grep -c -- "--job '"$jid"' "' 2>/dev/null |
            awk '{s += ($1 > 0)} END {print s + 0}')
        [ "$running" -ge "$nodes" ] && break
        sleep 3
        t=$((t + 3))
    done
    echo "cancel_vms_running=$running"
    scancel "$jid"
    wait_gone "$jid"
    echo "cancel_state=$(scontrol show job "$jid" | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')"
    facts after_cancel
fi
tail -n 20 /var/log/hpmmap-slurm.log 2>/dev/null | log helper_log
echo "scenario=done"
