# shellcheck shell=dash
# hpmmap-vf and hpmmap-pci's hpmmap-vf-probe on real VFIO, run inside the nested lab's L1
# (`hpmmap-lab run`, which boots Debian's 6.1 kernel under QEMU/TCG with an emulated VT-d
# IOMMU and an igb SR-IOV NIC and loads igb, igbvf and vfio-pci). Started by vfio-under-qemu.sh. The last line is
# VF-LAB-RESULT pass|fail; the sysfs recording comes back between BEGIN-/END-RECORDING.
fail=0
step() { echo; echo "### $*"; }
# The PF up, as on a host: igb switches the device to MSI-X mode (GPIE) when it opens
# the interface, and VF interrupts only flow in that mode.
for n in /sys/class/net/*; do
    [ "$(basename "$(readlink "$n/device/driver" 2>/dev/null)" 2>/dev/null)" = igb ] && pfdev=${n##*/}
done
ip link set "$pfdev" up
PF=$(basename "$(readlink "/sys/class/net/$pfdev/device")")
PFD=/sys/bus/pci/devices/$PF
step "PF $PF ($pfdev): sriov_totalvfs $(cat "$PFD/sriov_totalvfs"), numvfs $(cat "$PFD/sriov_numvfs"), iommu groups $(find /sys/kernel/iommu_groups -mindepth 1 -maxdepth 1 | wc -l)"
step "selftest (no VFs yet: expect the free-VF check to fail)"
hpmmap-vf selftest --vf "$pfdev" --mem 64M; echo "exit $?"
step "hpmmap-vf-probe --vf $pfdev --vf-create 2: creates VFs, takes one, restores, disables VFs"
hpmmap-vf-probe --vf "$pfdev" --vf-create 2 --mem 1536M || fail=1
echo "numvfs after: $(cat "$PFD/sriov_numvfs")"; [ "$(cat "$PFD/sriov_numvfs")" = 0 ] || fail=1
step "VFs enabled by hand; igbvf autoprobes them"
echo 2 > "$PFD/sriov_numvfs"
VF1=$(basename "$(readlink "$PFD/virtfn1")")
for v in "$PFD"/virtfn*; do echo "$(basename "$(readlink "$v")") on $(basename "$(readlink "$v/driver" 2>/dev/null)" 2>/dev/null)"; done
hpmmap-vf selftest --vf "$PF" --mem 64M; echo "exit $?"
hpmmap-vf resolve --vf "$PF"
step "hpmmap-vf-probe --vf $VF1 (a VF by address, on igbvf)"
hpmmap-vf-probe --vf "$VF1" --mem 64M --irq-test || fail=1
d=$(basename "$(readlink "/sys/bus/pci/devices/$VF1/driver")"); echo "$VF1 on $d"; [ "$d" = igbvf ] || fail=1
step "SIGTERM while VFIO is live: teardown through restore_all()"
hpmmap-vf-probe --vf "$VF1" --mem 64M --hold 120 > /tmp/hold.out 2>&1 &
pid=$!
for _ in $(seq 300); do grep -qs holding /tmp/hold.out && break; sleep 0.2; done
kill -TERM $pid; wait $pid; rc=$?; cat /tmp/hold.out; echo "exit $rc (expect 143)"; [ $rc = 143 ] || fail=1
d=$(basename "$(readlink "/sys/bus/pci/devices/$VF1/driver")"); echo "$VF1 on $d"; [ "$d" = igbvf ] || fail=1
step "bad input: a device without SR-IOV; a VF held by another VFIO user"
hpmmap-vf-probe --vf 0000:00:1f.0; echo "exit $? (expect 2)"
echo vfio-pci > "/sys/bus/pci/devices/$VF1/driver_override"
echo "$VF1" > /sys/bus/pci/drivers/igbvf/unbind; echo "$VF1" > /sys/bus/pci/drivers_probe
G=$(basename "$(readlink "/sys/bus/pci/devices/$VF1/iommu_group")")
# A process holding the VFIO group open, as another VMM would.
# shellcheck disable=SC2217 # the open descriptor is the point, not the input
sleep 1000 < "/dev/vfio/$G" &
holder=$!
sleep 1
hpmmap-vf-probe --vf "$VF1"; rc=$?; echo "exit $rc (expect 2)"; [ $rc = 2 ] || fail=1
step "recording this sysfs (VF $VF1 held on vfio-pci) for the test fixtures"
hpmmap-vf record --vf "$pfdev" --out /rec && echo BEGIN-RECORDING && tar czf - -C /rec . | base64 && echo END-RECORDING
kill $holder
echo; echo "VF-LAB-RESULT $( [ $fail = 0 ] && echo pass || echo fail )"
[ $fail = 0 ]
