# shellcheck shell=dash
# The host setup under which a reservation cannot fail for fragmentation (issue 13.4), run in
# L1 by tests/tests/tenants_lab.rs (ignored test: about 15 minutes):
#   memory set aside at boot (here memmap=SIZE!4G, a pmem range; on a server a pmem or EFI
#   soft-reserved range), made a device-dax device with 1 GiB alignment, and while no job
#   runs given to the host as system RAM in ZONE_MOVABLE (kmem, onlined online_movable), so
#   the host uses it for movable memory (page cache, anonymous memory) and nothing pins it.
#   `hpmmap-offline reserve --devdax --job ID --size S` takes it back as the job's partition:
#   its blocks go offline (the kernel migrates the movable pages out) and the device is bound
#   to device_dax; `release --job ID` gives it back to the host as system RAM.
# Cycles: reserve / hpmmap-vmm on it / release, N times, with a tmpfs hog filling the
# host's memory (so the partition holds host pages to migrate each time); then the same
# cycles on plain hugetlb pages (no boot-time pages) beside it.
#   args: N GIB       (KMEM=/root/kmem.ko: the kmem module of L1's kernel)
# shellcheck source=tests/lab/retry.sh
. /root/retry.sh
cycles=${1:-20}; gib=${2:-2}   # not `n`: vmm_retrying (retry.sh) uses that name
hp=/sys/devices/system/node/node0/hugepages/hugepages-1048576kB
pool() { echo "$(cat $hp/nr_hugepages),$(cat $hp/free_hugepages)"; }
blocks_online() { grep -l online /sys/devices/system/memory/memory*/state 2>/dev/null | wc -l; }

nd=/sys/bus/nd/devices
seed=$(cat $nd/region0/dax_seed) &&
echo namespace0.0 > /sys/bus/nd/drivers/nd_pmem/unbind &&
echo 1073741824 > $nd/$seed/align &&
echo ram > $nd/$seed/mode &&
cat /proc/sys/kernel/random/uuid > $nd/$seed/uuid &&
echo namespace0.0 > $nd/$seed/namespace &&
echo $seed > /sys/bus/nd/drivers/dax_pmem/bind
echo "dax_setup_rc=$?"
d=$(ls /sys/bus/dax/devices | head -1)
insmod "${KMEM:-/root/kmem.ko}"
echo "kmem_insmod_rc=$?"
# daxctl reconfigure-device --mode=system-ram --no-online, then online_movable
echo $d > /sys/bus/dax/drivers/device_dax/unbind
echo $d > /sys/bus/dax/drivers/kmem/new_id
for b in /sys/devices/system/memory/memory*; do
    [ "$(cat $b/state)" = offline ] && echo online_movable > $b/state
done
echo "dax_driver_idle=$(basename "$(readlink /sys/bus/dax/devices/$d/driver)")"
echo "movable_kb=$(awk '/^MemTotal/ {print $2}' /proc/meminfo)"
grep -E '^(MemTotal|MemFree)' /proc/meminfo | tr -s ' ' | sed 's/^/meminfo: /'
blocks_idle=$(blocks_online)
echo "blocks_online_idle=$blocks_idle"

# The hog: tmpfs pages fill most of the host's free memory, the movable range included.
mkdir -p /hog && mount -t tmpfs -o size=90% tmpfs /hog
free_kb=$(awk '/^MemFree/ {print $2}' /proc/meminfo)
# The host keeps room for the partition's pages to move to and 2 GiB for itself (GIB + 2 GiB
# free): a host cannot hand out memory it needs. With only GIB + 1 GiB left, the first run
# (2026-12-06) saw the OOM killer end the hugetlb reserve (tmpfs cannot be reclaimed without
# swap), which is not the fragmentation measured here. Everything else is the hog's.
hog_mb=$(( (free_kb / 1024) - (gib + 2) * 1024 ))
dd if=/dev/zero of=/hog/fill bs=1M count=$hog_mb 2>/dev/null
echo "hog_mb=$hog_mb"
grep -E '^(MemFree|Shmem):' /proc/meminfo | tr -s ' ' | sed 's/^/meminfo hog: /'

ok=0
i=1
while [ $i -le $cycles ]; do
    job=dax$i
    t0=$(date +%s)
    hpmmap-offline -q reserve --devdax --job $job --size ${gib}G > /tmp/r.log 2>&1; rr=$?
    vr=skip
    if [ $rr = 0 ]; then
        vmm_retrying --job $job --mem ${gib}G --vcpus 1 --mem-backend devdax:/dev/$d \
            --image /img > /tmp/v.log 2>&1; vr=$?
    fi
    hpmmap-offline -q release --job $job > /tmp/l.log 2>&1; lr=$?
    drv=$(basename "$(readlink /sys/bus/dax/devices/$d/driver)")
    bo=$(blocks_online)
    [ $rr = 0 ] && [ "$vr" = 0 ] && [ $lr = 0 ] && [ "$drv" = kmem ] && [ "$bo" = "$blocks_idle" ] \
        && ok=$((ok+1))
    echo "dax_cycle_$i=reserve:$rr vmm:$vr release:$lr driver:$drv blocks:$bo secs:$(( $(date +%s) - t0 ))"
    [ $rr = 0 ] || sed 's/^/  reserve: /' /tmp/r.log
    [ "$vr" = 0 ] || [ "$vr" = skip ] || tail -5 /tmp/v.log | sed 's/^/  vmm: /'
    [ $lr = 0 ] || sed 's/^/  release: /' /tmp/l.log
    i=$((i+1))
done
echo "dax_cycles_ok=$ok/$cycles"

ok=0
i=1
while [ $i -le $cycles ]; do
    job=huge$i
    t0=$(date +%s)
    hpmmap-offline -q reserve --job $job --size ${gib}G > /tmp/r.log 2>&1; rr=$?
    vr=skip
    if [ $rr = 0 ]; then
        vmm_retrying --job $job --mem ${gib}G --vcpus 1 --image /img > /tmp/v.log 2>&1; vr=$?
    fi
    hpmmap-offline -q release --job $job > /tmp/l.log 2>&1; lr=$?
    [ $rr = 0 ] && [ "$vr" = 0 ] && [ $lr = 0 ] && ok=$((ok+1))
    echo "huge_cycle_$i=reserve:$rr vmm:$vr release:$lr pool:$(pool) secs:$(( $(date +%s) - t0 ))"
    [ $rr = 0 ] || grep -v '^$' /tmp/r.log | head -4 | sed 's/^/  reserve: /'
    [ "$vr" = 0 ] || [ "$vr" = skip ] || tail -5 /tmp/v.log | sed 's/^/  vmm: /'
    i=$((i+1))
done
echo "huge_cycles_ok=$ok/$cycles"
echo "state_left=$([ -e /run/hpmmap/offline.json ] && echo yes || echo no)"
