# shellcheck shell=dash
# Tenants on one node (issue 13.3-13.5), run in L1 by tests/tests/tenants_lab.rs through the
# lab, on L1's boot-time 1 GiB pages, its igb PF with two VFs and (with --pmem) a device-dax
# device. One `key=value` line per fact; the VMMs' output prefixed with the case's name.
#   1. two jobs reserve 1 GiB each (--job); a VMM of a third job without a reservation exits
#      2, and so does a VMM without --job (the free pages are the jobs'); two VMMs of the two jobs started at the same moment on the same PF get two VFs;
#      each job's release gives back its own pages
#   2. device-dax: a VMM of job d runs on /dev/dax0.0; a second VMM on it exits 2 naming
#      the first one's pid
#   3. kill -9 of hpmmap-vmm right after its VF claim, during prefault, and while the job
#      runs; then `hpmmap-offline recover`: VF back on igbvf, reservation released
#   3b. the same for a jailed VMM of a job (`--job ID --jail`, tenants-jail.sh), killed
#      itself and through its keeper: jail directory, cgroup, VF and pages all recovered
#   4. kill -9 of hpmmap-offline in the middle of a reserve; then `recover`: pool as at boot
# args: none. VMM_LIMIT: seconds one L2 boot may take.
# shellcheck source=tests/lab/retry.sh
. /root/retry.sh
hp=/sys/devices/system/node/node0/hugepages/hugepages-1048576kB
pool() { echo "$(cat $hp/nr_hugepages),$(cat $hp/free_hugepages)"; }
pin=$(($(nproc) - 1))
limit=${VMM_LIMIT:-240}

pf=
for n in /sys/class/net/*; do
    d=$(readlink "$n/device/driver" 2>/dev/null)
    [ "${d##*/}" = igb ] && { pf=${n##*/}; break; }
done
echo "pf=$pf"
echo 2 > "/sys/class/net/$pf/device/sriov_numvfs"
# shellcheck disable=SC2320 # the echo's own status is the sysfs write's
rc=$?
echo "sriov_rc=$rc"
vfs=$(ls -d /sys/class/net/"$pf"/device/virtfn* 2>/dev/null)
vf_drivers() {
    for v in $vfs; do d=$(readlink "$v/driver"); printf '%s ' "${d##*/}"; done
}
vf_overrides() {
    for v in $vfs; do printf '%s ' "$(cat "$v/driver_override")"; done
}
claims() { ls /run/hpmmap/vf 2>/dev/null | tr '\n' ' '; }
jobs_held() { hpmmap-offline status | grep '^job ' | tr '\n' ';'; }
nap() { sleep 0.05 2>/dev/null || usleep 50000; }
vf_of() { sed -n 's/.*--vf [^:]*: VF \([0-9a-f:.]*\) on the guest.*/\1/p' "$1" | head -1; }
echo "vf_drivers_start=$(vf_drivers)"
echo "pool_boot=$(pool)"

echo "== case 1: two jobs"
for j in a b; do
    hpmmap-offline -q reserve --job $j --size 1G > /dev/null 2>/tmp/r.err
    echo "${j}_reserve_rc=$?"; cat /tmp/r.err
done
hpmmap-offline status | sed 's/^/status1: /'
timeout 60 hpmmap-vmm --job c --mem 1G --image /img > /tmp/c.log 2>&1
echo "c_vmm_rc=$?"
sed 's/^/c: /' /tmp/c.log
# A VMM without --job: both free pages are the jobs', none is left for it.
timeout 60 hpmmap-vmm --mem 1G --image /img > /tmp/nojob.log 2>&1
echo "nojob_vmm_rc=$?"
sed 's/^/nojob: /' /tmp/nojob.log
echo "nojob_pool=$(pool)"
for j in a b; do
    (timeout "$limit" taskset -c $pin hpmmap-vmm --job $j --mem 1G --vcpus 1 --vf "$pf" \
        --image /img > /tmp/$j.log 2>&1; echo $? > /tmp/$j.rc) &
done
wait
for j in a b; do
    echo "${j}_vmm_rc=$(cat /tmp/$j.rc)"
    echo "${j}_vf=$(vf_of /tmp/$j.log)"
    sed "s/^/$j: /" /tmp/$j.log
done
echo "two_vf_drivers_after=$(vf_drivers)"
echo "two_claims_after=$(claims)"
hpmmap-offline release --job a | sed 's/^/release a: /'
echo "a_jobs_after_release=$(jobs_held)"
hpmmap-offline release --job b | sed 's/^/release b: /'
echo "two_pool_after=$(pool)"
echo "two_state_left=$([ -e /run/hpmmap/offline.json ] && echo yes || echo no)"

