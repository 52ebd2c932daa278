# shellcheck shell=dash
# The VF end-to-end run inside the nested lab's L1 (`hpmmap-lab run --append iomem=relaxed
# --kernel-at /lab/bzImage`, started by vmm-vf-end-to-end.sh): packs L2's initramfs from
# L1's own busybox and igbvf.ko with vf-e2e-l2.sh as its init, enables two VFs on the igb
# PF and passes one to L2 under hpmmap-vmm (through the lab's retry policy, pinned to one
# L1 CPU). Prints L1-* lines and, through the VMM, L2's L2-* lines.
#   sh vf-e2e-l1.sh "VMM VF ARGS"   (VF in them is replaced by the VF's address)
# shellcheck source=tests/lab/retry.sh
. /root/retry.sh
vf_args=${1:?usage: vf-e2e-l1.sh 'VMM VF ARGS'}
mkdir -p /tmp/l2/bin /tmp/l2/mods /tmp/l2/proc /tmp/l2/sys /tmp/l2/dev /tmp/l2/tmp
cp /bin/busybox /tmp/l2/bin/busybox
cp /root/vf-e2e-l2.sh /tmp/l2/init && chmod +x /tmp/l2/init
igbvf=$(find "/lib/modules/$(uname -r)" -name igbvf.ko | head -1)
cp "$igbvf" /tmp/l2/mods/
(cd /tmp/l2 && find . | cpio -o -H newc 2>/dev/null | gzip -1) > /tmp/l2.cpio.gz

# igbvf goes in only after the VFs exist and the PF's link is back: Debian's 6.1 igb calls
# pci_enable_sriov() before it re-initialises the PF for SR-IOV (dmesg: the VFs probe before
# "2 VFs allocated"), so a VF probed during `sriov_numvfs` finds reset in progress and gets
# no MAC from the PF. The lab loaded it at boot; take it out for now.
rmmod igbvf
pf=
for n in /sys/class/net/*; do
    d=$(readlink "$n/device/driver" 2>/dev/null)
    [ "${d##*/}" = igb ] && { pf=${n##*/}; break; }
done
ip link set "$pf" up; ip addr add 10.99.0.1/24 dev "$pf"
PF=$(basename "$(readlink "/sys/class/net/$pf/device")")
echo 2 > "/sys/bus/pci/devices/$PF/sriov_numvfs"
# Re-initialising the PF for SR-IOV takes its link down; wait until it is back.
for _ in $(seq 1 30); do [ "$(cat "/sys/class/net/$pf/carrier")" = 1 ] && break; sleep 1; done
sleep 1
insmod "$igbvf"
VF1=$(basename "$(readlink "/sys/bus/pci/devices/$PF/virtfn1")"); sleep 3
PFB=$(head -1 "/sys/bus/pci/devices/$PF/resource" | cut -d' ' -f1)
r() { printf "%s=%s " "$1" "$(devmem "$(printf 0x%x $((PFB + $2)))" 32)"; }
pfregs() { echo "L1-PFREGS $1: $(r CTRL_EXT 0x18; r EIMS 0x1524; r MBVFICR 0xC80; r VFLRE 0xC88; r VFRE 0xC8C; r VFTE 0xC90; r P2V1 0xC04; r DTXSWC 0x3500; r MRQC 0x5818)"; grep -E "$pf" /proc/interrupts | sed "s/^/L1-IRQ $1 /"; }
pfregs before-vmm
echo "L1 PF $PF carrier $(cat "/sys/class/net/$pf/carrier") $(cat "/sys/class/net/$pf/operstate")"
echo "L1 VF $VF1 on $(basename "$(readlink "/sys/bus/pci/devices/$VF1/driver")")"
dmesg | grep -E "igbvf $VF1" | sed "s/^/L1-DMESG /"
VFB=$(head -1 "/sys/bus/pci/devices/$VF1/resource" | cut -d' ' -f1)
echo "L1-VF-BAR0 $VFB STATUS $(devmem "$(printf 0x%x $((VFB + 8)))" 32)"
# L2 boots Debian with one vCPU and waits up to 30 s for its link: 400 s is room enough.
VMM_LIMIT=${VMM_LIMIT:-400}
# shellcheck disable=SC2046 # the VMM's VF arguments are words
vmm_retrying $(echo "$vf_args" | sed "s/VF/$VF1/") --vcpus 1 --mem 1G \
    --hugepages none --kernel /lab/bzImage --initrd /tmp/l2.cpio.gz \
    --cmdline "console=ttyS0 iomem=relaxed" --report /tmp/r.json
vmm_rc=$?
echo "L1-VMM-EXIT $vmm_rc"
sleep 2
pfregs after-vmm
echo "L1-VF-AFTER $VF1 $(basename "$(readlink "/sys/bus/pci/devices/$VF1/driver")")"
grep -E "$pf" /proc/interrupts | sed "s/^/L1-IRQ /"
dmesg | grep -E "igb " | tail -5 | sed "s/^/L1-DMESG /"
tr ',' '\n' < /tmp/r.json | grep -E "exit_|unhandled"
exit "$vmm_rc"
