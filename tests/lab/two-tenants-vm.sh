# shellcheck shell=dash
# The job runner of the two-tenants lab scenarios (tests/lab/two-tenants.sh and
# two-tenants-devdax.sh), sourced by both.
pin=$(($(nproc) - 1))
# vm NAME MEM TENANT [VMM ARGS...]: one job, pinned to L1's last CPU (QEMU/TCG's nested SVM
# fails with two L1 CPUs in guest mode at once; both tenants share the CPU), booted once more
# after a nested-SVM failure signature (72 triple fault, 124 limit).
up() { cut -d' ' -f1 /proc/uptime; }
vm() {
    name=$1 mem=$2 tenant=$3
    shift 3
    echo "${name}_start=$(up)"
    for attempt in 1 2; do
        timeout 300 taskset -c $pin hpmmap-vmm --mem "$mem" --vcpus 1 --kernel /img/vmlinux \
            --initrd /l2/l2.cpio.gz --cmdline "console=ttyS0 quiet tenant=$tenant" \
            --report "/tmp/$name.json" "$@" > "/tmp/$name.log" 2>&1
        rc=$?
        case $rc in 72 | 124) [ $attempt = 1 ] && { echo "${name}_retry=$rc"; continue; } ;; esac
        echo "${name}_end=$(up)"
        return $rc
    done
}
