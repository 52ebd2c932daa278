# The whole stack inside L1 (run by tests/tests/stack_lab.rs through hpmmap-lab): reserve
# 1 GiB pages with hpmmap-offline, boot job images as L2 under hpmmap-vmm on them, watch
# status show the VM holding them, give them back. One `key=value` line per fact (JSON on
# one line), the VMM's console prefixed with the image name.
#   $1: guest RAM for the measured job (e.g. 3G)   $2: 1 when /suite should run too
mem=${1:-3G}
suite=${2:-0}
gib=${mem%G}
json() { hpmmap-offline status --json 2>&1 | tr -d '\n'; }
echo "status_start=$(json)"
out=$(hpmmap-offline reserve --size "$mem" 2>&1); rc=$?
echo "$out" | sed 's/^/reserve: /'
echo "reserve_rc=$rc"
echo "status_reserved=$(json)"

# Under nested SVM emulated by TCG a 2-vCPU L2 triple-faults now and then (exit 72; see
# vmm/README.md, Known issue): such a boot is retried once and its log kept as "attempt1".
first_attempt() { # NAME STATUS
    echo "retry_$1=$2"
    sed "s/^/attempt1 $1: /" "/tmp/$1.log"
}

# The measured job, the VMM in the background so status can be read while it runs.
measure() {
    hpmmap-vmm --mem "$mem" --vcpus 2 --image /measured --report /tmp/measured.json >/tmp/measured.log 2>&1 &
    pid=$!
    held=
    # Once the guest kernel prints, guest RAM is prefaulted: status must show the VM's pid
    # holding every page (smaps and numa_maps read mid-prefault could disagree).
    while kill -0 "$pid" 2>/dev/null; do
        if grep -q '^\[' /tmp/measured.log; then
            held=$(json)
            break
        fi
        sleep 0.2
    done
    wait "$pid"
    measured=$?
}
measure
if [ "$measured" = 72 ]; then
    first_attempt measured 72
    measure
fi
echo "vmm_pid=$pid"
echo "status_running=$held"
echo "measured_status=$measured"
sed 's/^/measured: /' /tmp/measured.log
echo "measured_report=$(tr -d '\n' </tmp/measured.json 2>/dev/null)"

# boot NAME IMAGE: a foreground job, retried once after a triple fault; status in $booted.
boot() {
    hpmmap-vmm --mem "$mem" --vcpus 2 --image "$2" --report "/tmp/$1.json" >"/tmp/$1.log" 2>&1
    booted=$?
    if [ "$booted" = 72 ]; then
        first_attempt "$1" 72
        hpmmap-vmm --mem "$mem" --vcpus 2 --image "$2" --report "/tmp/$1.json" >"/tmp/$1.log" 2>&1
        booted=$?
    fi
}

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
