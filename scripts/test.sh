#!/usr/bin/env bash
# The project's test command (README): sets the machine up, then runs every test tier that this
# machine can run, and ends with a table of how many tests ran in each tier and which skipped
# and why. HPMMAP_REQUIRE=kvm,lab,... (or all) makes a skip of a listed tier a failure; .ci/run
# sets it for the tiers a CI machine has.
#
#   scripts/test.sh          everything (CI)
#   scripts/test.sh --fast   format, lints and unit tests only: the inner loop, no setup
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/tier.sh
. scripts/lib/tier.sh

fast=0
case "${1:-}" in
    --fast) fast=1 ;;
    "") ;;
    *) echo "usage: scripts/test.sh [--fast]" >&2; exit 2 ;;
esac

if [ "$fast" = 1 ]; then
    echo "== format and lint"
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --quiet -- -D warnings
    bash scripts/habits.sh shellcheck
    echo "== unit tests"
    cargo test --workspace --lib --bins --quiet
    exit 0
fi

if [ "${HPMMAP_SKIP_SETUP:-0}" != 1 ]; then
    bash scripts/setup-host.sh
fi

HPMMAP_TIER_LOG=${HPMMAP_TIER_LOG:-$PWD/target/hpmmap-tiers.log}
export HPMMAP_TIER_LOG
mkdir -p "$(dirname "$HPMMAP_TIER_LOG")"
: >"$HPMMAP_TIER_LOG"
trap 'echo "== tiers (HPMMAP_REQUIRE=${HPMMAP_REQUIRE:-none})"; tier_table "$HPMMAP_TIER_LOG"' EXIT

echo "== format and lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== habits (shellcheck, checkpatch, cargo-deny, MSRV)"
bash scripts/habits.sh all

# Extra suites (kernel module build, lab scenarios) live one per file so that layers can add
# theirs without touching this script.
for extra in scripts/test.d/*.sh; do
    [ -e "$extra" ] || continue
    echo "== $(basename "$extra")"
    bash "$extra"
done

echo "== cargo test (unit, host KVM, QEMU/TCG, lab tiers)"
cargo test --workspace --no-fail-fast -- --test-threads="${HPMMAP_TEST_THREADS:-2}"
