# shellcheck shell=dash
# The lab's acceptance scenario (run inside L1 by tests/lab.rs): one key=value line per
# check, so each test asserts its own part of one boot.
echo "kvm_dev=$([ -c /dev/kvm ] && echo yes || echo no)"
echo "npt=$(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null || echo absent)"
echo "hugepages_1g=$(cat /sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages 2>/dev/null || echo 0)"

# SR-IOV: one igb VF, bound to vfio-pci through driver_override; its VFIO group node.
pf=$(ls -d /sys/bus/pci/drivers/igb/0000:* 2>/dev/null | head -1)
if [ -n "$pf" ]; then
    ip link set "$(ls "$pf/net" | head -1)" up
    echo "pf=$(basename "$pf") totalvfs=$(cat "$pf/sriov_totalvfs")"
    echo 1 > "$pf/sriov_numvfs"
    vf=$(basename "$(readlink "$pf/virtfn0")")
    echo vfio-pci > "/sys/bus/pci/devices/$vf/driver_override"
    [ -e "/sys/bus/pci/devices/$vf/driver" ] && echo "$vf" > "/sys/bus/pci/devices/$vf/driver/unbind"
    echo "$vf" > /sys/bus/pci/drivers_probe
    drv=$(basename "$(readlink "/sys/bus/pci/devices/$vf/driver")")
    g=$(basename "$(readlink "/sys/bus/pci/devices/$vf/iommu_group")")
    echo "vf=$vf driver=$drv"
    echo "vfio_group=$g node=$([ -c "/dev/vfio/$g" ] && echo yes || echo no)"
    # Leave nothing bound: unbind, clear the override, remove the VFs.
    echo "$vf" > /sys/bus/pci/drivers/vfio-pci/unbind
    echo > "/sys/bus/pci/devices/$vf/driver_override"
    echo 0 > "$pf/sriov_numvfs"
    echo "numvfs_after=$(cat "$pf/sriov_numvfs")"
else
    echo "pf=none"
fi

# A KVM guest whose RAM is one 1 GiB hugetlb page, then the same on 4 KiB pages.
hpmmap-kvm-probe --backing 1G
hpmmap-kvm-probe --backing 4K
exit 7
