#!/usr/bin/env bash
# hpmmap-offline's device-dax path on a real kernel: two L1 runs of the nested lab
# (hpmmap-lab run, QEMU/TCG, Debian 6.1; --pmem 3G, then movablecore=5G) take the binary
# through prepare / convert-from-system-ram / release and a hugetlb reserve from
# ZONE_MOVABLE. About 80 s on this host. Skips where QEMU (with igb) or the kernel is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/lib/tier.sh
. scripts/lib/tier.sh
if ! command -v qemu-system-x86_64 >/dev/null; then
    tier_skip qemu devdax-lab "qemu-system-x86_64 is not installed"
    exit $?
fi
out=${CARGO_TARGET_DIR:-target}/devdax-lab/run
rm -rf "$out"
rc=0
nice bash host-offline/lab/devdax-lab.sh "$out" || rc=$?
if [ "$rc" = 77 ]; then
    tier_skip qemu devdax-lab "no Debian 6.1 kernel package, or QEMU without the igb device"
    exit $?
fi
[ "$rc" = 0 ] && tier_ran qemu devdax-lab
exit "$rc"