if [ -e /sys/bus/nd/devices/region0 ]; then
    echo "== case 2: device-dax, one VMM per device"
    nd=/sys/bus/nd/devices
    seed=$(cat $nd/region0/dax_seed) &&
    echo namespace0.0 > /sys/bus/nd/drivers/nd_pmem/unbind &&
    echo 1073741824 > $nd/$seed/align &&
    echo ram > $nd/$seed/mode &&
    cat /proc/sys/kernel/random/uuid > $nd/$seed/uuid &&
    echo namespace0.0 > $nd/$seed/namespace &&
    echo $seed > /sys/bus/nd/drivers/dax_pmem/bind
    echo "dax_setup_rc=$?"
    hpmmap-offline -q reserve --devdax --job d --size 1G | sed 's/^/dax reserve: /'
    (timeout "$limit" taskset -c $pin hpmmap-vmm --job d --mem 1G --vcpus 1 \
        --mem-backend devdax:/dev/dax0.0 --image /img > /tmp/d1.log 2>&1; echo $? > /tmp/d1.rc) &
    i=0
    d1=
    while [ $i -lt 1200 ]; do
        d1=$(awk '$2 == "FLOCK" {print $5; exit}' /proc/locks)
        [ -n "$d1" ] && [ "$(cat /proc/$d1/comm 2>/dev/null)" = hpmmap-vmm ] && break
        d1=; nap; i=$((i+1))
    done
    echo "d1_pid=$d1"
    # another VMM of the same job passes the reservation check and meets the lock
    timeout 60 hpmmap-vmm --job d --mem 1G --mem-backend devdax:/dev/dax0.0 --image /img \
        > /tmp/d2.log 2>&1
    echo "d2_vmm_rc=$?"
    sed 's/^/d2: /' /tmp/d2.log
    # a VMM of another job is refused the device held for job d
    timeout 60 hpmmap-vmm --job e --mem 1G --mem-backend devdax:/dev/dax0.0 --image /img \
        > /tmp/d3.log 2>&1
    echo "d3_vmm_rc=$?"
    sed 's/^/d3: /' /tmp/d3.log
    wait
    echo "d1_vmm_rc=$(cat /tmp/d1.rc)"
    sed 's/^/d1: /' /tmp/d1.log | tail -5
    hpmmap-offline release --job d | sed 's/^/dax release: /'
fi

# kill9 NAME MOMENT: job NAME's VMM (2 GiB, VF) killed at MOMENT (claim|prefault|running),
# then one `recover`.
kill9() {
    name=$1; moment=$2
    hpmmap-offline -q reserve --job "$name" --size 2G > /dev/null
    echo "${name}_reserve_rc=$?"
    taskset -c $pin hpmmap-vmm --job "$name" --mem 2G --vcpus 1 --vf "$pf" --image /img \
        > /tmp/$name.log 2>&1 &
    vmm=$!
    i=0; hit=no
    while [ $i -lt 3000 ] && kill -0 $vmm 2>/dev/null; do
        case $moment in
            claim) [ -n "$(claims)" ] && hit=yes ;;
            prefault)
                kb=$(awk '/^HugetlbPages:/ {print $2}' /proc/$vmm/status 2>/dev/null)
                [ -n "$kb" ] && [ "$kb" -gt 0 ] && [ "$kb" -lt 2097152 ] && hit="yes:${kb}kB" ;;
            running) grep -q 'hpmmap-init' /tmp/$name.log && hit=yes ;;
        esac
        [ "$hit" != no ] && break
        nap; i=$((i+1))
    done
    kill -9 $vmm; wait $vmm 2>/dev/null
    echo "${name}_killed_at=$moment:$hit"
    echo "${name}_claims_after_kill=$(claims)"
    echo "${name}_vf_drivers_after_kill=$(vf_drivers)"
    hpmmap-offline recover > /tmp/rec.log 2>&1
    echo "${name}_recover_rc=$?"
    sed "s/^/$name recover: /" /tmp/rec.log
    echo "${name}_vf_drivers_after_recover=$(vf_drivers)"
    echo "${name}_overrides_after_recover=$(vf_overrides)"
    echo "${name}_claims_after_recover=$(claims)"
    echo "${name}_pool_after_recover=$(pool)"
    echo "${name}_state_left=$([ -e /run/hpmmap/offline.json ] && echo yes || echo no)"
}
echo "== case 3: kill -9 of hpmmap-vmm"
kill9 kclaim claim
kill9 kprefault prefault
kill9 krunning running
echo "== case 3b: kill -9 of a jailed VMM of a job, and of its keeper"
# shellcheck source=tests/lab/tenants-jail.sh
. /root/tenants-jail.sh

echo "== case 4: kill -9 of hpmmap-offline in a reserve"
# 4 GiB on L1's 5.8 GiB cannot be had at run time: the reserve adopts the two boot-time pages, grows the
# pool, compacts, then cycles block groups; it is killed in the middle of the first cycle
# (blocks going offline, recorded in the state file).
hpmmap-offline reserve --job kr --size 4G --keep 0G > /tmp/kr.log 2>&1 &
r=$!
i=0
while [ $i -lt 1200 ] && kill -0 $r 2>/dev/null && ! grep -q 'cycling memory' /tmp/kr.log; do
    nap; i=$((i+1))
done
kill -9 $r; wait $r 2>/dev/null
echo "kr_killed_at=$(grep -c 'cycling memory' /tmp/kr.log)"
echo "kr_killed_pool=$(pool)"
echo "kr_blocks_offline=$(grep -l offline /sys/devices/system/memory/memory*/state 2>/dev/null | wc -l)"
echo "kr_state=$(tr -d ' \n' < /run/hpmmap/offline.json 2>/dev/null)"
sed 's/^/kr: /' /tmp/kr.log
hpmmap-offline status | sed 's/^/kr status: /'
hpmmap-offline recover > /tmp/rec.log 2>&1
echo "kr_recover_rc=$?"
sed 's/^/kr recover: /' /tmp/rec.log
echo "kr_pool_after_recover=$(pool)"
echo "kr_state_left=$([ -e /run/hpmmap/offline.json ] && echo yes || echo no)"
echo "kr_blocks_offline_after=$(grep -l offline /sys/devices/system/memory/memory*/state 2>/dev/null | wc -l)"
echo "vf_drivers_end=$(vf_drivers)"
