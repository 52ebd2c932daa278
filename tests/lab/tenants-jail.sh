# shellcheck shell=dash
# Sourced by tenants.sh (issue 13, jail and recover): a jailed VMM of a job (`--job ID
# --jail`: its jail /run/hpmmap/jail/ID, its cgroup /sys/fs/cgroup/hpmmap/ID) with a VF is
# killed with SIGKILL while its job runs, once the VMM itself and once its keeper (which
# takes the VMM with it); then `hpmmap-offline recover` (with --job as an epilog after the
# VMM's kill, whose keeper cleaned up; without after the keeper's): nothing of the job left.
# Uses tenants.sh's pf, pin, pool, claims, vf_drivers, vf_overrides, nap.
# shellcheck disable=SC2154 # pf and pin are set by tenants.sh, which sources this file
echo "jail_case_start=$(cut -d' ' -f1 /proc/uptime)"
cg=/sys/fs/cgroup
[ -e $cg/cgroup.controllers ] || mount -t cgroup2 none $cg
echo "cgroup2_mounted=$([ -e $cg/cgroup.controllers ] && echo yes || echo no)"

# kill9_jailed NAME WHO: job NAME's jailed VMM (2 GiB, VF), WHO (vmm|keeper) killed with
# SIGKILL once the job runs.
kill9_jailed() {
    name=$1; who=$2
    hpmmap-offline -q reserve --job "$name" --size 2G > /dev/null
    echo "${name}_reserve_rc=$?"
    taskset -c "$pin" hpmmap-vmm --job "$name" --jail --uid 65534 --gid 65534 --mem 2G \
        --vcpus 1 --vf "$pf" --image /img > "/tmp/$name.log" 2>&1 &
    keeper=$!
    i=0; vmm=
    while [ $i -lt 4000 ] && kill -0 $keeper 2>/dev/null; do
        [ -z "$vmm" ] && vmm=$(cut -d' ' -f1 "/proc/$keeper/task/$keeper/children" 2>/dev/null)
        grep -q 'hpmmap-init' "/tmp/$name.log" && break
        nap; i=$((i+1))
    done
    echo "${name}_running=$(grep -c 'hpmmap-init' "/tmp/$name.log")"
    echo "${name}_nspid=$(awk '/^NSpid:/ {print $2, $3}' "/proc/$vmm/status" 2>/dev/null)"
    echo "${name}_vmm=$vmm"
    echo "${name}_pidns_own=$([ "$(readlink "/proc/$vmm/ns/pid")" != "$(readlink "/proc/$keeper/ns/pid")" ] && echo yes || echo no)"
    echo "${name}_uid=$(awk '/^Uid:/ {print $2}' "/proc/$vmm/status" 2>/dev/null)"
    echo "${name}_claim_pid=$(sed -n 's/^pid=//p' /run/hpmmap/vf/*.claim 2>/dev/null | tr '\n' ' ')"
    echo "${name}_in_cgroup=$(grep -cx "$vmm" "$cg/hpmmap/$name/cgroup.procs" 2>/dev/null)"
    echo "${name}_jail_while_running=$([ -d "/run/hpmmap/jail/$name" ] && echo yes || echo no)"
    if [ "$who" = keeper ]; then kill -9 "$keeper"; else kill -9 "$vmm"; fi
    wait $keeper 2>/dev/null
    echo "${name}_keeper_rc=$?"
    i=0
    while [ $i -lt 200 ] && [ -e "/proc/$vmm" ] && ! grep -q '^State:.*Z' "/proc/$vmm/status"; do
        nap; i=$((i+1))
    done
    echo "${name}_vmm_gone=$([ -e "/proc/$vmm" ] && ! grep -q '^State:.*Z' "/proc/$vmm/status" && echo no || echo yes)"
    echo "${name}_jail_after_kill=$([ -d "/run/hpmmap/jail/$name" ] && echo yes || echo no)"
    echo "${name}_cgroup_after_kill=$([ -d "$cg/hpmmap/$name" ] && echo yes || echo no)"
    echo "${name}_claims_after_kill=$(claims)"
    if [ "$who" = keeper ]; then
        hpmmap-offline recover > /tmp/rec.log 2>&1
    else
        hpmmap-offline recover --job "$name" > /tmp/rec.log 2>&1
    fi
    echo "${name}_recover_rc=$?"
    sed "s/^/$name recover: /" /tmp/rec.log
    # awk ends the last line too: the VMM was killed in the middle of one
    tail -5 "/tmp/$name.log" | awk -v p="$name: " '{print p $0}'
    echo "${name}_vf_drivers_after_recover=$(vf_drivers)"
    echo "${name}_overrides_after_recover=$(vf_overrides)"
    echo "${name}_claims_after_recover=$(claims)"
    echo "${name}_jail_after_recover=$([ -e "/run/hpmmap/jail/$name" ] && echo yes || echo no)"
    echo "${name}_cgroup_after_recover=$([ -e "$cg/hpmmap/$name" ] && echo yes || echo no)"
    echo "${name}_pool_after_recover=$(pool)"
    echo "${name}_state_left=$([ -e /run/hpmmap/offline.json ] && echo yes || echo no)"
}
kill9_jailed jvmm vmm
kill9_jailed jkeeper keeper
echo "jail_case_end=$(cut -d' ' -f1 /proc/uptime)"
