#!/bin/sh
# /init of the semantics-suite initramfs (QEMU/TCG, memmap= pool).
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
pool=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^hpmmap_pool=//p')
status=0
fail() { echo "not ok - $*"; status=1; }
# Bad parameters: a clear refusal, never an oops (the kernel log is checked at the end).
bad=""
for params in "pv=0xfeb00000" "pool=garbage" "pool=1G@0x0" "pool=1G" ""; do
    if insmod /lib/hpmmap/hpmmap.ko $params 2>/dev/null; then
        bad="$bad [$params]"; rmmod hpmmap
    fi
done
[ -z "$bad" ] && echo "ok - insmod-bad-params" || fail "insmod-bad-params: accepted$bad"
dmesg | grep 'hpmmap: ' | sed 's/^\[[^]]*\] /# /' | head -8
if ! insmod /lib/hpmmap/hpmmap.ko pool="$pool"; then
    fail "insmod hpmmap.ko pool=$pool"
else
    echo "# free blocks: $(tr '\n' ' ' </sys/kernel/hpmmap/free_blocks)"
    insmod /lib/hpmmap/hpmmap_test.ko || fail "insmod hpmmap_test.ko"
    # a loop device over a 32 MiB file for the O_DIRECT case (skipped without loop.ko)
    if [ -f /lib/hpmmap/loop.ko ] && insmod /lib/hpmmap/loop.ko 2>/dev/null; then
        dd if=/dev/zero bs=1M count=32 2>/dev/null | tr '\000' '\253' >/tmp/odirect.img
        losetup /dev/loop0 /tmp/odirect.img || echo "# losetup failed"
    fi
    mode=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^hpmmap_mode=//p')
    if [ "$mode" = numa ]; then
        echo "# $(tr '\n' ' ' </sys/kernel/hpmmap/nodes)"
        [ "$(grep -c '^node' /sys/kernel/hpmmap/nodes)" = 2 ] && echo "ok - numa-two-node-pool" || fail "numa-two-node-pool"
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
        [ $rc = 127 ] && echo "ok - launcher-missing-program" || fail "launcher-missing-program rc=$rc"
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
    [ "$free" = "$total" ] && echo "ok - pool-full-at-end" || fail "pool-full-at-end: $free of $total free"
    [ "$(cat /sys/kernel/hpmmap/registered)" = 0 ] && echo "ok - none-registered-at-end" || fail "registered=$(cat /sys/kernel/hpmmap/registered)"
    echo "# counters: mappings=$(cat /sys/kernel/hpmmap/mappings) fallbacks=$(cat /sys/kernel/hpmmap/fallbacks) faults=$(cat /sys/kernel/hpmmap/faults) fork_copies=$(cat /sys/kernel/hpmmap/fork_copies)"
    [ "$(cat /sys/kernel/hpmmap/quarantined_bytes)" = 0 ] && echo "ok - quarantine-empty-at-end" || fail "quarantined_bytes=$(cat /sys/kernel/hpmmap/quarantined_bytes)"
    rmmod hpmmap_test
    losetup -d /dev/loop0 2>/dev/null
    if rmmod hpmmap; then echo "ok - rmmod"; else fail "rmmod"; fi
fi
# Kernel splats only: "WARNING: CPU" is the WARN() format; the SRSO mitigation banner
# ("Speculative Return Stack Overflow: WARNING: ...") under KVM on AMD models is not one.
if dmesg | grep -E 'BUG:|kernel BUG|WARNING: CPU|Oops|bad pud|bad pmd|hpmmap: leak|general protection|Bad page'; then
    fail "kernel log has errors"
else
    echo "ok - kernel-log-clean"
fi
echo "HPMMAP-JOB-EXIT $status"
poweroff -f
