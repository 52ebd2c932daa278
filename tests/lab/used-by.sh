# shellcheck shell=dash
# The used-by command (issue 19), run in L1 by tests/tests/used_by_lab.rs through the lab:
# the README's steps on a host set up as the README says, once per phase:
#   hpmmap-offline reserve --size NG
#   hpmmap-vmm --mem NG --vcpus V --vf PF --image /img
#   hpmmap-offline release --all
# on the 1 GiB pages L1 got at boot (hugepages=N on its command line) and, where a phase
# asks for more than that, pages reserved at run time. One `key=value` line per fact,
# prefixed with the phase's name; the VMM's output prefixed `NAME: `.
# A phase NAME:GIB:VCPUS:jail runs the VMM jailed (--jail DIR --uid 65534 --gid 65534): the
# keeper gives the VF back and removes DIR.
#   args: PHASE... each NAME:GIB:VCPUS[:jail]      VMM_LIMIT: seconds one L2 boot may take
# shellcheck source=tests/lab/retry.sh
. /root/retry.sh
hp=/sys/devices/system/node/node0/hugepages/hugepages-1048576kB
pool() { echo "$(cat $hp/nr_hugepages),$(cat $hp/free_hugepages)"; }
json() { hpmmap-offline status --json 2>&1 | tr -d '\n'; }

# The lab's igb PF: SR-IOV with two VFs, as an admin would enable them.
# shellcheck source=tests/lab/igb.sh
. /root/igb.sh
igb_vfs 2
echo "pf=$pf"
ids=
for v in $vfs; do ids="$ids $(cat "$v/vendor"):$(cat "$v/device")"; done
echo "vf_ids=${ids# }"
echo "vf_drivers_start=$(vf_drivers)"
echo "pool_boot=$(pool)"
echo "status_boot=$(json)"

for phase in "$@"; do
    name=${phase%%:*}; rest=${phase#*:}; gib=${rest%%:*}; rest=${rest#*:}
    vcpus=${rest%%:*}; jail=
    [ "${rest#*:}" = jail ] && jail="--jail /run/hpmmap-jail-$name --uid 65534 --gid 65534"
    echo "${name}_pool_before=$(pool)"
    out=$(hpmmap-offline reserve --size "${gib}G" 2>&1); rc=$?
    echo "$out" | sed "s/^/$name reserve: /"
    echo "${name}_reserve_rc=$rc"
    echo "${name}_pool_reserved=$(pool)"
    echo "${name}_status_reserved=$(json)"
    # shellcheck disable=SC2086 # $jail is a list of words
    vmm_retrying --mem "${gib}G" --vcpus "$vcpus" --vf "$pf" --image /img $jail \
        --report "/tmp/$name.json" > "/tmp/$name.log" 2>&1
    echo "${name}_vmm_rc=$?"
    sed "s/^/$name: /" "/tmp/$name.log"
    echo "${name}_report=$(tr -d '\n' < "/tmp/$name.json" 2>/dev/null)"
    echo "${name}_vf_drivers_after=$(vf_drivers)"
    echo "${name}_jail_left=$([ -e "/run/hpmmap-jail-$name" ] && echo yes || echo no)"
    out=$(hpmmap-offline release --all 2>&1); rc=$?
    echo "$out" | sed "s/^/$name release: /"
    echo "${name}_release_rc=$rc"
    echo "${name}_pool_after=$(pool)"
    echo "${name}_state_left=$([ -e /run/hpmmap/offline.json ] && echo yes || echo no)"
done
echo "status_end=$(json)"
