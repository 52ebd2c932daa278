#!/usr/bin/env bash
# Real check of hpmmap-pci with a real VF and a real KVM, in the nested lab: `hpmmap-lab run`
# boots Debian's 6.1 kernel under QEMU/TCG with an emulated VT-d IOMMU, an igb SR-IOV NIC and
# KVM on TCG's SVM+NPT (kvm_amd), and vf-in-kvm.sh runs `vf_lab --vf VF`
# (examples/vf_lab.rs) in it: conf1 cycles, BAR0 through a KVM memory slot onto the VF's
# mmapped BAR, MSI-X through the trapped table, VFIO eventfd -> KVM irqfd -> GSI route ->
# LAPIC. Emulated hardware: proves behaviour, not speed. Run by scripts/test.d/pci.sh.
# Output: the scenario's lines; the last is VF-PCI-LAB-RESULT pass|fail. Exit 77: the lab
# cannot run here (no kernel package).
set -euo pipefail
cd "$(dirname "$0")/../../.."
WORK="${PCI_LAB_WORK:-/tmp/hpmmap-pci-lab}"
TARGET="${CARGO_TARGET_DIR:-target}"
log() { echo "[pci-lab] $*" >&2; }

log "building vf_lab and hpmmap-lab"
cargo build -q -p hpmmap-pci --example vf_lab
cargo build -q -p hpmmap-image --bin hpmmap-lab
rm -rf "$WORK" && mkdir -p "$WORK"
log "booting the lab's L1 with intel-iommu, igb and SVM+NPT (a few minutes)"
rc=0
# One L1 vCPU: vf_lab's guest and L1 then never run in guest mode at once.
"$TARGET/debug/hpmmap-lab" run --mem 2560M --cpus 1 --hugepages 0 --timeout 900 \
    --add "$TARGET/debug/examples/vf_lab:/bin/vf_lab" --add vmm/pci/lab/vf-in-kvm.sh:/root/vf-in-kvm.sh \
    -- sh /root/vf-in-kvm.sh >"$WORK/out.log" 2>&1 || rc=$?
cat "$WORK/out.log"
if [ "$rc" = 2 ] && grep -q "linux-image" "$WORK/out.log"; then exit 77; fi
grep -q '^VF-PCI-LAB-RESULT pass' "$WORK/out.log" && [ "$rc" = 0 ]
