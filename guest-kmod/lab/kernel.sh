#!/usr/bin/env bash
# Fetches Debian bookworm's 6.1 kernel (the ABI linux-image-amd64 points at) into the shared
# package cache and unpacks image + headers into a build root.
#   kernel.sh ROOT     -> prints "ABI=<abi> KDIR=<headers dir> VMLINUZ=<path>"
# Exit 3 (with "SKIP: reason" on stderr) when the packages cannot be had.
set -euo pipefail
root=${1:?usage: kernel.sh ROOT}
cache="${HPMMAP_CACHE:-$HOME/.cache/hpmmap}/debs"
mkdir -p "$cache" "$root"

abi=${HPMMAP_KERNEL_ABI:-}
if [ -z "$abi" ]; then
    dep=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-6\.1/ {print $2; exit}')
    abi=${dep#linux-image-}
    abi=${abi%-amd64}
fi
if [ -z "$abi" ]; then
    # No apt metadata: use whatever 6.1 image the cache holds.
    f=$(ls "$cache"/linux-image-6.1.*-amd64_*.deb 2>/dev/null | sort -V | tail -1 || true)
    [ -n "$f" ] || { echo "SKIP: no linux-image-amd64 in apt and no cached 6.1 kernel in $cache" >&2; exit 3; }
    abi=$(basename "$f" | sed -E 's/^linux-image-(6\.1\.[0-9]+-[0-9]+)-amd64_.*/\1/')
fi
pkgs=("linux-image-$abi-amd64" "linux-headers-$abi-amd64" "linux-headers-$abi-common" "linux-kbuild-6.1")
for p in "${pkgs[@]}"; do
    if ! ls "$cache/${p}_"*.deb >/dev/null 2>&1; then
        echo "[kernel] apt-get download $p" >&2
        (cd "$cache" && apt-get download -q "$p" >/dev/null 2>&1) ||
            { echo "SKIP: cannot download $p (apt-get download failed)" >&2; exit 3; }
    fi
done
stamp="$root/.unpacked-$abi"
if [ ! -e "$stamp" ]; then
    echo "[kernel] unpacking $abi into $root" >&2
    for p in "${pkgs[@]}"; do
        dpkg -x "$(ls "$cache/${p}_"*.deb | sort -V | tail -1)" "$root"
    done
    # The headers Makefile includes the common tree by absolute path; point it here.
    sed -i "s|/usr/src/|$root/usr/src/|" "$root/usr/src/linux-headers-$abi-amd64/Makefile"
    touch "$stamp"
fi
echo "ABI=$abi KDIR=$root/usr/src/linux-headers-$abi-amd64 VMLINUZ=$root/boot/vmlinuz-$abi-amd64"
