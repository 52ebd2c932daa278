# shellcheck shell=bash
# "Can the nested lab run here?" for shell suites: the lab's own answer (`hpmmap-lab check`:
# QEMU 8.0+ with igb, a guest kernel in apt or the package cache), the same one the Rust
# tests ask. Source this from the workspace root, then
#   why=$(lab_unavailable) && { tier_skip lab NAME "$why"; exit $?; }
# lab_unavailable builds hpmmap-lab, prints the reason and returns 0 when the lab cannot run,
# returns 1 (printing nothing) when it can.
lab_unavailable() {
    local lab=${CARGO_TARGET_DIR:-target}/debug/hpmmap-lab out
    if ! nice cargo build -q -p hpmmap-image --bin hpmmap-lab >&2; then
        echo "hpmmap-lab does not build"
        return 0
    fi
    if out=$("$lab" check); then
        return 1
    fi
    echo "${out#hpmmap-lab: }"
    return 0
}
