#!/usr/bin/env bash
# hpmmap-pci with a real VF and real KVM: Debian's 6.1 kernel under QEMU/TCG with an
# emulated VT-d IOMMU, an igb SR-IOV NIC and KVM on TCG's SVM+NPT; a nested guest reaches
# an igbvf VF through the PCI root bus (conf1, BAR0 in a KVM slot, MSI-X via irqfd).
# About 1 minute of TCG once built (vmm/pci/lab/vf-in-kvm-under-qemu.sh).
# Then end to end through the VMM (vmm/pci/lab/vmm-vf-end-to-end.sh, one L1 run of the
# lab with the workspace's debug hpmmap-vmm, about 1 minute of TCG on this host):
# `hpmmap-vmm --vf` boots Debian as L2,
# igbvf binds the VF, its MSI-X vectors count, L2 pings L1's PF with 0% loss, and the VF
# is back on igbvf after the VMM exits.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/lib/tier.sh
. scripts/lib/tier.sh
# shellcheck source=scripts/lib/lab-check.sh
. scripts/lib/lab-check.sh
if why=$(lab_unavailable); then
    tier_skip lab pci-lab "$why"
    exit $?
fi
set +e
nice bash vmm/pci/lab/vf-in-kvm-under-qemu.sh > >(grep -E '^(kvm_amd|VF |\[[0-9]/5\]|      |vf_lab|VF-PCI-LAB)')
rc=$?
set -e
if [ "$rc" = 77 ]; then
    tier_skip lab pci-lab "Debian's 6.1 kernel package is not in the cache and cannot be downloaded"
    exit $?
fi
[ "$rc" = 0 ] || exit "$rc"
tier_ran lab pci-lab
set +e
nice bash vmm/pci/lab/vmm-vf-end-to-end.sh > >(grep -E '^(L1 |L1-VF|L1-VMM-EXIT|L2-IGBVF|L2-MSIX|L2-PING|L2-CHECKS|\[ ok \]|\[FAIL\]|VMM-VF-E2E-RESULT|SKIP|\[vmm-vf-e2e\])')
rc=$?
set -e
if [ "$rc" = 77 ]; then
    tier_skip lab pci-e2e-lab "Debian's 6.1 kernel package is not in the cache"
    exit $?
fi
[ "$rc" = 0 ] && tier_ran lab pci-e2e-lab
exit "$rc"
