#!/usr/bin/env bash
# Builds a minimal initramfs (cpio newc, gzip): busybox-static, the given files under /bin
# (or /lib/hpmmap for *.ko), and the given init script as /init.
#   initramfs.sh OUT.cpio.gz INIT_SCRIPT FILE...
set -euo pipefail
out=${1:?usage: initramfs.sh OUT INIT FILE...}
init=${2:?init script}
shift 2
bb=$(command -v busybox || true)
# The initramfs has no libc: busybox must be the static build (busybox-static).
if [ -z "$bb" ] || ldd "$bb" >/dev/null 2>&1; then
    echo "SKIP: busybox-static is not installed" >&2
    exit 3
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"/{bin,sbin,dev,proc,sys,tmp,lib/hpmmap,usr/bin,usr/sbin}
cp "$bb" "$tmp/bin/busybox"
for app in $("$bb" --list); do
    [ "$app" = busybox ] || ln -sf busybox "$tmp/bin/$app"
done
for f in "$@"; do
    case "$f" in
        *.ko) cp "$f" "$tmp/lib/hpmmap/" ;;
        *) cp "$f" "$tmp/bin/" ;;
    esac
done
cp "$init" "$tmp/init"
chmod +x "$tmp/init"
(cd "$tmp" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$out.tmp"
mv "$out.tmp" "$out"
