# shellcheck shell=dash
# Sourced by L1 scenario scripts: the lab L1's igb SR-IOV NIC.
#   igb_vfs N      finds the igb PF (its netdev in $pf), enables N VFs, prints sriov_rc=;
#                  the VFs' sysfs directories are in $vfs
#   vf_drivers     the driver each VF is bound to, in order
igb_vfs() {
    pf=
    for n in /sys/class/net/*; do
        d=$(readlink "$n/device/driver" 2>/dev/null)
        [ "${d##*/}" = igb ] && { pf=${n##*/}; break; }
    done
    echo "$1" > "/sys/class/net/$pf/device/sriov_numvfs"
    # shellcheck disable=SC2320 # the echo's own status is the sysfs write's
    rc=$?
    echo "sriov_rc=$rc"
    vfs=$(ls -d /sys/class/net/"$pf"/device/virtfn* 2>/dev/null)
}
vf_drivers() {
    for v in $vfs; do d=$(readlink "$v/driver"); printf '%s ' "${d##*/}"; done
}
