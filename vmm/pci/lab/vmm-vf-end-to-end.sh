#!/usr/bin/env bash
# End to end through the VMM: `hpmmap-vmm --vf` passes an igb VF to a Debian 6.1 L2 guest,
# inside a QEMU/TCG L1 with VT-d, igb SR-IOV and KVM on SVM+NPT (one L1 boot, L2 with one
# vCPU). Asserts, exit 1 on any failure:
#   - igbvf binds the VF in L2 and the PF answers its mailbox (no "PF still in reset");
#   - the VF's MSI-X vectors in L2's /proc/interrupts count > 0 and grow during the ping;
#   - L2 (VF, 10.99.0.2) pings L1's PF (10.99.0.1) with 0% loss (the emulated igb switches
#     VF <-> PF traffic internally);
#   - hpmmap-vmm exits 0 (the job's status) and the VF is back on igbvf in L1.
# Emulated hardware: proves behaviour, not speed.
#   usage: vmm-vf-end-to-end.sh [/path/to/static/hpmmap-vmm]   (built here when omitted)
#   VMM_VF_ARGS: how the VMM is told the VF (default "--vf VF"; VF is replaced)
# Needs the Debian kernel .deb in the shared cache (exit 77 otherwise), qemu >= 8.0,
# busybox-static, cpio. The last line is VMM-VF-E2E-RESULT pass|fail.
set -euo pipefail
cd "$(dirname "$0")/../../.."
. scripts/lib/qemu-boot.sh
. scripts/lib/debian-kernel.sh
VMM_VF_ARGS=${VMM_VF_ARGS:-"--vf VF"}
TARGET="${CARGO_TARGET_DIR:-target}"
W=${PCI_E2E_WORK:-/tmp/hpmmap-pci-e2e}; K=$W/k
log() { echo "[vmm-vf-e2e] $*" >&2; }

deb=$(debian_kernel_deb) || { echo "SKIP: no Debian 6.1 kernel package"; exit 77; }
VMM_BIN=${1:-}
if [ -z "$VMM_BIN" ]; then
    log "building hpmmap-vmm (static, release)"
    RUSTFLAGS='-C target-feature=+crt-static' cargo build -q --release -p hpmmap-vmm \
        --target x86_64-unknown-linux-gnu
    VMM_BIN=$TARGET/x86_64-unknown-linux-gnu/release/hpmmap-vmm
fi
rm -rf "$W" && mkdir -p "$K" && dpkg-deb -x "$deb" "$K"
kver=$(ls "$K/lib/modules"); M=$K/lib/modules/$kver
mkdir -p "$W"/l1/{bin,mods,proc,sys,dev,tmp,lab} "$W"/l2/{bin,mods,proc,sys,dev,tmp}
BB=$(command -v busybox)
cp "$BB" "$W/l1/bin/busybox"; cp "$BB" "$W/l2/bin/busybox"
cp "$VMM_BIN" "$W/l1/bin/hpmmap-vmm"
echo "$VMM_VF_ARGS" > "$W/l1/lab/vf-args"
MODS="dca i2c-algo-bit igb igbvf irqbypass vfio vfio_virqfd vfio_iommu_type1 vfio-pci-core vfio-pci ccp kvm kvm-amd"
for m in $MODS; do
    f=$(find "$M" -name "$m.ko*" | head -1)
    [ -n "$f" ] || { log "module $m not in the package"; exit 1; }
    cp "$f" "$W/l1/mods/$m.ko"
done
cp "$(find "$M" -name igbvf.ko | head -1)" "$W/l2/mods/"
cp "$K/boot/vmlinuz-$kver" "$W/l1/lab/bzImage"

