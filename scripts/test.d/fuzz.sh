#!/usr/bin/env bash
# cargo-fuzz (libFuzzer) smoke run of fuzz/ (issue 12.5): builds every target with the
# stable toolchain (RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its nightly flags), then runs
# each for FUZZ_SECONDS (default 10) from its committed seed corpus (fuzz/seeds/TARGET)
# into a scratch corpus. A crash, leak, timeout or out-of-memory fails the run and names
# the input. Prints SKIP and exits 0 only when cargo-fuzz cannot be installed or the
# toolchain cannot build a libFuzzer binary at all; a build error in our code fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/lib/tier.sh
. scripts/lib/tier.sh
secs=${FUZZ_SECONDS:-10}
export RUSTC_BOOTSTRAP=1
export PATH="$HOME/.cargo/bin:$PATH"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "[fuzz] installing cargo-fuzz (cargo install --locked cargo-fuzz)"
    if ! cargo install --locked cargo-fuzz >/tmp/hpmmap-cargo-fuzz-install.log 2>&1; then
        tail -5 /tmp/hpmmap-cargo-fuzz-install.log
        tier_skip tools fuzz "cargo-fuzz is not installed and cannot be installed (log: /tmp/hpmmap-cargo-fuzz-install.log)"
        exit $?
    fi
fi

# Can this toolchain build a libFuzzer-instrumented binary at all? (sanitizer coverage is a
# nightly flag; RUSTC_BOOTSTRAP opens it on stable.)
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
echo 'fn main() {}' >"$probe/p.rs"
if ! rustc -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Zsanitizer=address \
    -o "$probe/p" "$probe/p.rs" >"$probe/err" 2>&1; then
    sed -n 1,3p "$probe/err"
    tier_skip tools fuzz "this rustc cannot build sanitizer-coverage binaries (RUSTC_BOOTSTRAP=1 did not open -Z flags)"
    exit $?
fi

cd fuzz
targets=$(cargo fuzz list)
echo "[fuzz] building $(echo "$targets" | wc -l) targets (address sanitizer)"
nice cargo fuzz build --release 2>&1 | grep -E '^(error|warning: unused)|Finished' || true
triple=$(rustc -vV | sed -n 's/^host: //p')
bindir=target/$triple/release
for t in $targets; do
    [ -x "$bindir/$t" ] || { echo "[FAIL] fuzz: $t did not build"; exit 1; }
done

scratch=$(mktemp -d)
trap 'rm -rf "$probe" "$scratch"' EXIT
export HPMMAP_FUZZ_TMP="$scratch/tmp"
mkdir -p "$HPMMAP_FUZZ_TMP"
fail=0
for t in $targets; do
    mkdir -p "$scratch/corpus/$t" "$scratch/art/$t"
    log="$scratch/$t.log"
    rc=0
    nice "$bindir/$t" "$scratch/corpus/$t" "seeds/$t" -max_total_time="$secs" \
        -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$scratch/art/$t/" >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    cov=$(grep -E '^#[0-9]+' "$log" | tail -1 | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
    seeds=$(find "seeds/$t" -type f | wc -l)
    if [ "$rc" = 0 ]; then
        echo "[ ok ] fuzz $t: ${execs:-?} executions in ${secs}s, coverage ${cov:-?} edges, $seeds seeds"
    else
        fail=1
        echo "[FAIL] fuzz $t: status $rc"
        grep -E 'panicked|SUMMARY|ERROR|Test unit written' "$log" | head -8
        for a in "$scratch/art/$t"/*; do
            [ -f "$a" ] && { mkdir -p artifacts/$t; cp "$a" artifacts/$t/; echo "  input: fuzz/artifacts/$t/$(basename "$a")"; }
        done
    fi
done
[ "$fail" = 0 ] && echo "FUZZ-SMOKE-RESULT: pass ($(echo "$targets" | wc -l) targets x ${secs}s)"
[ "$fail" = 0 ] && tier_ran tools fuzz
exit "$fail"
