#!/usr/bin/env bash
# Device-dax for real, one level down: boots Debian's 6.1 kernel under QEMU/TCG with
# `memmap=3G!4G` (a legacy pmem range, as a host that sets memory aside at boot has), turns
# the namespace into a device-dax device with the nvdimm sysfs (what `ndctl create-namespace
# -m devdax --align 1G` does), and runs the static hpmmap-offline inside: status; the device
# put in system-ram mode (kmem, as `daxctl reconfigure-device -m system-ram` does); `reserve
# --devdax` converting it back; `release --all`. The sysfs trees are recorded at each step
# (tests/fixtures/record-sysfs.sh) and copied out through the serial console.
#
# A second boot with `movablecore=5G` (most memory in ZONE_MOVABLE, where 1 GiB pages cannot
# come from) reserves 2 GiB of hugetlb pages, cycling blocks into a kernel zone if needed,
# and releases them.
#
# usage: devdax-lab.sh OUTDIR     (OUTDIR receives the console logs and the recorded trees)
# exit: 0 pass, 1 fail, 77 cannot run here (no kernel package obtainable)
# Platform: QEMU/TCG guest (emulated); this proves sysfs behaviour, not speed.
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib/qemu-boot.sh"
. "$(dirname "$0")/../../scripts/lib/debian-kernel.sh"
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:?usage: devdax-lab.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=${CARGO_TARGET_DIR:-$repo/target}/devdax-lab
mkdir -p "$work"

log() { echo "[devdax-lab] $*" >&2; }

deb=$(debian_kernel_deb) || exit 77 # cannot run here: the caller prints SKIP
kdir=$work/k
if [ ! -d "$kdir/boot" ]; then
    log "extracting $(basename "$deb")"
    dpkg-deb -x "$deb" "$kdir"
