#!/usr/bin/env bash
# Device-dax for real, one level down, in the nested lab's L1 (`hpmmap-lab run`: Debian's
# 6.1 kernel under QEMU/TCG). First boot with `--pmem 3G` (`memmap=3G!4G`, a legacy pmem
# range, as a host that sets memory aside at boot has): devdax.sh turns the namespace into a
# device-dax device with the nvdimm sysfs (what `ndctl create-namespace -m devdax --align 1G`
# does) and runs hpmmap-offline: status; the device put in system-ram mode (kmem, as
# `daxctl reconfigure-device -m system-ram` does); `reserve --devdax` converting it back;
# `release --all`. The sysfs trees are recorded at each step
# (tests/fixtures/record-sysfs.sh) and come back through the command's output.
#
# A second boot with `--append movablecore=5G` (most memory in ZONE_MOVABLE, where 1 GiB
# pages cannot come from) reserves 2 GiB of hugetlb pages, cycling blocks into a kernel zone
# if needed, and releases them.
#
# usage: devdax-lab.sh OUTDIR     (OUTDIR receives each boot's output and the recorded trees)
# exit: 0 pass, 1 fail, 77 cannot run here (no kernel package, no QEMU with igb)
# Platform: nested lab under QEMU/TCG (emulated); this proves sysfs behaviour, not speed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:?usage: devdax-lab.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$repo"
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$repo/$target ;; esac

log() { echo "[devdax-lab] $*" >&2; }

# shellcheck source=scripts/lib/lab-check.sh
. "$repo/scripts/lib/lab-check.sh"
if why=$(lab_unavailable); then
    log "$why"
    exit 77 # cannot run here: the caller prints SKIP
fi

log "building hpmmap-offline and hpmmap-lab"
nice cargo build -q -p hpmmap-offline --bin hpmmap-offline -p hpmmap-image --bin hpmmap-lab
# L1 carries hpmmap-offline only: without the VMM's debug build its initramfs is smaller
# and boots sooner.
mkdir -p "$out/bins"
ln -sf "$target/debug/hpmmap-offline" "$out/bins/hpmmap-offline"

# boot NAME LAB-ARGS...: one L1 run of devdax.sh NAME; its output in $out/console-NAME.log,
# the trees it recorded under $out.
boot() {
    local name=$1 log=$out/console-$1.log rc=0
    shift
    log "L1 run '$name' ($*)"
    "$target/debug/hpmmap-lab" run --mem 8G --cpus 1 --hugepages 0 --timeout 600 \
        --bins "$out/bins" --work "$out/lab-$name" "$@" \
        --add "$here/devdax.sh:/root/devdax.sh" \
        --add "$repo/host-offline/tests/fixtures/record-sysfs.sh:/root/record-sysfs.sh" \
        -- sh /root/devdax.sh "$name" >"$log" || rc=$?
    grep -q '^LAB-DONE$' "$log" || { log "L1 did not finish (hpmmap-lab status $rc); see $log and $out/lab-$name"; exit 1; }
    sed -n '/^LAB-TAR-BEGIN$/,/^LAB-TAR-END$/p' "$log" | sed '1d;$d' | base64 -d \
        | tar xzf - -C "$out"
    sed -i '/^LAB-TAR-BEGIN$/,/^LAB-TAR-END$/d' "$log"
}
boot devdax --pmem 3G --modules kmem,nd_btt
boot cycle --append movablecore=5G

# What the run must show (on the real 6.1 kernel of L1).
fail() { log "FAIL: $*"; exit 1; }
c=$out/console-devdax.log
grep -q '^/dev/dax0.0: 2 GiB with 1 GiB alignment on node 0 (already prepared)$' "$c" \
    || fail "the nvdimm-made 1 GiB-aligned device was not taken as it is"
grep -q 'dax0.0: static region device of 2 GiB only' "$c" || fail "4 GiB on a 2 GiB device not refused"
grep -q '^/dev/dax0.0: 2 GiB with 1 GiB alignment on node 0 (prepared)$' "$c" \
    || fail "reserve --devdax did not convert the system-ram device"
grep -q 'dax dax0.0: size 2 GiB, align 1 GiB, node 0, driver device_dax' "$c" || fail "status after convert"
grep -q '^dax dax0.0: restored$' "$c" || fail "release --all did not restore the device"
[ "$(grep -c 'memory blocks (128 MiB each): 56 online' "$c")" -ge 2 ] || fail "blocks not back online"
[ ! -e "$out/pmem-restored/sys/devices/platform/e820_pmem/ndbus0/region0/dax0.0/dax0.0/driver" ] \
    && fail "no driver after release"
diff --no-dereference -r -x meminfo "$out/pmem-kmem/sys" "$out/pmem-restored/sys" >/dev/null \
    || fail "sysfs after release --all differs from before reserve (meminfo aside)"
log "PASS: devdax prepared, converted from system-ram and restored on L1's 6.1 kernel"
c=$out/console-cycle.log
grep -q '^node 0: 2 of 2 GiB reserved' "$c" || fail "hugetlb reserve with movablecore= did not get 2 GiB"
grep -q '^hpmmap-offline holds nothing now$' "$c" || fail "release --all did not finish"
diff --no-dereference -r -x meminfo "$out/cycle-before/sys" "$out/cycle-after/sys" >/dev/null \
    || fail "sysfs after release --all differs from before reserve (meminfo aside)"
log "PASS: 1 GiB pages reserved and released with high memory in ZONE_MOVABLE"
log "done: $out"
