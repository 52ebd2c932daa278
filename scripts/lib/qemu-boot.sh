# shellcheck shell=bash
# Sourced by the lab scripts that start QEMU themselves (bash).
#
# qemu_boot [--quiet] LOG LIMIT QEMU-ARGS...
#   Runs qemu-system-x86_64 under `timeout LIMIT` and `nice`, its serial console (stdout,
#   carriage returns dropped) into LOG and, unless --quiet, onto stdout as it comes, its
#   stderr into LOG.stderr and onto stderr. Returns QEMU's status (124: LIMIT passed).
#
#   When QEMU itself dies on a signal, the boot runs once more. QEMU/TCG 10.0 now and then
#   aborts on its own assertion (`iotlb_to_section` in system/physmem.c, a vCPU using a
#   TLB entry from a memory map another thread just replaced), even in the firmware. Each
#   boot here starts from its initramfs, so the second runs the same thing; the first
#   console is kept as LOG.crash-1 and a line on stderr says so. The Rust side does the
#   same in images/src/qemu.rs.
qemu_boot() {
    local echo=1
    if [ "$1" = --quiet ]; then echo=0; shift; fi
    local log=$1 limit=$2; shift 2
    local attempt rc had_e=0
    case $- in *e*) had_e=1 ;; esac
    for attempt in 1 2; do
        set +e
        if [ $echo = 1 ]; then
            timeout "$limit" nice qemu-system-x86_64 "$@" </dev/null \
                2> >(tee "$log.stderr" >&2) | tr -d '\r' | tee "$log"
        else
            timeout "$limit" nice qemu-system-x86_64 "$@" </dev/null \
                2> >(tee "$log.stderr" >&2) | tr -d '\r' >"$log"
        fi
        rc=${PIPESTATUS[0]}
        [ $had_e = 1 ] && set -e
        # timeout passes a child's fatal signal on as 128+N: ABRT, SEGV, BUS, ILL, FPE.
        case $rc in
            134 | 139 | 135 | 132 | 136) ;;
            *) return "$rc" ;;
        esac
        if [ "$attempt" = 1 ]; then
            mv "$log" "$log.crash-1"
            mv "$log.stderr" "$log.crash-1.stderr" 2>/dev/null || true
            echo "[qemu-boot] QEMU itself crashed (status $rc: $(tail -n 1 "$log.crash-1.stderr" 2>/dev/null)); the emulator, not the guest: booting once more (first console in $log.crash-1)" >&2
        fi
    done
    echo "[qemu-boot] QEMU itself crashed twice (status $rc); consoles in $log.crash-1 and $log" >&2
    return "$rc"
}
