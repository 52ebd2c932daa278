#!/usr/bin/env bash
# hpmmap-offline's device-dax path on a real kernel: the lab guest (QEMU/TCG, Debian 6.1,
# memmap= pmem) runs the static binary through prepare / convert-from-system-ram / release.
# About a minute (static build + a ~35 s guest). Skips where QEMU is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v qemu-system-x86_64 >/dev/null; then
    echo "SKIP: qemu-system-x86_64 missing; host-offline devdax lab not run"
    exit 0
fi
out=${CARGO_TARGET_DIR:-target}/devdax-lab/run
rm -rf "$out"
rc=0
nice bash host-offline/lab/devdax-lab.sh "$out" || rc=$?
if [ "$rc" = 77 ]; then
    echo "SKIP: no Debian 6.1 kernel package for the host-offline devdax lab"
    exit 0
fi
exit "$rc"
