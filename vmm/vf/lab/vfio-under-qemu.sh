#!/usr/bin/env bash
# Runs `hpmmap-vf-probe` (hpmmap-pci) and `hpmmap-vf` for real in the nested lab: `hpmmap-lab run` boots Debian's 6.1
# kernel under QEMU/TCG with an emulated VT-d IOMMU and an igb SR-IOV NIC, and the scenario
# vfio.sh runs in it (binding, VFIO container/group/device, DMA maps, MSI-X, teardown on
# SIGTERM, bad input, a sysfs recording). Run by scripts/test.d/vf.sh; about a minute of TCG.
# Output: the scenario's lines; the last is VF-LAB-RESULT pass|fail. Exit 77: the lab cannot
# run here (no kernel package).
set -euo pipefail
cd "$(dirname "$0")/../../.."
WORK="${VF_LAB_WORK:-/tmp/hpmmap-vf-lab}"
TARGET="${CARGO_TARGET_DIR:-target}"
log() { echo "[vf-lab] $*" >&2; }

log "building hpmmap-vf, hpmmap-vf-probe and hpmmap-lab"
cargo build -q -p hpmmap-vf --bin hpmmap-vf -p hpmmap-pci --bin hpmmap-vf-probe -p hpmmap-image --bin hpmmap-lab
rm -rf "$WORK" && mkdir -p "$WORK"
log "booting the lab's L1 (2560 MiB: the VF BARs stay below 4 GiB, where igbvf can use them)"
rc=0
"$TARGET/debug/hpmmap-lab" run --mem 2560M --cpus 1 --hugepages 0 --timeout 600 \
    --add "$TARGET/debug/hpmmap-vf:/bin/hpmmap-vf" --add "$TARGET/debug/hpmmap-vf-probe:/bin/hpmmap-vf-probe" \
    --add vmm/vf/lab/vfio.sh:/root/vfio.sh \
    -- sh /root/vfio.sh >"$WORK/out.log" 2>&1 || rc=$?
cat "$WORK/out.log"
# hpmmap-lab exits 2 for input it refuses, such as a guest kernel it cannot fetch.
if [ "$rc" = 2 ] && grep -q "linux-image" "$WORK/out.log"; then exit 77; fi
sed -n '/^BEGIN-RECORDING/,/^END-RECORDING/p' "$WORK/out.log" | sed '1d;$d' | tr -d '\r' |
    base64 -d >"$WORK/recording.tar.gz" 2>/dev/null || true
[ -s "$WORK/recording.tar.gz" ] && log "sysfs recording: $WORK/recording.tar.gz"
grep -q '^VF-LAB-RESULT pass' "$WORK/out.log" && [ "$rc" = 0 ]
