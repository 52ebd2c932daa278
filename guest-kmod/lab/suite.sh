# shellcheck shell=dash
# The semantics suite inside the lab's L1 (`hpmmap-lab run --hpmmap-ko`, started by run.sh):
# L1's kernel is Debian's 6.1 with a memmap= pool on its command line (hpmmap_pool=...),
# /lib/hpmmap holds hpmmap.ko and hpmmap_test.ko built for it, /lab/bin hpmmap-test and
# hpmmap-run, and loop is loaded (the O_DIRECT case). Prints TAP-style lines
# (ok / not ok / #); exits 0 only when every check passed.
#   sh suite.sh suite|numa|bench
mode=${1:?usage: suite.sh suite|numa|bench}
pool=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^hpmmap_pool=//p')
# The kernel log is judged from this mark on: L1's boot (KVM, VT-d, igb) is the lab's, not
# the module's business. Should the mark have left the ring buffer, the whole log is judged.
echo "hpmmap-suite: begin $mode" >/dev/kmsg
kmsg() { dmesg | sed -n '/hpmmap-suite: begin/,$p' | grep . || dmesg; }
status=0
fail() { echo "not ok - $*"; status=1; }
# Bad parameters: a clear refusal, never an oops (the kernel log is checked at the end).
bad=""
for params in "pv=0xfeb00000" "pool=garbage" "pool=1G@0x0" "pool=1G" ""; do
    # shellcheck disable=SC2086 # each entry is a list of module parameters
    if insmod /lib/hpmmap/hpmmap.ko $params 2>/dev/null; then
        bad="$bad [$params]"; rmmod hpmmap
    fi
done
if [ -z "$bad" ]; then echo "ok - insmod-bad-params"; else fail "insmod-bad-params: accepted$bad"; fi
kmsg | grep 'hpmmap: ' | sed 's/^\[[^]]*\] /# /' | head -8
if ! insmod /lib/hpmmap/hpmmap.ko pool="$pool"; then
    fail "insmod hpmmap.ko pool=$pool"
else
    echo "# free blocks: $(tr '\n' ' ' </sys/kernel/hpmmap/free_blocks)"
    insmod /lib/hpmmap/hpmmap_test.ko || fail "insmod hpmmap_test.ko"
    # a loop device over a 32 MiB file for the O_DIRECT case (the lab loads loop.ko)
    if [ -b /dev/loop0 ]; then
        dd if=/dev/zero bs=1M count=32 2>/dev/null | tr '\000' '\253' >/tmp/odirect.img
        losetup /dev/loop0 /tmp/odirect.img || echo "# losetup failed"
    else
        echo "# no /dev/loop0: the O_DIRECT case has no device"
    fi
    if [ "$mode" = numa ]; then
        echo "# $(tr '\n' ' ' </sys/kernel/hpmmap/nodes)"
        if [ "$(grep -c '^node' /sys/kernel/hpmmap/nodes)" = 2 ]; then echo "ok - numa-two-node-pool"; else fail "numa-two-node-pool"; fi
        hpmmap-run --node 1 -- hpmmap-test numa 1 || status=1
        hpmmap-run --node 0 -- hpmmap-test numa 0 || status=1
        hpmmap-run --node 1 -- hpmmap-test suite fork || status=1
    elif [ "$mode" = bench ]; then
        hpmmap-run -- hpmmap-test bench hpmmap || status=1
        hpmmap-test bench thp || status=1
        hpmmap-test bench 4k || status=1
    else
        hpmmap-test bad-ioctl || status=1
        hpmmap-run -- hpmmap-test suite || status=1
        # with --page-size 2M a 1 GiB mapping is 512 2 MiB blocks, no 1 GiB block
        if HPMMAP_TEST_PAGE=2M hpmmap-run --page-size 2M -- hpmmap-test suite large-pages >/tmp/2m.out 2>&1; then
            echo "ok - page-size-2M"
        else
            cat /tmp/2m.out; fail "page-size-2M"
        fi
        hpmmap-run --page-size 4K -- /bin/true 2>/tmp/bad.out; rc=$?
        if [ $rc = 2 ] && grep -q 'page-size' /tmp/bad.out; then echo "ok - launcher-bad-flag"; else fail "launcher-bad-flag rc=$rc $(cat /tmp/bad.out)"; fi
        hpmmap-run -- /nonexistent 2>/dev/null; rc=$?
        if [ $rc = 127 ]; then echo "ok - launcher-missing-program"; else fail "launcher-missing-program rc=$rc"; fi
    fi
    if [ "$mode" = suite ]; then
        # a registered process pins the module
        hpmmap-run -- sleep 2 & pid=$!
        sleep 1
        if rmmod hpmmap 2>/dev/null; then fail "rmmod-while-in-use: unloaded under a registered process"
        else echo "ok - rmmod-while-in-use"; fi
        wait $pid
    fi
    free=$(cat /sys/kernel/hpmmap/free_bytes); total=$(cat /sys/kernel/hpmmap/pool_bytes)
    if [ "$free" = "$total" ]; then echo "ok - pool-full-at-end"; else fail "pool-full-at-end: $free of $total free"; fi
    if [ "$(cat /sys/kernel/hpmmap/registered)" = 0 ]; then echo "ok - none-registered-at-end"; else fail "registered=$(cat /sys/kernel/hpmmap/registered)"; fi
    echo "# counters: mappings=$(cat /sys/kernel/hpmmap/mappings) fallbacks=$(cat /sys/kernel/hpmmap/fallbacks) faults=$(cat /sys/kernel/hpmmap/faults) fork_copies=$(cat /sys/kernel/hpmmap/fork_copies)"
    if [ "$(cat /sys/kernel/hpmmap/quarantined_bytes)" = 0 ]; then echo "ok - quarantine-empty-at-end"; else fail "quarantined_bytes=$(cat /sys/kernel/hpmmap/quarantined_bytes)"; fi
    rmmod hpmmap_test
    losetup -d /dev/loop0 2>/dev/null
    if rmmod hpmmap; then echo "ok - rmmod"; else fail "rmmod"; fi
fi
# Kernel splats only: "WARNING: CPU" is the WARN() format; the SRSO mitigation banner
# ("Speculative Return Stack Overflow: WARNING: ...") under KVM on AMD models is not one.
if kmsg | grep -E 'BUG:|kernel BUG|WARNING: CPU|Oops|bad pud|bad pmd|hpmmap: leak|general protection|Bad page'; then
    fail "kernel log has errors"
else
    echo "ok - kernel-log-clean"
fi
echo "HPMMAP-JOB-EXIT $status"
exit "$status"
