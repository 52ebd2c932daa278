# shellcheck shell=dash
# The MPI part of the Slurm lab (tests/tests/slurm_lab.rs), run on node1 of
# `hpmmap-lab cluster`: MPICH ranks of /images/mpi started by `srun --mpi=pmi2`, inside the
# job's VM, wire up through Slurm's PMI server relayed over the task channel.
#   $1: nodes   $2: tasks
nodes=${1:-1}
tasks=${2:-2}
log() { sed "s/^/$1: /"; }
echo "== srun --mpi=pmi2 with MPICH ranks in the VM"
start=$(date +%s)
srun -N"$nodes" -n"$tasks" --mpi=pmi2 --hpmmap-image=/images/mpi --hpmmap-mem=1G --hpmmap-vcpus=1 \
    -o /tmp/mpi.out -e /tmp/mpi.err /job/allreduce 2>/tmp/mpi.srun
echo "mpi_rc=$?"
echo "mpi_secs=$(($(date +%s) - start))"
log mpi_out </tmp/mpi.out
log mpi_err </tmp/mpi.err
log mpi_srun </tmp/mpi.srun
# The job's epilog ends the VM after srun returns.
t=0
while [ $t -lt 60 ] && pidof hpmmap-vmm >/dev/null; do sleep 1; t=$((t + 1)); done
echo "mpi_vmms_left=$(pidof hpmmap-vmm | wc -w)"
echo "mpi_scenario=done"