fi
vmlinuz=$(ls "$kdir"/boot/vmlinuz-* | head -1)
kver=${vmlinuz##*/vmlinuz-}
mods=$kdir/lib/modules/$kver/kernel/drivers

log "building static hpmmap-offline"
(cd "$repo" && RUSTFLAGS='-C target-feature=+crt-static' nice cargo build -q -p hpmmap-offline \
    --bin hpmmap-offline --target x86_64-unknown-linux-gnu)
bin=${CARGO_TARGET_DIR:-$repo/target}/x86_64-unknown-linux-gnu/debug/hpmmap-offline

root=$work/initramfs
rm -rf "$root"
mkdir -p "$root"/{bin,sbin,proc,sys,dev,run,tmp,lib/modules,rec}
cp /bin/busybox "$root/bin/busybox"
mkdir -p "$root/usr/bin"
ln -s ../../bin/busybox "$root/usr/bin/env" # record-sysfs.sh starts with /usr/bin/env bash
for a in sh ash bash cat echo ls mkdir mount sleep readlink tar gzip base64 grep awk sed \
    date uname nproc find wc head tail cp ln rm dirname basename insmod poweroff tr cut env; do
    ln -s busybox "$root/bin/$a"
done
for m in nvdimm/libnvdimm nvdimm/nd_btt nvdimm/nd_e820 nvdimm/nd_pmem dax/device_dax \
    dax/dax_pmem dax/kmem; do
    cp "$mods/$m.ko" "$root/lib/modules/"
done
cp "$bin" "$root/bin/hpmmap-offline"
cp "$repo/host-offline/tests/fixtures/record-sysfs.sh" "$root/bin/record-sysfs"
cat >"$root/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
export PATH=/bin
for m in libnvdimm nd_btt nd_e820 nd_pmem device_dax dax_pmem kmem; do
    insmod /lib/modules/$m.ko || echo "LAB: insmod $m failed"
done
sleep 1
step() { echo; echo "LAB-STEP $*"; }
run() { echo "\$ $*"; "$@"; echo "exit $?"; }
H="hpmmap-offline --state-file /run/hpmmap/offline.json"

if grep -q "lab=cycle" /proc/cmdline; then
    step "hugetlb pool through block cycling (movablecore=: high memory is ZONE_MOVABLE)"
    run $H status
    sh /bin/record-sysfs /rec/cycle-before >/dev/null
    run $H reserve --size 2G --keep 1G
    run $H status
    cat /run/hpmmap/offline.json
    run $H release --all
    run $H status
    sh /bin/record-sysfs /rec/cycle-after >/dev/null
    step "recorded trees"
    cd /rec && tar czf /tmp/rec.tgz . && echo "LAB-TAR-BEGIN" && base64 /tmp/rec.tgz && echo "LAB-TAR-END"
    echo "LAB-DONE"
    poweroff -f
fi

step "nvdimm: namespace0.0 -> devdax with 1 GiB align"
nd=/sys/bus/nd/devices
ls $nd
seed=$(cat $nd/region0/dax_seed)
echo "dax seed: $seed"
echo namespace0.0 > /sys/bus/nd/drivers/nd_pmem/unbind
echo 1073741824 > $nd/$seed/align
echo ram > $nd/$seed/mode
cat /proc/sys/kernel/random/uuid > $nd/$seed/uuid
echo namespace0.0 > $nd/$seed/namespace
echo $seed > /sys/bus/nd/drivers/dax_pmem/bind || echo "LAB: bind $seed to dax_pmem failed"
ls -l /sys/bus/dax/devices/
d=$(ls /sys/bus/dax/devices | head -1)
for f in size align target_node numa_node resource; do echo "$d/$f: $(cat /sys/bus/dax/devices/$d/$f)"; done
echo "driver: $(readlink /sys/bus/dax/devices/$d/driver)"
ls /sys/bus/dax/devices/$d/../dax_region/ 2>&1
sh /bin/record-sysfs /rec/pmem-devdax >/dev/null

step "hpmmap-offline on the devdax device as the nvdimm made it"
run $H status
run $H reserve --devdax --size 1G
run $H reserve --devdax --size 4G

step "device to system-ram mode (kmem), as daxctl reconfigure-device -m system-ram"
echo $d > /sys/bus/dax/drivers/device_dax/unbind
echo $d > /sys/bus/dax/drivers/kmem/new_id
echo "driver: $(readlink /sys/bus/dax/devices/$d/driver)"
cat /sys/devices/system/memory/auto_online_blocks
for b in /sys/devices/system/memory/memory*; do
    s=$(cat $b/state); [ "$s" = offline ] && echo "$(basename $b) offline $(cat $b/valid_zones)"
done
for b in /sys/devices/system/memory/memory*; do
    if [ "$(cat $b/state)" = offline ]; then echo online_movable > $b/state; fi
done
grep -E "MemTotal" /proc/meminfo
sh /bin/record-sysfs /rec/pmem-kmem >/dev/null

step "hpmmap-offline reserve --devdax converts the kmem device back"
run $H status
run $H reserve --devdax --size 2G
run $H status
sh /bin/record-sysfs /rec/pmem-converted >/dev/null
cat /run/hpmmap/offline.json

step "release --all puts the device back in system-ram mode"
run $H release --all
run $H status
echo "driver: $(readlink /sys/bus/dax/devices/$d/driver)"
sh /bin/record-sysfs /rec/pmem-restored >/dev/null

step "recorded trees"
cd /rec && tar czf /tmp/rec.tgz . && echo "LAB-TAR-BEGIN" && base64 /tmp/rec.tgz && echo "LAB-TAR-END"
echo "LAB-DONE"
poweroff -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initramfs.cpio.gz"

# boot NAME APPEND: one guest run; console in $out/console-NAME.log, trees under $out.
boot() {
    local append=$2 log=$out/console-$1.log
    log "booting $kver under QEMU/TCG ($append)"
    qemu_boot --quiet "$log" 600 -nodefaults -display none -serial stdio -no-reboot \
        -accel tcg -cpu max -m 8G -smp 1 -machine q35 \
        -kernel "$vmlinuz" -initrd "$work/initramfs.cpio.gz" \
        -append "console=ttyS0 $append panic=-1 quiet" || true
    grep -q LAB-DONE "$log" || { log "guest did not finish; see $log"; exit 1; }
    sed -n '/^LAB-TAR-BEGIN$/,/^LAB-TAR-END$/p' "$log" | sed '1d;$d' | base64 -d \
        | tar xzf - -C "$out"
    sed -i '/^LAB-TAR-BEGIN$/,/^LAB-TAR-END$/d' "$log"
}
boot devdax 'memmap=3G!4G'
boot cycle 'movablecore=5G lab=cycle'

# What the run must show (on the real 6.1 kernel of the guest).
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
log "PASS: devdax prepared, converted from system-ram and restored on the guest's 6.1 kernel"
c=$out/console-cycle.log
grep -q '^node 0: 2 of 2 GiB reserved' "$c" || fail "hugetlb reserve with movablecore= did not get 2 GiB"
grep -q '^hpmmap-offline holds nothing now$' "$c" || fail "release --all did not finish"
diff --no-dereference -r -x meminfo "$out/cycle-before/sys" "$out/cycle-after/sys" >/dev/null \
    || fail "sysfs after release --all differs from before reserve (meminfo aside)"
log "PASS: 1 GiB pages reserved and released with high memory in ZONE_MOVABLE"
log "done: $out"
