#!/usr/bin/env bash
# Long fuzz run (issue 12.5 closing note): every cargo-fuzz target, one after the other,
# for SECONDS_PER_TARGET (default 3600) at nice 19, from its committed seeds into the
# growing corpus/TARGET. Prints one table row per target (executions, libFuzzer cov/ft,
# corpus size, result); logs and crash inputs go to $FUZZ_LONG_OUT (default
# fuzz/artifacts/long-DATE). Exit 1 when any target found something.
#   fuzz/run-long.sh [SECONDS_PER_TARGET] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-3600}
case $secs in
    '' | *[!0-9]* | 0) echo "run-long.sh: SECONDS_PER_TARGET must be a positive integer, not '$secs'" >&2; exit 2 ;;
esac
shift $(($# > 0 ? 1 : 0))
export RUSTC_BOOTSTRAP=1
export PATH="$HOME/.cargo/bin:$PATH"
cargo fuzz --version >/dev/null 2>&1 || { echo "run-long.sh: cargo-fuzz is not installed (cargo install --locked cargo-fuzz)" >&2; exit 1; }
all=$(cargo fuzz list)
targets=${*:-$all}
for t in $targets; do
    grep -qx "$t" <<<"$all" || { echo "run-long.sh: no fuzz target '$t' (have: $(echo $all))" >&2; exit 2; }
done

if ! nice -n 19 cargo fuzz build --release >"${TMPDIR:-/tmp}/hpmmap-fuzz-build.log" 2>&1; then
    grep -E '^error' "${TMPDIR:-/tmp}/hpmmap-fuzz-build.log" | head -5 >&2
    echo "run-long.sh: cargo fuzz build failed (log: ${TMPDIR:-/tmp}/hpmmap-fuzz-build.log)" >&2
    exit 1
fi
bindir=target/$(rustc -vV | sed -n 's/^host: //p')/release
out=${FUZZ_LONG_OUT:-artifacts/long-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out/tmp"
export HPMMAP_FUZZ_TMP="$out/tmp"
echo "| target | seconds | executions | cov | ft | corpus | result |"
echo "|---|---:|---:|---:|---:|---:|---|"
fail=0
for t in $targets; do
    mkdir -p "corpus/$t" "$out/$t"
    rc=0
    nice -n 19 "$bindir/$t" "corpus/$t" "seeds/$t" -max_total_time="$secs" \
        -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$out/$t/" >"$out/$t.log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/$t.log")
    last=$(grep -E '^#[0-9]+' "$out/$t.log" | tail -1)
    cov=$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corpus=$(find "corpus/$t" -type f | wc -l)
    if [ "$rc" = 0 ]; then
        result=clean
    else
        fail=1
        result="status $rc: $(grep -m1 -E 'panicked|SUMMARY|ERROR' "$out/$t.log" | cut -c1-100), input in fuzz/$out/$t/"
    fi
    echo "| $t | $secs | ${execs:-?} | ${cov:-?} | ${ft:-?} | $corpus | $result |"
done
echo "logs: $(cd "$out" && pwd)"
exit "$fail"
