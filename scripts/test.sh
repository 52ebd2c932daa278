#!/usr/bin/env bash
# The project's test command (README): sets the machine up, then runs every test tier
# that this machine can run. Tiers that need something missing print why they skip.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${HPMMAP_SKIP_SETUP:-0}" != 1 ]; then
    bash scripts/setup-host.sh
fi

echo "== format and lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

# Extra suites (kernel module build, lab scenarios) live one per file so that
# layers can add theirs without touching this script.
for extra in scripts/test.d/*.sh; do
    [ -e "$extra" ] || continue
    echo "== $(basename "$extra")"
    bash "$extra"
done

echo "== cargo test (unit, host KVM, QEMU/TCG, lab tiers)"
cargo test --workspace --no-fail-fast -- --test-threads="${HPMMAP_TEST_THREADS:-2}"
