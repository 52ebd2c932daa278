#!/usr/bin/env bash
# Benchmark (issue 4): page faults and time to map + first-touch 1 GiB through hpmmap,
# Linux THP and Linux 4 KiB pages, in one boot of the same guest. Prints a Markdown table.
#   bench.sh [OUT_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-${CARGO_TARGET_DIR:-/work/target-kmod}/guest-lab}
set +e
"$here/run.sh" bench "$out" >"$out.bench.log" 2>&1
rc=$?
set -e
if [ $rc = 3 ]; then grep '^SKIP' "$out.bench.log" || echo "SKIP: lab prerequisites missing"; exit 0; fi
grep -q '^BENCH ' "$out.bench.log" || { cat "$out.bench.log" >&2; exit 1; }
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
echo "Platform: Debian 6.1 guest under QEMU/TCG (emulation; counts are real, times are not"
echo "hardware speed), 2 vCPUs, 4 GiB, pool = memmap 2 GiB; host CPU: $cpu. One run."
echo
echo "| memory | page faults (getrusage) | faults in hpmmap ranges | THP faults (vmstat) | map (s) | first touch 1 GiB (s) | total (s) |"
echo "|---|---:|---:|---:|---:|---:|---:|"
sed -n 's/^BENCH //p' "$out.bench.log" | while read -r mode rest; do
    eval "$(echo "$rest" | tr ' ' '\n' | sed 's/^\([a-z_]*\)=\(.*\)$/\1=\2/')"
    case $mode in
        hpmmap) name="hpmmap (1 GiB page, eager)" ;;
        thp) name="Linux THP (madvise)" ;;
        *) name="Linux 4 KiB (nohugepage)" ;;
    esac
    # shellcheck disable=SC2154 # set by the eval above
    echo "| $name | $faults | $module_faults | $thp_alloc | $map_s | $touch_s | $total_s |"
done
