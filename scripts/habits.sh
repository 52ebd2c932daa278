#!/usr/bin/env bash
# The project's habits, checked by the test command (scripts/test.sh runs every check; each
# can run alone):
#   scripts/habits.sh shellcheck   every shell script in the tree, warnings and errors
#   scripts/habits.sh checkpatch   the guest module against the kernel's own checkpatch.pl (from
#                                  Debian's linux-source-6.1, the guest kernel's series): no ERROR
#   scripts/habits.sh deny         cargo-deny: licenses, banned and duplicate crates, sources
#   scripts/habits.sh msrv         the workspace builds (cargo check) on its declared rust-version
#   scripts/habits.sh all          all of the above
# Tools that are missing are installed (apt, cargo install, rustup) as CI needs on a fresh
# machine; a tool that cannot be had is a tools-tier skip (scripts/lib/tier.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/tier.sh
. scripts/lib/tier.sh
# shellcheck source=scripts/lib/debian-kernel.sh
. scripts/lib/debian-kernel.sh

log() { echo "[habits] $*" >&2; }

apt_install() {
    command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] || return 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o DPkg::Lock::Timeout=300 "$@" >/dev/null
}

# Every shell script git knows: *.sh plus files whose first line runs a shell.
shell_scripts() {
    git ls-files -z | while IFS= read -r -d '' f; do
        [ -f "$f" ] || continue
        case "$f" in
            *.sh) printf '%s\n' "$f" ;;
            *) head -c 64 "$f" 2>/dev/null | head -1 | grep -qE '^#!.*(/|env )(ba|da)?sh\b' &&
                printf '%s\n' "$f" ;;
        esac
    done
}

check_shellcheck() {
    command -v shellcheck >/dev/null || apt_install shellcheck ||
        { tier_skip tools shellcheck "shellcheck is not installed and cannot be"; return; }
    local files
    mapfile -t files < <(shell_scripts)
    # Style notes (SC2012 ls, SC2015 A && B || C...) are left to review; warnings and errors fail.
    shellcheck -x -S warning "${files[@]}"
    log "shellcheck: ${#files[@]} scripts clean at severity warning"
    tier_ran tools shellcheck
}

# checkpatch.pl and the two data files it reads, unpacked once from linux-source-6.1.
checkpatch_tool() {
    local abi deb dir
    abi=$(debian_kernel_abi) || return 77
    dir="${HPMMAP_CACHE:-$HOME/.cache/hpmmap}/unpacked/checkpatch-${abi%%-*}"
    if [ ! -x "$dir/scripts/checkpatch.pl" ]; then
        deb=$(debian_deb linux-source-6.1) || return 77
        log "unpacking checkpatch.pl from $(basename "$deb")"
        rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
        dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dir.tmp" --wildcards '*/linux-source-6.1.tar.xz'
        tar -xJf "$dir.tmp/usr/src/linux-source-6.1.tar.xz" -C "$dir.tmp" --strip-components=1 \
            linux-source-6.1/scripts/checkpatch.pl linux-source-6.1/scripts/spelling.txt \
            linux-source-6.1/scripts/const_structs.checkpatch
        rm -rf "$dir.tmp/usr" "$dir" && mv "$dir.tmp" "$dir"
    fi
    printf '%s\n' "$dir/scripts/checkpatch.pl"
}

check_checkpatch() {
    local cp out
    cp=$(checkpatch_tool) || { tier_skip tools checkpatch "linux-source-6.1 cannot be had from apt"; return; }
    # --no-tree: the module is checked as files, outside a kernel tree.
    out=$(perl "$cp" --no-tree --terse -q -f guest-kmod/module/*.[ch] guest-kmod/tests/*.c 2>&1 || true)
    local errors warnings
    errors=$(grep -c ': ERROR:' <<<"$out" || true)
    warnings=$(grep -c ': WARNING:' <<<"$out" || true)
    if [ "$errors" != 0 ]; then
        grep ': ERROR:' <<<"$out"
        echo "FAIL: checkpatch: $errors errors in guest-kmod (warnings: $warnings)"
        return 1
    fi
    log "checkpatch: guest-kmod has 0 errors ($warnings warnings, style only)"
    tier_ran tools checkpatch
}

check_deny() {
    if ! cargo deny --version >/dev/null 2>&1; then
        log "installing cargo-deny (cargo install --locked cargo-deny; a few minutes once)"
        cargo install --locked -q cargo-deny >/tmp/hpmmap-cargo-deny-install.log 2>&1 ||
            { tier_skip tools cargo-deny "cannot be installed (log: /tmp/hpmmap-cargo-deny-install.log)"; return; }
    fi
    # advisories needs the RustSec database from GitHub, which this project's machines cannot
    # reach (crates.io, PyPI, npm and Debian only): deny.toml says so, the other checks run.
    cargo deny --all-features --log-level warn check licenses bans sources
    log "cargo-deny: licenses, bans and sources pass (deny.toml)"
    tier_ran tools cargo-deny
}

check_msrv() {
    local msrv
    msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
    [ -n "$msrv" ] || { echo "FAIL: msrv: no rust-version in the workspace Cargo.toml"; return 1; }
    if ! rustup run "$msrv" rustc --version >/dev/null 2>&1; then
        log "installing Rust $msrv (rustup, minimal profile)"
        rustup toolchain install "$msrv" --profile minimal >/dev/null 2>&1 ||
            { tier_skip tools msrv "rustup cannot install Rust $msrv here"; return; }
    fi
    # A target directory of its own: a different compiler would invalidate the main build.
    nice cargo "+$msrv" check --quiet --workspace --all-targets \
        --target-dir "${CARGO_TARGET_DIR:-target}/msrv"
    log "msrv: the workspace builds with Rust $msrv (rust-version in Cargo.toml)"
    tier_ran tools msrv
}

case "${1:-all}" in
    shellcheck) check_shellcheck ;;
    checkpatch) check_checkpatch ;;
    deny) check_deny ;;
    msrv) check_msrv ;;
    all) check_shellcheck; check_checkpatch; check_deny; check_msrv ;;
    *) echo "usage: scripts/habits.sh [shellcheck|checkpatch|deny|msrv|all]" >&2; exit 2 ;;
esac
