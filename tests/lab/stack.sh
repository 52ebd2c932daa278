# shellcheck shell=dash
# The whole stack inside L1 (run by tests/tests/stack_lab.rs through hpmmap-lab): reserve
# 1 GiB pages with hpmmap-offline, boot job images as L2 under hpmmap-vmm on them, watch
# status show the VM holding them, give them back. One `key=value` line per fact (JSON on
# one line), the VMM's console prefixed with the image name.
#   $1: guest RAM for the measured job (e.g. 3G)   $2: 1 when /suite should run too
mem=${1:-3G}
suite=${2:-0}
json() { hpmmap-offline status --json 2>&1 | tr -d '\n'; }
echo "status_start=$(json)"
out=$(hpmmap-offline reserve --size "$mem" 2>&1); rc=$?
echo "$out" | sed 's/^/reserve: /'
echo "reserve_rc=$rc"
echo "status_reserved=$(json)"

# Every boot goes through the lab's one retry policy (tests/lab/retry.sh: pinned to one L1
# CPU, stopped after 150 s, booted again after a nested-lab failure before the job started).
# shellcheck source=tests/lab/retry.sh
. /root/retry.sh

# While the measured VM runs: once the guest prints (its kernel's first warning or the job
# init's first line), guest RAM is prefaulted, and status must show the VM's pid holding
# every page (smaps and numa_maps read mid-prefault could disagree). With ACPI the quiet
# kernel may print nothing at all, so the init's line counts too.
held_status() { # PID LOG
    held=
    while kill -0 "$1" 2>/dev/null; do
        if grep -q -e '^\[' -e 'hpmmap-init:' "$2"; then
            held=$(json)
            break
        fi
        sleep 0.2
    done
}

# boot NAME IMAGE [HOOK]: one job with the VM's console in /tmp/NAME.log; status in $booted.
boot() {
    VMM_LOG=/tmp/$1.log VMM_QUIET=1 VMM_WHILE=${3:-}
    vmm_retrying --mem "$mem" --vcpus 2 --image "$2" --report "/tmp/$1.json"
    booted=$?
    VMM_WHILE=
}

# The measured job.
held=
boot measured /measured held_status
echo "vmm_pid=$vmm_pid"
echo "status_running=$held"
echo "measured_status=$booted"
sed 's/^/measured: /' /tmp/measured.log
echo "measured_report=$(tr -d '\n' </tmp/measured.json 2>/dev/null)"

# A failing job: its status must come back as the VMM's.
boot fail /fail
echo "fail_status=$booted"
sed 's/^/fail: /' /tmp/fail.log

if [ "$suite" = 1 ]; then
    boot suite /suite
    echo "suite_status=$booted"
    sed 's/^/suite: /' /tmp/suite.log
fi

out=$(hpmmap-offline release --all 2>&1); rc=$?
echo "$out" | sed 's/^/release: /'
echo "release_rc=$rc"
echo "status_end=$(json)"
echo "state_file_left=$([ -e /run/hpmmap/offline.json ] && echo yes || echo no)"
