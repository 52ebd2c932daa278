#!/bin/busybox sh
# shellcheck shell=dash
# L2 init of the two-tenants lab: `tenant=fill:WORD` writes WORD through every pool range the
# PV device announces; `tenant=scan:W1,W2` counts W1/W2 words (and any non-zero word) there.
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
t=$(sed -n 's/.*tenant=\([^ ]*\).*/\1/p' /proc/cmdline)
mode=${t%%:*}; words=$(echo "${t#*:}" | tr ',' ' ')
pv=0xfeb00000
n=$(($(devmem $((pv + 0x10)) 32)))
echo "L2-RANGES $n"
rc=0
i=0
while [ $i -lt "$n" ]; do
    base=$(devmem $((pv + 0x100 + 16 * i)) 64)
    size=$(devmem $((pv + 0x108 + 16 * i)) 64)
    # shellcheck disable=SC2086 # one argument per word
    /bin/pattern "$mode" "$base" "$size" $words || rc=1
    i=$((i + 1))
done
vf=/sys/bus/pci/devices/0000:00:01.0
[ -e $vf/vendor ] && echo "L2-VF $(cat $vf/vendor):$(cat $vf/device)"
echo "L2-EXIT $rc"
devmem $((pv + 0x34)) 32 $rc
sleep 5
reboot -f
