# shellcheck shell=dash
# The device-dax lab's steps inside the nested lab's L1 (`hpmmap-lab run`, started by
# devdax-lab.sh), with hpmmap-offline on PATH and record-sysfs.sh at /root:
#   sh devdax.sh devdax   L1 booted with --pmem 3G (memmap=3G!4G) and kmem, nd_btt loaded:
#                         namespace0.0 -> devdax (1 GiB align) through the nvdimm sysfs, then
#                         hpmmap-offline status / reserve --devdax, the device to system-ram
#                         (kmem), reserve --devdax converting it back, release --all
#   sh devdax.sh cycle    L1 booted with movablecore=5G: reserve 2 GiB of 1 GiB pages
#                         cycling blocks into a kernel zone, release --all
# The sysfs trees recorded at each step come back as a base64 tar between LAB-TAR-BEGIN
# and LAB-TAR-END; the last line is LAB-DONE.
mode=${1:?usage: devdax.sh devdax|cycle}
mkdir -p /rec
step() { echo; echo "LAB-STEP $*"; }
run() { echo "\$ $*"; "$@"; echo "exit $?"; }
H="hpmmap-offline --state-file /run/hpmmap/offline.json"
record() { sh /root/record-sysfs.sh "/rec/$1" >/dev/null; }
trees() {
    step "recorded trees"
    cd /rec && tar czf /tmp/rec.tgz . && echo "LAB-TAR-BEGIN" && base64 /tmp/rec.tgz && echo "LAB-TAR-END"
    echo "LAB-DONE"
}

if [ "$mode" = cycle ]; then
    step "hugetlb pool through block cycling (movablecore=: high memory is ZONE_MOVABLE)"
    run $H status
    record cycle-before
    run $H reserve --size 2G --keep 1G
    run $H status
    cat /run/hpmmap/offline.json
    run $H release --all
    run $H status
    record cycle-after
    trees
    exit 0
fi

step "nvdimm: namespace0.0 -> devdax with 1 GiB align"
nd=/sys/bus/nd/devices
ls $nd
seed=$(cat $nd/region0/dax_seed)
echo "dax seed: $seed"
echo namespace0.0 > /sys/bus/nd/drivers/nd_pmem/unbind
echo 1073741824 > "$nd/$seed/align"
echo ram > "$nd/$seed/mode"
cat /proc/sys/kernel/random/uuid > "$nd/$seed/uuid"
echo namespace0.0 > "$nd/$seed/namespace"
echo "$seed" > /sys/bus/nd/drivers/dax_pmem/bind || echo "LAB: bind $seed to dax_pmem failed"
ls -l /sys/bus/dax/devices/
for d in /sys/bus/dax/devices/*; do d=${d##*/}; break; done
for f in size align target_node numa_node resource; do echo "$d/$f: $(cat "/sys/bus/dax/devices/$d/$f")"; done
echo "driver: $(readlink "/sys/bus/dax/devices/$d/driver")"
ls "/sys/bus/dax/devices/$d/../dax_region/" 2>&1
record pmem-devdax

step "hpmmap-offline on the devdax device as the nvdimm made it"
run $H status
run $H reserve --devdax --size 1G
run $H reserve --devdax --size 4G

step "device to system-ram mode (kmem), as daxctl reconfigure-device -m system-ram"
echo "$d" > /sys/bus/dax/drivers/device_dax/unbind
echo "$d" > /sys/bus/dax/drivers/kmem/new_id
echo "driver: $(readlink "/sys/bus/dax/devices/$d/driver")"
cat /sys/devices/system/memory/auto_online_blocks
for b in /sys/devices/system/memory/memory*; do
    s=$(cat "$b/state"); [ "$s" = offline ] && echo "$(basename "$b") offline $(cat "$b/valid_zones")"
done
for b in /sys/devices/system/memory/memory*; do
    if [ "$(cat "$b/state")" = offline ]; then echo online_movable > "$b/state"; fi
done
grep -E "MemTotal" /proc/meminfo
record pmem-kmem

step "hpmmap-offline reserve --devdax converts the kmem device back"
run $H status
run $H reserve --devdax --size 2G
run $H status
record pmem-converted
cat /run/hpmmap/offline.json

step "release --all puts the device back in system-ram mode"
run $H release --all
run $H status
echo "driver: $(readlink "/sys/bus/dax/devices/$d/driver")"
record pmem-restored
trees
