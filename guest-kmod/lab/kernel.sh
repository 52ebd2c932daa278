#!/usr/bin/env bash
# Fetches Debian bookworm's 6.1 kernel (the ABI linux-image-amd64 points at) into the shared
# package cache and unpacks image + headers into a build root.
#   kernel.sh ROOT     -> prints "ABI=<abi> KDIR=<headers dir> VMLINUZ=<path>"
# Exit 3 (with "SKIP: reason" on stderr) when the packages cannot be had.
set -euo pipefail
root=${1:?usage: kernel.sh ROOT}
# shellcheck source=scripts/lib/debian-kernel.sh
. "$(dirname "$0")/../../scripts/lib/debian-kernel.sh"
mkdir -p "$root"

abi=$(debian_kernel_abi 2>/tmp/hpmmap-kernel-abi.err) ||
    { echo "SKIP: $(cat /tmp/hpmmap-kernel-abi.err)" >&2; exit 3; }
pkgs=("linux-image-$abi-amd64" "linux-headers-$abi-amd64" "linux-headers-$abi-common" "linux-kbuild-6.1")
debs=()
for p in "${pkgs[@]}"; do
    d=$(debian_deb "$p") || { echo "SKIP: cannot download $p (apt-get download failed)" >&2; exit 3; }
    debs+=("$d")
done
stamp="$root/.unpacked-$abi"
if [ ! -e "$stamp" ]; then
    echo "[kernel] unpacking $abi into $root" >&2
    for d in "${debs[@]}"; do
        dpkg -x "$d" "$root"
    done
    # The headers Makefile includes the common tree by absolute path; point it here.
    sed -i "s|/usr/src/|$root/usr/src/|" "$root/usr/src/linux-headers-$abi-amd64/Makefile"
    touch "$stamp"
fi
echo "ABI=$abi KDIR=$root/usr/src/linux-headers-$abi-amd64 VMLINUZ=$root/boot/vmlinuz-$abi-amd64"
