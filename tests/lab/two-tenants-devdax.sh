# shellcheck shell=dash
# Two tenants on device-dax at once (issue 13.7), run in L1 by tests/tests/two_tenants_lab.rs
# in an L1 of its own: L1's two legacy pmem ranges become dax0.0 and dax1.0 (1 GiB
# alignment, as `ndctl create-namespace -m devdax --align 1G` makes them); two jailed VMMs
# under different uids, one on each device, run at the same time and write their patterns
# through their pools; after both exit, a third job on each device scans its pool for either
# pattern. One `key=value` line per fact; the VMMs' output prefixed with the job's name.
#   args: none. L1: `hpmmap-lab --pmem 6G --pmem-ranges 2` (namespace0.0, namespace1.0; 3 GiB
#   ranges give 2 GiB devices with 1 GiB alignment).
A=0xa1a1a1a1a1a1a1a1
B=0xb2b2b2b2b2b2b2b2
nd=/sys/bus/nd/devices
echo "dd_regions=$(cd $nd 2>/dev/null && echo region*)"
# to_devdax R: region R's namespace R.0 from pmem (nd_pmem) to device-dax (dax_pmem).
to_devdax() {
    seed=$(cat "$nd/region$1/dax_seed") &&
        echo "namespace$1.0" > /sys/bus/nd/drivers/nd_pmem/unbind &&
        echo 1073741824 > "$nd/$seed/align" &&
        echo ram > "$nd/$seed/mode" &&
        cat /proc/sys/kernel/random/uuid > "$nd/$seed/uuid" &&
        echo "namespace$1.0" > "$nd/$seed/namespace" &&
        echo "$seed" > /sys/bus/nd/drivers/dax_pmem/bind
}
setup=ok
for r in 0 1; do to_devdax $r || setup=failed; done
echo "dd_setup=$setup"
for d in dax0.0 dax1.0; do
    s=/sys/bus/dax/devices/$d
    echo "dd_${d%.0}=$(cat $s/size 2>/dev/null),$(cat $s/align 2>/dev/null)"
done

# shellcheck source=tests/lab/two-tenants-vm.sh
. /root/two-tenants-vm.sh
vm da 2G "fill:$A" --mem-backend devdax:/dev/dax0.0 --jail /run/jail-da --uid 65534 --gid 65534 &
pa=$!
vm db 2G "fill:$B" --mem-backend devdax:/dev/dax1.0 --jail /run/jail-db --uid 65533 --gid 65533 &
pb=$!
wait $pa; echo "da_rc=$?"
wait $pb; echo "db_rc=$?"
for n in da db; do
    sed "s/^/$n: /" "/tmp/$n.log"
    echo "${n}_report=$(tr -d '\n' < "/tmp/$n.json" 2>/dev/null)"
    echo "${n}_jail_left=$([ -e "/run/jail-$n" ] && echo yes || echo no)"
done
# The next job on each device: its pool, where the tenant before it wrote, scanned.
for d in 0 1; do
    vm "s$d" 2G "scan:$A,$B" --mem-backend "devdax:/dev/dax$d.0"
    echo "s${d}_rc=$?"
    sed "s/^/s$d: /" "/tmp/s$d.log"
    echo "s${d}_report=$(tr -d '\n' < "/tmp/s$d.json" 2>/dev/null)"
done