# L2: the job. Its exit status (PV EXIT) is 0 only when its own checks passed; the
# markers are asserted again on the host.
cat > "$W/l2/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
# Sum of the VF's MSI-X counts over all CPUs (igbvf names them eth0-rx-0, eth0-tx-0, eth0).
vf_irqs() { awk '/eth0/ { for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i } END { print s + 0 }' /proc/interrupts; }
echo "L2-UP"
insmod /mods/igbvf.ko
ok=1
if [ -e /sys/bus/pci/drivers/igbvf/0000:00:01.0 ]; then echo "L2-IGBVF-BOUND 0000:00:01.0"; else echo "L2-IGBVF-NOT-BOUND"; ok=0; fi
ip link set eth0 up && ip addr add 10.99.0.2/24 dev eth0
for i in $(seq 1 30); do [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" = 1 ] && break; sleep 1; done
echo "L2-CARRIER $(cat /sys/class/net/eth0/carrier 2>/dev/null)"
grep -E "CPU|eth0" /proc/interrupts | sed 's/^/L2-IRQ /'
before=$(vf_irqs)
ping -c 3 -W 5 10.99.0.1 > /tmp/ping.out 2>&1; prc=$?
sed 's/^/L2-PING /' /tmp/ping.out
loss=$(sed -n 's/.* \([0-9]*\)% packet loss.*/\1/p' /tmp/ping.out)
echo "L2-PING-RC $prc LOSS ${loss:-none}%"
[ "$prc" = 0 ] && [ "$loss" = 0 ] || ok=0
after=$(vf_irqs)
grep -E "CPU|eth0" /proc/interrupts | sed 's/^/L2-IRQ /'
echo "L2-MSIX-COUNTS before-ping $before after-ping $after"
[ "$before" -gt 0 ] && [ "$after" -gt "$before" ] || ok=0
dmesg | grep -i igbvf | sed 's/^/L2-DMESG /'
# Diagnostics through BAR0 (0x100000000, firmware placement): mailbox, EICS -> MSI-X.
if [ $ok = 0 ]; then
    echo "L2-DIAG config: $(hexdump -n 64 -e '16/4 "%08x " "\n"' /sys/bus/pci/devices/0000:00:01.0/config | tr '\n' ' ')"
    echo "L2-DIAG V2PMAILBOX $(devmem 0x100000c40 32) STATUS $(devmem 0x100000008 32) EIMS $(devmem 0x100001524 32)"
    devmem 0x100001520 32 7; sleep 1
    grep -E "eth0" /proc/interrupts | sed 's/^/L2-DIAG-IRQ after EICS /'
fi
echo "L2-CHECKS $([ $ok = 1 ] && echo pass || echo fail)"
echo "HPMMAP-JOB-EXIT $((1 - ok))"
devmem 0xfeb00034 32 $((1 - ok))
sleep 5; reboot -f
INIT
chmod +x "$W/l2/init"
(cd "$W/l2" && find . | cpio -o -H newc --quiet | gzip -1) > "$W/l1/lab/l2.cpio.gz"

# L1: igbvf is loaded only after the VFs exist and the PF's link is back. Debian's 6.1 igb
# calls pci_enable_sriov() before it re-initialises the PF for SR-IOV (dmesg: the VFs
# probe before "2 VFs allocated"), so a VF probed during `sriov_numvfs` finds reset in
# progress and gets no MAC from the PF.
cat > "$W/l1/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp
for m in $MODS; do [ \$m = igbvf ] || insmod /mods/\$m.ko || echo "insmod \$m failed"; done
ip link set eth0 up; ip addr add 10.99.0.1/24 dev eth0
PF=\$(basename \$(readlink /sys/class/net/eth0/device))
echo 2 > /sys/bus/pci/devices/\$PF/sriov_numvfs
# Re-initialising the PF for SR-IOV takes its link down; wait until it is back.
for i in \$(seq 1 30); do [ "\$(cat /sys/class/net/eth0/carrier)" = 1 ] && break; sleep 1; done
sleep 1
insmod /mods/igbvf.ko
VF1=\$(basename \$(readlink /sys/bus/pci/devices/\$PF/virtfn1)); sleep 3
PFB=\$(head -1 /sys/bus/pci/devices/\$PF/resource | cut -d' ' -f1)
r() { printf "%s=%s " \$1 \$(devmem \$(printf 0x%x \$((PFB + \$2))) 32); }
pfregs() { echo "L1-PFREGS \$1: \$(r CTRL_EXT 0x18; r EIMS 0x1524; r MBVFICR 0xC80; r VFLRE 0xC88; r VFRE 0xC8C; r VFTE 0xC90; r P2V1 0xC04; r DTXSWC 0x3500; r MRQC 0x5818)"; grep -E "eth0" /proc/interrupts | sed "s/^/L1-IRQ \$1 /"; }
pfregs before-vmm
echo "L1 PF \$PF carrier \$(cat /sys/class/net/eth0/carrier) \$(cat /sys/class/net/eth0/operstate)"
echo "L1 VF \$VF1 on \$(basename \$(readlink /sys/bus/pci/devices/\$VF1/driver))"
dmesg | grep -E "igbvf \$VF1" | sed "s/^/L1-DMESG /"
VFB=\$(head -1 /sys/bus/pci/devices/\$VF1/resource | cut -d' ' -f1)
echo "L1-VF-BAR0 \$VFB STATUS \$(devmem \$(printf 0x%x \$((VFB + 8))) 32)"
hpmmap-vmm \$(sed "s/VF/\$VF1/" /lab/vf-args) --vcpus 1 --mem 1G --hugepages none --kernel /lab/bzImage --initrd /lab/l2.cpio.gz --cmdline "console=ttyS0 iomem=relaxed" --report /tmp/r.json
echo "L1-VMM-EXIT \$?"
sleep 2
pfregs after-vmm
echo "L1-VF-AFTER \$VF1 \$(basename \$(readlink /sys/bus/pci/devices/\$VF1/driver))"
grep -E "eth0" /proc/interrupts | sed "s/^/L1-IRQ /"
dmesg | grep -E "igb " | tail -5 | sed "s/^/L1-DMESG /"
tr ',' '\n' < /tmp/r.json | grep -E "exit_|unhandled"
poweroff -f
INIT
chmod +x "$W/l1/init"
(cd "$W/l1" && find . | cpio -o -H newc --quiet | gzip -1) > "$W/l1.cpio.gz"

# L1 RAM stays below q35's 2.75 GiB split: with RAM above 4 GiB (-m 3G or more) L1 places
# the VF BARs in the 64-bit window (0xc000004000 here), where reads of the VF's registers
# return 0 and writes are lost; igbvf's mailbox reset then times out ("PF still in reset
# state"), natively in L1 as in L2. With 2560M they sit at 0xfea0xxxx and answer.
log "booting L1 under QEMU/TCG (VT-d, igb, SVM+NPT); L2 under hpmmap-vmm (a few minutes)"
qemu_boot "$W/console.log" 900 -nodefaults -display none -serial stdio -no-reboot \
    -accel tcg -cpu max -m 2560M -smp 2 \
    -machine q35,kernel-irqchip=split \
    -device intel-iommu,intremap=on,caching-mode=on \
    -device pcie-root-port,id=rp0,slot=1,chassis=1 \
    -netdev user,id=n0 -device igb,netdev=n0,bus=rp0 \
    -kernel "$K/boot/vmlinuz-$kver" -initrd "$W/l1.cpio.gz" \
    -append "console=ttyS0 intel_iommu=on panic=-1 quiet iomem=relaxed" || true

C=$W/console.log
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
