#!/usr/bin/env bash
# Real check of hpmmap-pci with a real VF: Debian's 6.1 kernel under QEMU/TCG with an
# emulated VT-d IOMMU, an igb SR-IOV NIC and KVM on TCG's SVM+NPT (kvm_amd). Inside,
# `vf_lab --vf VF` (examples/vf_lab.rs) claims an igbvf VF, opens VFIO, DMA-maps a KVM
# guest's RAM, and runs a tiny nested guest that reaches the VF through the PCI root bus:
# conf1 cycles, BAR0 through a KVM memory slot onto the VF's mmapped BAR, MSI-X through
# the trapped table, VFIO eventfd -> KVM irqfd -> GSI route -> LAPIC. Emulated hardware:
# proves behaviour, not speed. Not part of scripts/test.sh (minutes of TCG).
# Needs: qemu-system-x86_64 >= 8.0 (igb), busybox-static, cpio, the kernel .deb in the
# shared package cache. Output: the console; the last line is VF-PCI-LAB-RESULT pass|fail.
set -euo pipefail
cd "$(dirname "$0")/../../.."
. scripts/lib/qemu-boot.sh
. scripts/lib/debian-kernel.sh
WORK="${PCI_LAB_WORK:-/tmp/hpmmap-pci-lab}"
TARGET="${CARGO_TARGET_DIR:-target}"
log() { echo "[pci-lab] $*" >&2; }

deb=$(debian_kernel_deb) || exit 77
rm -rf "$WORK" && mkdir -p "$WORK/k" "$WORK/root"/{bin,mods,proc,sys,dev,tmp}
dpkg-deb -x "$deb" "$WORK/k"
kver=$(ls "$WORK/k/lib/modules")
log "kernel $kver"

log "building vf_lab (static)"
RUSTFLAGS='-C target-feature=+crt-static' cargo build -q -p hpmmap-pci --example vf_lab --target x86_64-unknown-linux-gnu
cp "$TARGET/x86_64-unknown-linux-gnu/debug/examples/vf_lab" "$WORK/root/bin/"
cp "$(command -v busybox)" "$WORK/root/bin/busybox"
MODS="dca i2c-algo-bit igb igbvf irqbypass vfio vfio_virqfd vfio_iommu_type1 vfio-pci-core vfio-pci kvm ccp kvm-amd"
for m in $MODS; do
    f=$(find "$WORK/k/lib/modules/$kver" -name "$m.ko*" | head -1)
    [ -n "$f" ] || { log "module $m not in the package"; exit 1; }
    case "$f" in *.xz) xz -dc "$f" > "$WORK/root/mods/$m.ko" ;; *) cp "$f" "$WORK/root/mods/$m.ko" ;; esac
done

cat > "$WORK/root/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs dev /dev
for m in $MODS; do insmod /mods/\$m.ko || echo "insmod \$m failed"; done
echo "kvm_amd npt=\$(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null || echo absent), /dev/kvm: \$(ls /dev/kvm 2>&1)"
# igb routes VF MSI-X only with the PF up.
ip link set eth0 up
PF=\$(basename \$(readlink /sys/class/net/eth0/device))
echo 2 > /sys/bus/pci/devices/\$PF/sriov_numvfs
VF1=\$(basename \$(readlink /sys/bus/pci/devices/\$PF/virtfn1))
sleep 1
echo "VF \$VF1 on \$(basename \$(readlink /sys/bus/pci/devices/\$VF1/driver))"
vf_lab --vf \$VF1; rc=\$?
echo "vf_lab exit \$rc; VF \$VF1 on \$(basename \$(readlink /sys/bus/pci/devices/\$VF1/driver))"
echo; echo "VF-PCI-LAB-RESULT \$( [ \$rc = 0 ] && echo pass || echo fail )"
poweroff -f
INIT
chmod +x "$WORK/root/init"
(cd "$WORK/root" && find . | cpio -o -H newc --quiet | gzip -1) > "$WORK/initramfs.cpio.gz"

log "booting under QEMU/TCG with intel-iommu, igb and SVM+NPT (a few minutes)"
qemu_boot "$WORK/console.log" 900 -nodefaults -display none -serial stdio -no-reboot \
    -accel tcg -cpu max -m 2560M -smp 1 \
    -machine q35,kernel-irqchip=split \
    -device intel-iommu,intremap=on,caching-mode=on \
    -device pcie-root-port,id=rp0,slot=1,chassis=1 \
    -netdev user,id=n0 -device igb,netdev=n0,bus=rp0 \
    -kernel "$WORK/k/boot/vmlinuz-$kver" -initrd "$WORK/initramfs.cpio.gz" \
    -append "console=ttyS0 intel_iommu=on panic=-1 quiet"
grep -q '^VF-PCI-LAB-RESULT pass' "$WORK/console.log"
