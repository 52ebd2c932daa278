#!/usr/bin/env bash
# End to end, for the VMM once it is wired (README "Wiring into hpmmap-vmm"): hpmmap-vmm
# passes an igb VF to a Debian 6.1 L2 guest, inside a QEMU/TCG L1 with VT-d, igb SR-IOV
# and KVM on SVM+NPT. L2 prints what its PCI scan found, loads igbvf, brings the VF up,
# raises its MSI-X vectors (EICS through /dev/mem) and pings the PF; L1 checks the VF is
# back on igbvf after the VMM exits.
#   usage: vmm-vf-end-to-end.sh /path/to/static/hpmmap-vmm
#   VMM_VF_ARGS: how the VMM is told the VF (default "--vf VF"; VF is replaced)
# Needs the Debian kernel .deb in the shared cache, qemu >= 8.0, busybox-static, cpio.
set -euo pipefail
VMM_BIN=${1:?usage: $0 /path/to/static/hpmmap-vmm}
VMM_VF_ARGS=${VMM_VF_ARGS:-"--vf VF"}
CACHE="${HPMMAP_CACHE:-$HOME/.cache/hpmmap}/debs"
deb=$(ls "$CACHE"/linux-image-6.1.*-amd64_*_amd64.deb 2>/dev/null | grep -v dbg | sort -V | tail -1 || true)
[ -n "$deb" ] || { echo "SKIP: no Debian 6.1 kernel package in $CACHE"; exit 77; }
W=${PCI_E2E_WORK:-/tmp/hpmmap-pci-e2e}; K=$W/k
rm -rf "$W" && mkdir -p "$K" && dpkg-deb -x "$deb" "$K"
kver=$(ls "$K/lib/modules"); M=$K/lib/modules/$kver
mkdir -p $W/l1/{bin,mods,proc,sys,dev,tmp,lab} $W/l2/{bin,mods,proc,sys,dev}
cp /bin/busybox $W/l1/bin/; cp /bin/busybox $W/l2/bin/
cp "$VMM_BIN" $W/l1/bin/hpmmap-vmm
echo "$VMM_VF_ARGS" > $W/l1/lab/vf-args
MODS="dca i2c-algo-bit igb igbvf irqbypass vfio vfio_virqfd vfio_iommu_type1 vfio-pci-core vfio-pci ccp kvm kvm-amd"
for m in $MODS; do f=$(find $M -name "$m.ko*" | head -1); cp $f $W/l1/mods/$m.ko; done
cp $(find $M -name igbvf.ko) $W/l2/mods/
cp $K/boot/vmlinuz-$kver $W/l1/lab/bzImage
cat > $W/l2/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
echo "L2-UP"
for d in /sys/bus/pci/devices/*; do echo "L2-PCI $(basename $d) $(cat $d/vendor):$(cat $d/device) class $(cat $d/class) res $(head -1 $d/resource)"; done
dmesg | grep -iE "pci|conf1|mmconfig|BAR" | head -40
insmod /mods/igbvf.ko; echo "L2-INSMOD $?"
sleep 5
ip link set eth0 up; ip addr add 10.9.0.2/24 dev eth0
sleep 10
ip link show eth0
grep -iE "eth0|igbvf" /proc/interrupts | sed 's/^/L2-IRQ /'
echo "L2-CARRIER $(cat /sys/class/net/eth0/carrier) EIMS $(devmem 0x100001524 32)"
devmem 0x100001520 32 7; sleep 1
echo "L2-EICS-WRITTEN"
grep -iE "eth0|igbvf" /proc/interrupts | sed 's/^/L2-IRQ /'
ping -c 2 -W 3 10.9.0.1; echo "L2-PING $?"
grep -iE "eth0|igbvf" /proc/interrupts | sed 's/^/L2-IRQ /'
dmesg | grep -i igbvf | tail -20
echo "HPMMAP-JOB-EXIT 0"
devmem 0xfeb00034 32 0
sleep 5; reboot -f
INIT
chmod +x $W/l2/init
(cd $W/l2 && find . | cpio -o -H newc --quiet | gzip -1) > $W/l1/lab/l2.cpio.gz
cat > $W/l1/init <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp
for m in $MODS; do insmod /mods/\$m.ko || echo "insmod \$m failed"; done
ip link set eth0 up; ip addr add 10.9.0.1/24 dev eth0
PF=\$(basename \$(readlink /sys/class/net/eth0/device))
echo 2 > /sys/bus/pci/devices/\$PF/sriov_numvfs
VF1=\$(basename \$(readlink /sys/bus/pci/devices/\$PF/virtfn1)); sleep 3
echo "L1 PF carrier \$(cat /sys/class/net/eth0/carrier) \$(cat /sys/class/net/eth0/operstate)"
echo "L1 VF \$VF1 on \$(basename \$(readlink /sys/bus/pci/devices/\$VF1/driver))"
hpmmap-vmm \$(sed "s/VF/\$VF1/" /lab/vf-args) --mem 2G --hugepages none --kernel /lab/bzImage --initrd /lab/l2.cpio.gz --cmdline "console=ttyS0 iomem=relaxed" --report /tmp/r.json
echo "L1-VMM-EXIT \$?"
grep -E "eth0|vfio" /proc/interrupts | sed "s/^/L1-IRQ /"
sleep 8; dmesg | grep -i igbvf | sed "s/^/L1-DMESG /"
ip link set eth1 up 2>/dev/null; sleep 5; cat /sys/class/net/*/carrier | tr "\\n" " " | sed "s/^/L1-CARRIERS /"; echo
echo "L1 VF \$VF1 after: \$(basename \$(readlink /sys/bus/pci/devices/\$VF1/driver))"
cat /tmp/r.json | tr ',' '\n' | grep -E "exit_|unhandled"
poweroff -f
INIT
chmod +x $W/l1/init
(cd $W/l1 && find . | cpio -o -H newc --quiet | gzip -1) > $W/l1.cpio.gz
timeout 1500 nice qemu-system-x86_64 -nodefaults -display none -serial stdio -no-reboot \
    -accel tcg -cpu max -m 5G -smp 2 \
    -machine q35,kernel-irqchip=split \
    -device intel-iommu,intremap=on,caching-mode=on \
    -device pcie-root-port,id=rp0,slot=1,chassis=1 \
    -netdev user,id=n0 -device igb,netdev=n0,bus=rp0 \
    -kernel $K/boot/vmlinuz-$kver -initrd $W/l1.cpio.gz \
    -append "console=ttyS0 intel_iommu=on panic=-1 quiet" | tee $W/console.log
