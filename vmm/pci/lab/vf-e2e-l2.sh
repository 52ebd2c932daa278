#!/bin/busybox sh
# shellcheck shell=dash
# /init of L2 in the VF end-to-end run (vf-e2e-l1.sh packs it with busybox and igbvf.ko):
# binds igbvf to the passed-through VF, pings L1's PF, counts the VF's MSI-X vectors. Its
# exit status (PV EXIT) is 0 only when its own checks passed; the markers are asserted
# again on the host.
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
# Sum of the VF's MSI-X counts over all CPUs (igbvf names them eth0-rx-0, eth0-tx-0, eth0).
vf_irqs() { awk '/eth0/ { for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i } END { print s + 0 }' /proc/interrupts; }
echo "L2-UP"
insmod /mods/igbvf.ko
ok=1
if [ -e /sys/bus/pci/drivers/igbvf/0000:00:01.0 ]; then echo "L2-IGBVF-BOUND 0000:00:01.0"; else echo "L2-IGBVF-NOT-BOUND"; ok=0; fi
ip link set eth0 up && ip addr add 10.99.0.2/24 dev eth0
for _ in $(seq 1 30); do [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" = 1 ] && break; sleep 1; done
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
