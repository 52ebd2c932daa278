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

# The measured job, the VMM in the background so status can be read while it runs.
hpmmap-vmm --mem "$mem" --vcpus 2 --image /measured --report /tmp/measured.json >/tmp/measured.log 2>&1 &
pid=$!
echo "vmm_pid=$pid"
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
echo "status_running=$held"
wait "$pid"
echo "measured_status=$?"
sed 's/^/measured: /' /tmp/measured.log
echo "measured_report=$(tr -d '\n' </tmp/measured.json 2>/dev/null)"

# A failing job: its status must come back as the VMM's.
hpmmap-vmm --mem 2G --vcpus 2 --image /fail --report /tmp/fail.json >/tmp/fail.log 2>&1
echo "fail_status=$?"
sed 's/^/fail: /' /tmp/fail.log

if [ "$suite" = 1 ]; then
    hpmmap-vmm --mem "$mem" --vcpus 2 --image /suite --report /tmp/suite.json >/tmp/suite.log 2>&1
    echo "suite_status=$?"
    sed 's/^/suite: /' /tmp/suite.log
fi

out=$(hpmmap-offline release --all 2>&1); rc=$?
echo "$out" | sed 's/^/release: /'
echo "release_rc=$rc"
echo "status_end=$(json)"
echo "state_file_left=$([ -e /run/hpmmap/offline.json ] && echo yes || echo no)"
