#!/usr/bin/env bash
# The main job (README): build the default job image, boot it under hpmmap-vmm on 1 GiB pages
# reserved by hpmmap-offline, run the HPC workload in hpmmap memory, print its figure and the
# VMM report. Where this host's KVM cannot run a Linux kernel (the software kvm_pvm of the
# development machines), the same steps run inside the nested lab (QEMU/TCG L1 with a real KVM
# with NPT), and the figures are emulation figures: the script says which.
#
#   scripts/run-job.sh [--mem 2G] [--vcpus 2] [--job 'CMD ARGS' | --image DIR] [--timeout SECONDS]
#
# --image boots a job image built before (hpmmap-image build: packages, MPI ranks, ...).
# --timeout stops the VM after SECONDS (default $HPMMAP_JOB_LIMIT, else 1800) and prints the
# guest's output up to that point.
set -euo pipefail
cd "$(dirname "$0")/.."

MEM=2G
VCPUS=2
JOB=()
IMAGE=
TIMEOUT=${HPMMAP_JOB_LIMIT:-1800}
while [ $# -gt 0 ]; do
    case "$1" in
        --mem) MEM=$2; shift 2 ;;
        --vcpus) VCPUS=$2; shift 2 ;;
        --job) JOB=(--job "$2"); shift 2 ;;
        --image) IMAGE=$2; shift 2 ;;
        --timeout) TIMEOUT=$2; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "run-job.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case "$MEM" in
    *G) MEM_GIB=${MEM%G} ;;
    *) echo "run-job.sh: --mem must be whole GiB, like 2G (got '$MEM')" >&2; exit 2 ;;
esac
case "$TIMEOUT" in
    ''|*[!0-9]*|0) echo "run-job.sh: --timeout must be a whole number of seconds above 0 (got '$TIMEOUT')" >&2; exit 2 ;;
esac
if [ -n "$IMAGE" ] && { [ ${#JOB[@]} -gt 0 ] || [ ! -f "$IMAGE/manifest.json" ]; }; then
    echo "run-job.sh: --image '$IMAGE' must be a job image directory (with manifest.json), without --job" >&2
    exit 2
fi

if [ "${HPMMAP_SKIP_SETUP:-0}" != 1 ]; then
    bash scripts/setup-host.sh
fi

TARGET=${CARGO_TARGET_DIR:-$PWD/target}
echo "[run-job] building hpmmap-vmm, hpmmap-offline, hpmmap-image, hpmmap-lab (release)" >&2
cargo build --release --quiet -p hpmmap-vmm -p hpmmap-offline -p hpmmap-image
BIN=$TARGET/release

WORK=$(mktemp -d /tmp/hpmmap-job.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
if [ -z "$IMAGE" ]; then
    echo "[run-job] building the job image" >&2
    "$BIN/hpmmap-image" build --out "$WORK/image" "${JOB[@]}"
    IMAGE=$WORK/image
fi
IMAGE=$(cd "$IMAGE" && pwd)

# The steps inside the machine that has a KVM able to run Linux: reserve, boot, release.
# The VM is stopped after --timeout seconds; its console is kept so that the guest's output
# up to then is shown again, marked, after the stop.
STEPS="hpmmap-offline -q reserve --size $MEM
timeout --kill-after=10 $TIMEOUT hpmmap-vmm --mem $MEM --vcpus $VCPUS --image IMAGE --report REPORT 2>&1 | tee GUESTLOG
rc=\${PIPESTATUS[0]}
if [ \$rc = 124 ] || [ \$rc = 137 ]; then
    echo '--- stopped after $TIMEOUT s (--timeout); the guest output up to then: ---'; tail -n 200 GUESTLOG
fi
echo '--- hpmmap-vmm report (JSON) ---'; cat REPORT 2>/dev/null
hpmmap-offline -q release --all
exit \$rc"

if [ -e /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
    echo "[run-job] platform: this host's KVM (hardware virtualization)" >&2
    export PATH="$BIN:$PATH"
    script=${STEPS//IMAGE/$IMAGE}
    script=${script//REPORT/$WORK/report.json}
    script=${script//GUESTLOG/$WORK/guest.log}
    rc=0; bash -c "$script" || rc=$?
    exit $rc
fi

echo "[run-job] this host's /dev/kvm cannot run a Linux kernel (software nested virtualization" >&2
echo "[run-job] or no KVM): running the job inside the nested lab, a real KVM with NPT under" >&2
echo "[run-job] QEMU/TCG. Its timings are emulation timings; the page counters are real." >&2
# L1's own RAM is scattered over every GiB by its initramfs, so a run-time reservation finds
# no free 1 GiB range there; L1 reserves the guest's pages at boot instead (hugepages= on its
# command line, what a real host does with hugepagesz=1G hugepages=N), and hpmmap-offline
# shows them and the VM holding them.
# Nested SVM emulated by TCG fails now and then, and not because of the job: a multi-vCPU L2
# triple-faults (exit 72) or hangs in about 1 boot of 8, and L1 itself oopses or stops. The
# lab's one retry policy (tests/lab/retry.sh, the same for every lab scenario) boots the job
# again in L1 when that happens before the job started (3 boots at most), and --boots 5 boots
# L1 again; each failure is shown (vmm/README.md, Known issue). A job's own status, whatever
# it is, is never retried. The VMM runs pinned to one L1 CPU (its vCPUs share it).
LAB_STEPS=". /root/retry.sh
status_while_running() { # PID LOG: status once the VM maps its pages, or after 30 s
    for i in \$(seq 60); do
        hpmmap-offline status | grep -q 'held by hpmmap-vmm: pid' && break
        kill -0 \$1 2>/dev/null || break
        sleep 0.5
    done
    echo '--- hpmmap-offline status while the VM runs ---'; hpmmap-offline status
}
hpmmap-offline status
VMM_WHILE=status_while_running VMM_LIMIT=$TIMEOUT
vmm_retrying --mem $MEM --vcpus $VCPUS --image /job --report /tmp/report.json
rc=\$?
# vmm_retrying has printed the guest's output (its console) whatever the end.
[ \$rc = 143 ] && echo '--- stopped after $TIMEOUT s (--timeout); the guest output up to then is above ---'
echo '--- hpmmap-vmm report (JSON) ---'; cat /tmp/report.json
exit \$rc"
rc=0
# L1's own limit leaves room for three boots of the job and L1's start.
"$BIN/hpmmap-lab" run --mem "$((MEM_GIB + 3))G" --cpus "$VCPUS" --hugepages "$MEM_GIB" \
    --timeout $((TIMEOUT * 3 + 600)) \
    --boots 5 --bins "$BIN" --add "$IMAGE:/job" --add tests/lab/retry.sh:/root/retry.sh \
    -- "$LAB_STEPS" || rc=$?
exit $rc
