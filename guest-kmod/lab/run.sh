#!/usr/bin/env bash
# Builds hpmmap.ko against Debian's 6.1 kernel, the guest test program and a static
# hpmmap-run, packs a minimal initramfs and boots it under QEMU/TCG with a memmap= pool.
#   run.sh suite|numa|bench [OUT_DIR]
# Prints the guest's console; exits with the guest job's status (HPMMAP-JOB-EXIT), 3 with
# "SKIP: reason" when QEMU, the compiler or the kernel packages cannot be had.
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib/qemu-boot.sh"
mode=${1:?usage: run.sh suite|bench [OUT_DIR]}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${2:-${CARGO_TARGET_DIR:-/work/target-kmod}/guest-lab}
mkdir -p "$out"
skip() { echo "SKIP: $*" >&2; exit 3; }

command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 not installed"
cc=$(command -v gcc-12 || command -v gcc || true)
[ -n "$cc" ] || skip "no C compiler"
command -v cpio >/dev/null || skip "cpio not installed"
command -v busybox >/dev/null || skip "busybox-static not installed"

kinfo=$("$here/kernel.sh" "$out/kernel") || exit $?
eval "$kinfo"

echo "[lab] building hpmmap.ko for $ABI" >&2
rm -rf "$out/module" && mkdir -p "$out/module"
cp "$repo/guest-kmod/module/"*.[ch] "$repo/guest-kmod/module/Kbuild" "$out/module/"
# HPMMAP_TEST=m: also hpmmap_test.ko, the suite's test hooks (never in a job image).
make -s -C "$KDIR" M="$out/module" CC=gcc-12 HPMMAP_TEST=m modules >&2

echo "[lab] building hpmmap-test" >&2
"$cc" -O2 -static -Wall -Wextra -Werror -I"$repo/guest-kmod/module" \
    -o "$out/hpmmap-test" "$repo/guest-kmod/tests/hpmmap-test.c" -lpthread

echo "[lab] building a static hpmmap-run" >&2
# Its own target dir: a nested cargo must not wait on the lock of the cargo running us.
(cd "$repo" && RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR="$out/cargo" \
    cargo build -q -p hpmmap-run --target x86_64-unknown-linux-gnu >&2)
run="$out/cargo/x86_64-unknown-linux-gnu/debug/hpmmap-run"

# loop.ko: an asynchronous block device for the O_DIRECT case (Debian builds it as a module).
extra=()
loop_ko=$(dirname "$VMLINUZ")/../lib/modules/$ABI-amd64/kernel/drivers/block/loop.ko
[ -f "$loop_ko" ] && extra+=("$loop_ko")
"$here/initramfs.sh" "$out/initramfs-$mode.cpio.gz" "$here/init-suite.sh" \
    "$out/hpmmap-test" "$run" "$out/module/hpmmap.ko" "$out/module/hpmmap_test.ko" "${extra[@]}"

# q35 with 4 GiB: RAM below 2 GiB and [4 GiB, 6 GiB); the high 2 GiB become the pool.
# numa: two nodes (node 0 = the low 2 GiB, node 1 = the high 2 GiB), a range in each.
numa=()
if [ "$mode" = numa ]; then
    # shellcheck disable=SC2054 # QEMU option values are comma-separated, not array elements
    numa=(-object memory-backend-ram,id=m0,size=2G -numa node,nodeid=0,memdev=m0
          -object memory-backend-ram,id=m1,size=2G -numa node,nodeid=1,memdev=m1)
    append="memmap=512M\$0x40000000 memmap=1G\$0x100000000 hpmmap_pool=512M@0x40000000,1G@0x100000000"
else
    append="memmap=2G\$0x100000000 hpmmap_pool=2G@0x100000000"
fi
append="console=ttyS0 loglevel=4 $append hpmmap_mode=$mode panic=-1 oops=panic softlockup_panic=1"
echo "[lab] booting $ABI under QEMU/TCG ($mode)" >&2
log="$out/console-$mode.log"
set +e
qemu_boot "$log" "${HPMMAP_LAB_TIMEOUT:-420}" -accel tcg -machine q35 -cpu max \
    -smp 2 -m 4G "${numa[@]}" -kernel "$VMLINUZ" -initrd "$out/initramfs-$mode.cpio.gz" \
    -append "$append" -display none -serial stdio -monitor none -no-reboot
set -e
status=$(sed -n 's/^HPMMAP-JOB-EXIT \([0-9]*\)$/\1/p' "$log" | tail -1)
if [ -z "$status" ]; then
    echo "[lab] guest did not report HPMMAP-JOB-EXIT (crash or timeout); console in $log" >&2
    exit 1
fi
exit "$status"
