#!/usr/bin/env bash
# hpmmap-vf on real VFIO: Debian's 6.1 kernel under QEMU/TCG with an emulated VT-d IOMMU
# and an igb SR-IOV NIC; `hpmmap-vf-probe` (hpmmap-pci) binds a VF to vfio-pci, opens the VFIO
# container/group/device, DMA-maps 1.5 GiB in 1 GiB chunks, maps BARs, wires MSI-X,
# and rebinds the original driver. About 30 s on 2 cores once built.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/lib/tier.sh
. scripts/lib/tier.sh
# shellcheck source=scripts/lib/lab-check.sh
. scripts/lib/lab-check.sh
if why=$(lab_unavailable); then
    tier_skip lab vf-lab "$why"
    exit $?
fi
set +e
nice bash vmm/vf/lab/vfio-under-qemu.sh > >(grep -E '^(###|\[[0-9]/6\]|\[( ok |warn|FAIL)\]|      |hpmmap-vf|probe passed|exit|VF-LAB-RESULT)')
rc=$?
set -e
if [ "$rc" = 77 ]; then
    tier_skip lab vf-lab "Debian's 6.1 kernel package is not in the cache and cannot be downloaded"
    exit $?
fi
[ "$rc" = 0 ] && tier_ran lab vf-lab
exit "$rc"
