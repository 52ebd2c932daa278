# shellcheck shell=dash
# Two tenants on one node at once (issue 13.7), run in L1 by tests/tests/two_tenants_lab.rs:
# two jailed VMMs under different uids, each with its own VF and its own 1 GiB pages, run at
# the same time; each job writes its pattern through its hpmmap pool; after both exit, a
# third job on every page they had scans its pool for either pattern. One `key=value` line
# per fact; the VMMs' output prefixed with the job's name.
#   args: none. L1: 4 boot-time 1 GiB pages, an igb PF.
hp=/sys/devices/system/node/node0/hugepages/hugepages-1048576kB
pool() { echo "$(cat $hp/nr_hugepages),$(cat $hp/free_hugepages)"; }
A=0xa1a1a1a1a1a1a1a1
B=0xb2b2b2b2b2b2b2b2
# The lab's igb PF: SR-IOV with two VFs, as an admin would enable them.
# shellcheck source=tests/lab/igb.sh
. /root/igb.sh
igb_vfs 2
echo "pf=$pf"
echo "vf_drivers_start=$(vf_drivers)"
echo "pool_start=$(pool)"

# shellcheck source=tests/lab/two-tenants-vm.sh
. /root/two-tenants-vm.sh
vm a 2G "fill:$A" --vf "$pf" --jail /run/jail-a --uid 65534 --gid 65534 &
pa=$!
vm b 2G "fill:$B" --vf "$pf" --jail /run/jail-b --uid 65533 --gid 65533 &
pb=$!
# Both run at once: each VMM maps its RAM before the other exits.
wait $pa; echo "a_rc=$?"
wait $pb; echo "b_rc=$?"
for n in a b; do
    sed "s/^/$n: /" "/tmp/$n.log"
    echo "${n}_report=$(tr -d '\n' < "/tmp/$n.json" 2>/dev/null)"
    echo "${n}_jail_left=$([ -e "/run/jail-$n" ] && echo yes || echo no)"
done
echo "vf_drivers_after=$(vf_drivers)"
echo "pool_after_tenants=$(pool)"
# The third job takes all 4 pages: its pool (3 of them) scanned for either pattern.
vm s 4G "scan:$A,$B"
echo "s_rc=$?"
sed "s/^/s: /" /tmp/s.log
echo "s_report=$(tr -d '\n' < /tmp/s.json 2>/dev/null)"
echo "pool_end=$(pool)"
