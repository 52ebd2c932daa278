#!/usr/bin/env bash
# hpmmap-bench: the workloads must build static (they go into guest job images), and the
# static `hpmmap-workload` with no arguments (the default job: cg, 64 MiB, THP) must
# converge and verify, and take its arguments from the environment as the VM rows pass them.
# Also makes sure stress-ng and the kernel-build tools that the
# harness's profiles A/B need are present (the harness itself is not run here: its
# figures come from `hpmmap-bench run`, not from tests). About a minute on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/lib/tier.sh
. scripts/lib/tier.sh

missing=()
for t in stress-ng flex bison bc; do command -v "$t" >/dev/null || missing+=("$t"); done
[ -e /usr/include/libelf.h ] || missing+=(libelf-dev)
if [ ${#missing[@]} -gt 0 ]; then
    pkgs=${missing[*]}
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "bench: installing ${pkgs} (profiles A/B of hpmmap-bench)"
        # shellcheck disable=SC2086 # one word per package
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${pkgs} >/dev/null
    else
        tier_skip tools bench-profiles "${pkgs} missing and cannot be installed here (harness profiles A/B need them)"
    fi
fi

target=x86_64-unknown-linux-gnu
# The static guest binaries' target dir (images/src/workspace.rs guest_target_dir): the job
# images' built-in workload is this same build.
static_dir=${CARGO_TARGET_DIR:-target}/hpmmap-guest-static
RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR=$static_dir nice cargo build --quiet --release \
    --target "$target" -p hpmmap-bench --bin hpmmap-workload
bin=$static_dir/$target/release/hpmmap-workload
if ldd "$bin" 2>&1 | grep -q '=>'; then
    echo "FAIL: bench: $bin is dynamically linked"
    ldd "$bin"
    exit 1
fi
out=$("$bin")
echo "$out" | grep -E '^HPMMAP-(DETAIL|RESULT)'
echo "$out" | grep -q '^HPMMAP-RESULT .* workload=cg .* valid=1 ' || {
    echo "FAIL: bench: the static default job (cg) did not verify"
    exit 1
}
echo "bench: static hpmmap-workload default job (cg) converged and verified"
# The VM rows start it without arguments and pass them on the guest kernel's command line,
# which the guest's init hands on as this variable.
out=$(hpmmap_workload_args=faults,--mem-per-rank,4M,--iters,2,--tol,0 "$bin")
echo "$out" | grep -q '^HPMMAP-RESULT .* workload=faults .* valid=1 ' || {
    echo "FAIL: bench: the static workload ignored hpmmap_workload_args"
    exit 1
}
echo "bench: static hpmmap-workload takes its arguments from hpmmap_workload_args (VM rows)"
