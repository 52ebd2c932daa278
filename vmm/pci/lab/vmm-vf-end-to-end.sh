#!/usr/bin/env bash
# End to end through the VMM: `hpmmap-vmm --vf` passes an igb VF to a Debian 6.1 L2 guest,
# inside the nested lab's L1 (`hpmmap-lab run`: QEMU/TCG with VT-d, igb SR-IOV and KVM on
# SVM+NPT; L2 with one vCPU, the VMM pinned to one L1 CPU by the lab's retry policy).
# vf-e2e-l1.sh runs in L1, vf-e2e-l2.sh is L2's init. Asserts, exit 1 on any failure:
#   - igbvf binds the VF in L2 and the PF answers its mailbox (no "PF still in reset");
#   - the VF's MSI-X vectors in L2's /proc/interrupts count > 0 and grow during the ping;
#   - L2 (VF, 10.99.0.2) pings L1's PF (10.99.0.1) with 0% loss (the emulated igb switches
#     VF <-> PF traffic internally);
#   - hpmmap-vmm exits 0 (the job's status) and the VF is back on igbvf in L1.
# Emulated hardware: proves behaviour, not speed.
#   usage: vmm-vf-end-to-end.sh [/path/to/hpmmap-vmm]   (the workspace's debug build when omitted)
#   VMM_VF_ARGS: how the VMM is told the VF (default "--vf VF"; VF is replaced)
# Exit 77 where the lab cannot run (no Debian kernel package). The last line is
# VMM-VF-E2E-RESULT pass|fail.
set -euo pipefail
cd "$(dirname "$0")/../../.."
# shellcheck source=scripts/lib/debian-kernel.sh
. scripts/lib/debian-kernel.sh
VMM_VF_ARGS=${VMM_VF_ARGS:-"--vf VF"}
TARGET="${CARGO_TARGET_DIR:-target}"
W=${PCI_E2E_WORK:-/tmp/hpmmap-pci-e2e}
log() { echo "[vmm-vf-e2e] $*" >&2; }

debian_kernel_abi >/dev/null || { echo "SKIP: no Debian 6.1 kernel package"; exit 77; }
log "building hpmmap-vmm and hpmmap-lab"
cargo build -q -p hpmmap-vmm --bin hpmmap-vmm -p hpmmap-image --bin hpmmap-lab
vmm=$(realpath "${1:-$TARGET/debug/hpmmap-vmm}")
rm -rf "$W" && mkdir -p "$W/bins"
# L1 carries this hpmmap-vmm only (no hpmmap-offline): a smaller initramfs boots sooner.
ln -s "$vmm" "$W/bins/hpmmap-vmm"

# L1 RAM stays below q35's 2.75 GiB split: with RAM above 4 GiB (-m 3G or more) L1 places
# the VF BARs in the 64-bit window (0xc000004000 here), where reads of the VF's registers
# return 0 and writes are lost; igbvf's mailbox reset then times out ("PF still in reset
# state"), natively in L1 as in L2. With 2560M they sit at 0xfea0xxxx and answer.
# iomem=relaxed: L1 reads the PF's and VF's registers with devmem.
log "booting L1 (VT-d, igb, SVM+NPT); L2 under hpmmap-vmm (a few minutes)"
C=$W/output.log
rc=0
"$TARGET/debug/hpmmap-lab" run --mem 2560M --cpus 2 --hugepages 0 --timeout 900 --boots 3 \
    --bins "$W/bins" --work "$W/lab" --append iomem=relaxed --kernel-at /lab/bzImage \
    --add tests/lab/retry.sh:/root/retry.sh --add vmm/pci/lab/vf-e2e-l1.sh:/root/vf-e2e-l1.sh \
    --add vmm/pci/lab/vf-e2e-l2.sh:/root/vf-e2e-l2.sh \
    -- sh /root/vf-e2e-l1.sh "$VMM_VF_ARGS" >"$C" || rc=$?
cat "$C"
[ "$rc" = 0 ] || log "hpmmap-lab exit status $rc; L1's console in $W/lab/console.log"

fail=0
check() { # description, command...
    local what=$1; shift
    if "$@"; then echo "[ ok ] $what"; else echo "[FAIL] $what"; fail=1; fi
}
vf_l1=$(sed -n 's/^L1 VF \([0-9a-f:.]*\) on .*/\1/p' "$C" | head -1)
read -r irq_before irq_after < <(sed -n 's/^L2-MSIX-COUNTS before-ping \([0-9]*\) after-ping \([0-9]*\).*/\1 \2/p' "$C" | head -1) || true
check "L1: VF ${vf_l1:-?} on igbvf before the VMM" grep -q "^L1 VF $vf_l1 on igbvf" "$C"
check "L1: the VF's registers answer (STATUS through BAR0 != 0)" \
    bash -c "grep -q '^L1-VF-BAR0 .* STATUS 0x' '$C' && ! grep -q '^L1-VF-BAR0 .* STATUS 0x00000000' '$C'"
check "L2: igbvf bound the VF (00:01.0)" grep -q '^L2-IGBVF-BOUND 0000:00:01.0' "$C"
check "L2: the PF answered the VF's mailbox reset (no 'PF still in reset')" \
    bash -c "grep -q '^L2-DMESG.*Intel(R) 82576 Virtual Function' '$C' && ! grep -q '^L2-DMESG.*PF still' '$C'"
check "L2: the VF's MSI-X counts > 0 and grow during the ping (${irq_before:-?} -> ${irq_after:-?})" \
    test "${irq_before:-0}" -gt 0 -a "${irq_after:-0}" -gt "${irq_before:-0}"
check "L2: ping 10.99.0.1 (L1's PF) with 0% loss" grep -q '^L2-PING-RC 0 LOSS 0%' "$C"
check "L1: hpmmap-vmm exited 0 (the job's status)" grep -q '^L1-VMM-EXIT 0$' "$C"
check "L1: VF back on igbvf after the VMM exited" grep -q "^L1-VF-AFTER $vf_l1 igbvf$" "$C"
echo "VMM-VF-E2E-RESULT $([ $fail = 0 ] && echo pass || echo fail)"
exit $fail
