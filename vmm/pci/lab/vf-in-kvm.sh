# shellcheck shell=dash
# Inside the nested lab's L1 (`hpmmap-lab run`: Debian's 6.1 kernel under QEMU/TCG with VT-d,
# an igb SR-IOV NIC and KVM on TCG's SVM+NPT): `vf_lab --vf VF` claims an igbvf VF, opens
# VFIO, DMA-maps a KVM guest's RAM and runs a tiny nested guest that reaches the VF through
# the PCI root bus. Started by vf-in-kvm-under-qemu.sh; the last line is VF-PCI-LAB-RESULT.
echo "kvm_amd npt=$(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null || echo absent), /dev/kvm: $(ls /dev/kvm 2>&1)"
for n in /sys/class/net/*; do
    [ "$(basename "$(readlink "$n/device/driver" 2>/dev/null)" 2>/dev/null)" = igb ] && pfdev=${n##*/}
done
# igb routes VF MSI-X only with the PF up.
ip link set "$pfdev" up
PF=$(basename "$(readlink "/sys/class/net/$pfdev/device")")
echo 2 > "/sys/bus/pci/devices/$PF/sriov_numvfs"
VF1=$(basename "$(readlink "/sys/bus/pci/devices/$PF/virtfn1")")
sleep 1
echo "VF $VF1 on $(basename "$(readlink "/sys/bus/pci/devices/$VF1/driver")")"
taskset -c $(($(nproc) - 1)) vf_lab --vf "$VF1"; rc=$?
echo "vf_lab exit $rc; VF $VF1 on $(basename "$(readlink "/sys/bus/pci/devices/$VF1/driver")")"
echo; echo "VF-PCI-LAB-RESULT $( [ $rc = 0 ] && echo pass || echo fail )"
[ $rc = 0 ]
