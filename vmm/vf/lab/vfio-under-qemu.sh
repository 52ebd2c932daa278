#!/usr/bin/env bash
# Runs `hpmmap-vf probe` for real: Debian's 6.1 kernel under QEMU/TCG with an emulated
# VT-d IOMMU and an igb SR-IOV NIC. A stand-alone check of the binding and VFIO code
# until the nested lab (images/, hpmmap-lab) carries it; not part of scripts/test.sh
# (it takes minutes of TCG). Needs: qemu-system-x86_64 >= 8.0 (igb), busybox-static,
# cpio, the kernel .deb in the shared package cache (fetched with apt-get download if absent).
# Output: the guest's console; the last line is VF-LAB-RESULT pass|fail.
set -euo pipefail
cd "$(dirname "$0")/../../.."
. scripts/lib/qemu-boot.sh
. scripts/lib/debian-kernel.sh
WORK="${VF_LAB_WORK:-/tmp/hpmmap-vf-lab}"
TARGET="${CARGO_TARGET_DIR:-target}"
log() { echo "[vf-lab] $*" >&2; }

deb=$(debian_kernel_deb) || exit 77
rm -rf "$WORK" && mkdir -p "$WORK/k" "$WORK/root"/{bin,mods,proc,sys,dev,tmp}
dpkg-deb -x "$deb" "$WORK/k"
kver=$(ls "$WORK/k/lib/modules")
log "kernel $kver"

log "building hpmmap-vf (static)"
RUSTFLAGS='-C target-feature=+crt-static' cargo build -q -p hpmmap-vf --bin hpmmap-vf --target x86_64-unknown-linux-gnu
cp "$TARGET/x86_64-unknown-linux-gnu/debug/hpmmap-vf" "$WORK/root/bin/"
cp "$(command -v busybox)" "$WORK/root/bin/busybox"
MODS="dca i2c-algo-bit igb igbvf irqbypass vfio vfio_virqfd vfio_iommu_type1 vfio-pci-core vfio-pci"
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
fail=0
step() { echo; echo "### \$*"; }
# The PF up, as on a host: igb switches the device to MSI-X mode (GPIE) when it opens
# the interface, and VF interrupts only flow in that mode.
ip link set eth0 up
PF=\$(basename \$(readlink /sys/class/net/eth0/device))
PFD=/sys/bus/pci/devices/\$PF
step "PF \$PF: sriov_totalvfs \$(cat \$PFD/sriov_totalvfs), numvfs \$(cat \$PFD/sriov_numvfs), iommu groups \$(ls /sys/kernel/iommu_groups | wc -l)"
step "selftest (no VFs yet: expect the free-VF check to fail)"
hpmmap-vf selftest --vf eth0 --mem 64M; echo "exit \$?"
step "probe --vf eth0 --vf-create 2: creates VFs, takes one, restores, disables VFs"
hpmmap-vf probe --vf eth0 --vf-create 2 --mem 1536M || fail=1
echo "numvfs after: \$(cat \$PFD/sriov_numvfs)"; [ "\$(cat \$PFD/sriov_numvfs)" = 0 ] || fail=1
step "VFs enabled by hand; igbvf autoprobes them"
echo 2 > \$PFD/sriov_numvfs
VF1=\$(basename \$(readlink \$PFD/virtfn1))
for v in \$PFD/virtfn*; do echo "\$(basename \$(readlink \$v)) on \$(basename \$(readlink \$v/driver 2>/dev/null) 2>/dev/null)"; done
hpmmap-vf selftest --vf \$PF --mem 64M; echo "exit \$?"
hpmmap-vf resolve --vf \$PF
step "probe --vf \$VF1 (a VF by address, on igbvf)"
hpmmap-vf probe --vf \$VF1 --mem 64M --irq-test || fail=1
d=\$(basename \$(readlink /sys/bus/pci/devices/\$VF1/driver)); echo "\$VF1 on \$d"; [ "\$d" = igbvf ] || fail=1
step "SIGTERM while VFIO is live: teardown through restore_all()"
hpmmap-vf probe --vf \$VF1 --mem 64M --hold 120 > /tmp/hold.out 2>&1 &
pid=\$!
for i in \$(seq 300); do grep -qs holding /tmp/hold.out && break; sleep 0.2; done
kill -TERM \$pid; wait \$pid; rc=\$?; cat /tmp/hold.out; echo "exit \$rc (expect 143)"; [ \$rc = 143 ] || fail=1
d=\$(basename \$(readlink /sys/bus/pci/devices/\$VF1/driver)); echo "\$VF1 on \$d"; [ "\$d" = igbvf ] || fail=1
step "bad input: a device without SR-IOV; a VF held by another VFIO user"
hpmmap-vf probe --vf 0000:00:1f.0; echo "exit \$? (expect 2)"
echo vfio-pci > /sys/bus/pci/devices/\$VF1/driver_override
echo \$VF1 > /sys/bus/pci/drivers/igbvf/unbind; echo \$VF1 > /sys/bus/pci/drivers_probe
G=\$(basename \$(readlink /sys/bus/pci/devices/\$VF1/iommu_group))
sleep 1000 < /dev/vfio/\$G &
holder=\$!
sleep 1
hpmmap-vf probe --vf \$VF1; rc=\$?; echo "exit \$rc (expect 2)"; [ \$rc = 2 ] || fail=1
step "recording this sysfs (VF \$VF1 held on vfio-pci) for the test fixtures"
hpmmap-vf record --vf eth0 --out /rec && echo BEGIN-RECORDING && tar czf - -C /rec . | base64 && echo END-RECORDING
kill \$holder
echo; echo "VF-LAB-RESULT \$( [ \$fail = 0 ] && echo pass || echo fail )"
poweroff -f
INIT
chmod +x "$WORK/root/init"
(cd "$WORK/root" && find . | cpio -o -H newc --quiet | gzip -1) > "$WORK/initramfs.cpio.gz"

log "booting under QEMU/TCG with intel-iommu and igb (takes a minute or two)"
qemu_boot "$WORK/console.log" 600 -nodefaults -display none -serial stdio -no-reboot \
    -accel tcg -cpu max -m 2560M -smp 1 \
    -machine q35,kernel-irqchip=split \
    -device intel-iommu,intremap=on,caching-mode=on \
    -device pcie-root-port,id=rp0,slot=1,chassis=1 \
    -netdev user,id=n0 -device igb,netdev=n0,bus=rp0 \
    -kernel "$WORK/k/boot/vmlinuz-$kver" -initrd "$WORK/initramfs.cpio.gz" \
    -append "console=ttyS0 intel_iommu=on panic=-1 quiet"
sed -n '/^BEGIN-RECORDING/,/^END-RECORDING/p' "$WORK/console.log" | sed '1d;$d' | tr -d '\r' | base64 -d > "$WORK/recording.tar.gz" || true
[ -s "$WORK/recording.tar.gz" ] && log "sysfs recording: $WORK/recording.tar.gz"
grep -q '^VF-LAB-RESULT pass' "$WORK/console.log"
