#!/usr/bin/env bash
# hpmmap-pci with a real VF and real KVM: Debian's 6.1 kernel under QEMU/TCG with an
# emulated VT-d IOMMU, an igb SR-IOV NIC and KVM on TCG's SVM+NPT; a nested guest reaches
# an igbvf VF through the PCI root bus (conf1, BAR0 in a KVM slot, MSI-X via irqfd).
# About 1 minute of TCG once built (vmm/pci/lab/vf-in-kvm-under-qemu.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v qemu-system-x86_64 >/dev/null || ! qemu-system-x86_64 -device help 2>/dev/null | grep -q '"igb"'; then
    echo "SKIP: pci lab: qemu-system-x86_64 with the igb device (QEMU >= 8.0) is not installed"
    exit 0
fi
if ! command -v busybox >/dev/null; then
    echo "SKIP: pci lab: busybox-static is not installed"
    exit 0
fi
set +e
nice bash vmm/pci/lab/vf-in-kvm-under-qemu.sh > >(grep -E '^(kvm_amd|VF |\[[0-9]/5\]|      |vf_lab|VF-PCI-LAB)')
rc=$?
set -e
if [ "$rc" = 77 ]; then
    echo "SKIP: pci lab: Debian's 6.1 kernel package is not in the cache and cannot be downloaded"
    exit 0
fi
exit "$rc"
