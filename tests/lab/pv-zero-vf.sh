# shellcheck shell=dash
# PV ZERO with a VF (issue 13.2), run in L1 by tests/tests/pv_zero_vf_lab.rs: a job image
# whose job allocates and frees pool memory through the hpmmap module in rounds (each block
# it gets is cleared by the host through PV ZERO) and pings L1's PF through its VF after
# every round, while this script reads the VMM's hugetlb mapping from /proc/PID/smaps: the
# memfd must stay whole (no hole punched) for the VM's life. L1 keeps RAM at 2560M for VF
# traffic (images/README.md), which leaves room for guest RAM on 2 MiB pages only.
# One `key=value` line per fact, the VMM's output prefixed with `vm: `.
#   args: none. VMM_LIMIT: seconds the L2 run may take.
limit=${VMM_LIMIT:-300}
pin=$(($(nproc) - 1))
# shellcheck source=tests/lab/igb.sh
. /root/igb.sh
igb_vfs 1
ip addr add 10.99.0.1/24 dev "$pf"
ip link set "$pf" up
i=0
while [ $i -lt 30 ] && [ "$(cat "/sys/class/net/$pf/carrier" 2>/dev/null)" != 1 ]; do
    sleep 1; i=$((i+1))
done
echo "pf_carrier=$(cat "/sys/class/net/$pf/carrier" 2>/dev/null)"
echo "vf_drivers_start=$(vf_drivers)"
h2=/sys/kernel/mm/hugepages/hugepages-2048kB
echo 1024 > $h2/nr_hugepages
echo "pages_2m=$(cat $h2/nr_hugepages)"

taskset -c "$pin" hpmmap-vmm --mem 2G --hugepages 2M --vcpus 1 --vf "$pf" --image /img \
    --report /tmp/vm.json > /tmp/vm.log 2>&1 &
vmm=$!
(sleep "$limit"; kill "$vmm" 2>/dev/null) &
dog=$!
# The guest RAM mapping's hugetlb kB (Shared_Hugetlb + Private_Hugetlb of the mappings with
# KernelPageSize 2048 kB), read until the VMM exits, from the job's first line on (RAM
# prefaulted by then).
samples=0; lo=; hi=0
while kill -0 $vmm 2>/dev/null; do
    if grep -q 'ZV-' /tmp/vm.log; then
        kb=$(awk '/^KernelPageSize:/ {ps = $2} /_Hugetlb:/ && ps == 2048 {s += $2} END {print s + 0}' \
            "/proc/$vmm/smaps" 2>/dev/null)
        if [ -n "$kb" ] && kill -0 $vmm 2>/dev/null && ! grep -q 'ZV-END' /tmp/vm.log; then
            samples=$((samples+1))
            [ -z "$lo" ] || [ "$kb" -lt "$lo" ] && lo=$kb
            [ "$kb" -gt "$hi" ] && hi=$kb
        fi
    fi
    sleep 0.2
done
wait $vmm
echo "vmm_rc=$?"
kill $dog 2>/dev/null
echo "smaps_samples=$samples"
echo "smaps_hugetlb_kb_min=$lo"
echo "smaps_hugetlb_kb_max=$hi"
sed 's/^/vm: /' /tmp/vm.log
echo "report=$(tr -d '\n' < /tmp/vm.json 2>/dev/null)"
echo "vf_drivers_end=$(vf_drivers)"
