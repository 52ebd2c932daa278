# shellcheck shell=bash
# Sourced by scripts that need Debian bookworm's kernel packages from the shared package
# cache (${HPMMAP_CACHE:-~/.cache/hpmmap}/debs, the same cache images/src/debs.rs fills):
# the lab scenarios ask whether a kernel can be had before they start `hpmmap-lab` (which
# fetches it itself), habits.sh fetches linux-source for checkpatch.
#
#   debian_kernel_abi       prints the 6.1 ABI (6.1.0-NN) that linux-image-amd64 points at,
#                           or the newest one cached when apt has no metadata
#   debian_deb PKG          prints the path of PKG's newest .deb in the cache, downloading it
#                           with apt-get when absent
# Each returns 77 (the labs' "cannot run here") with the reason on stderr when the package
# cannot be had.

debian_cache() {
    local c="${HPMMAP_CACHE:-$HOME/.cache/hpmmap}/debs"
    mkdir -p "$c"
    printf '%s\n' "$c"
}

debian_kernel_abi() {
    local abi="${HPMMAP_KERNEL_ABI:-}" dep f newest=""
    if [ -z "$abi" ]; then
        dep=$(apt-cache depends linux-image-amd64 2>/dev/null |
            awk '/Depends: linux-image-6\.1/ {print $2; exit}')
        abi=${dep#linux-image-}
        abi=${abi%-amd64}
    fi
    if [ -z "$abi" ]; then
        for f in "$(debian_cache)"/linux-image-6.1.*-amd64_*_amd64.deb; do
            [ -e "$f" ] || continue
            newest=$(printf '%s\n%s\n' "$newest" "$(basename "$f")" | sort -V | tail -1)
        done
        [ -n "$newest" ] || {
            echo "no linux-image-amd64 in apt and no cached 6.1 kernel in $(debian_cache)" >&2
            return 77
        }
        abi=$(printf '%s\n' "$newest" | sed -E 's/^linux-image-(6\.1\.[0-9]+-[0-9]+)-amd64_.*/\1/')
    fi
    printf '%s\n' "$abi"
}

debian_deb() {
    local pkg=$1 cache
    cache=$(debian_cache)
    if ! compgen -G "$cache/${pkg}_*.deb" >/dev/null; then
        echo "[debian] apt-get download $pkg into $cache" >&2
        (cd "$cache" && apt-get download -q "$pkg" >/dev/null 2>&1) || {
            echo "cannot download $pkg (apt sources or network missing)" >&2
            return 77
        }
    fi
    # Several versions may be cached: -V picks the newest.
    printf '%s\n' "$cache/${pkg}_"*.deb | sort -V | tail -1
}
