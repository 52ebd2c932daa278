#!/usr/bin/env bash
# The guest module's semantics suite in the nested lab's L1: `hpmmap-lab run --hpmmap-ko`
# boots Debian's 6.1 kernel under QEMU/TCG with a memmap= pool on its command line
# (--append), hpmmap.ko and hpmmap_test.ko built for that kernel by the lab (the image
# builder's module build, the project's one), loop.ko loaded (--modules loop), and runs
# suite.sh in it with the static test program and a static hpmmap-run.
#   run.sh suite|numa|bench [OUT_DIR]
# Prints the suite's lines (ok / not ok / #); exits with the suite's status, 3 with
# "SKIP: reason" when QEMU with igb, the compiler or the kernel packages cannot be had.
set -euo pipefail
mode=${1:?usage: run.sh suite|numa|bench [OUT_DIR]}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${2:-${CARGO_TARGET_DIR:-/work/target-kmod}/guest-lab}
mkdir -p "$out"
out=$(cd "$out" && pwd)
skip() { echo "SKIP: $*" >&2; exit 3; }
cd "$repo"
# shellcheck source=scripts/lib/debian-kernel.sh
. "$repo/scripts/lib/debian-kernel.sh"

# shellcheck source=scripts/lib/lab-check.sh
. "$repo/scripts/lib/lab-check.sh"
if why=$(lab_unavailable); then skip "$why"; fi
cc=$(command -v gcc-12 || command -v gcc || true)
[ -n "$cc" ] || skip "no C compiler"
abi=$(debian_kernel_abi 2>"$out/abi.err") || skip "$(cat "$out/abi.err")"

echo "[lab] building hpmmap-test" >&2
"$cc" -O2 -static -Wall -Wextra -Werror -I"$repo/guest-kmod/module" \
    -o "$out/hpmmap-test" "$repo/guest-kmod/tests/hpmmap-test.c" -lpthread

echo "[lab] building a static hpmmap-run and hpmmap-lab" >&2
# Their own target dir: a nested cargo must not wait on the lock of the cargo running us.
RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR="$out/cargo" \
    cargo build -q -p hpmmap-run --target x86_64-unknown-linux-gnu >&2
CARGO_TARGET_DIR="$out/cargo" cargo build -q -p hpmmap-image --bin hpmmap-lab >&2
run="$out/cargo/x86_64-unknown-linux-gnu/debug/hpmmap-run"

# 4 GiB on q35: RAM below 2 GiB and [4 GiB, 6 GiB); the high 2 GiB become the pool.
# numa: 5 GiB in two nodes (the lab's split: node 0 = [0, 2 GiB) + [4, 5 GiB), node 1 =
# [5, 7 GiB)), a range in each.
lab=(--mem 4G)
if [ "$mode" = numa ]; then
    lab=(--mem 5G --numa-nodes 2
         --append "memmap=512M\$0x40000000 memmap=1G\$0x140000000 hpmmap_pool=512M@0x40000000,1G@0x140000000")
else
    lab+=(--append "memmap=2G\$0x100000000 hpmmap_pool=2G@0x100000000")
fi
echo "[lab] $abi in the lab's L1 ($mode)" >&2
mkdir -p "$out/no-bins"
set +e
# --bins: an empty directory; the suite needs no hpmmap-vmm in L1, and a smaller initramfs
# boots sooner. oops=panic: an oops in the module ends the run instead of limping on.
"$out/cargo/debug/hpmmap-lab" run "${lab[@]}" --cpus 2 --hugepages 0 \
    --append "oops=panic softlockup_panic=1 log_buf_len=4M" --modules loop --hpmmap-ko \
    --timeout "${HPMMAP_LAB_TIMEOUT:-420}" --bins "$out/no-bins" --work "$out/lab-$mode" \
    --add "$out/hpmmap-test:/lab/bin/hpmmap-test" --add "$run:/lab/bin/hpmmap-run" \
    --add "$here/suite.sh:/root/suite.sh" -- sh /root/suite.sh "$mode"
rc=$?
set -e
[ "$rc" = 0 ] || echo "[lab] suite exit status $rc; L1's console in $out/lab-$mode/console.log" >&2
exit "$rc"
