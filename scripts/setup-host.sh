#!/usr/bin/env bash
# Installs what building, testing and the nested lab need on a Debian bookworm host.
# Everything comes from Debian's archive (bookworm + bookworm-backports) and crates.io.
set -euo pipefail

log() { echo "[setup] $*" >&2; }

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

# bookworm-backports carries QEMU >= 8.0, which the lab needs for the igb SR-IOV NIC.
# The suite is added by reusing the URI of the machine's existing Debian entry, so the
# repository never names a mirror.
add_backports() {
    if grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        return
    fi
    local uri=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(awk '$1=="deb" && $3=="bookworm" {print $2; exit}' /etc/apt/sources.list)
    fi
    if [ -z "$uri" ]; then
        log "no Debian bookworm source entry found to derive bookworm-backports from"
        exit 1
    fi
    log "adding bookworm-backports from the existing Debian entry"
    $SUDO tee /etc/apt/sources.list.d/hpmmap-backports.sources >/dev/null <<SRC
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
}

add_backports
export DEBIAN_FRONTEND=noninteractive
log "apt-get update"
$SUDO apt-get update -qq
log "installing build and lab packages"
$SUDO apt-get install -y -qq --no-install-recommends \
    build-essential cpio zstd xz-utils gzip kmod busybox-static dpkg-dev \
    numactl libnuma-dev python3 ca-certificates \
    stress-ng flex bison libelf-dev bc shellcheck >/dev/null
# opensm's man page holds the partitions.conf examples vmm/vf's parser is tested against; the
# daemon is not started (no subnet here).
$SUDO apt-get install -y -qq --no-install-recommends opensm >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports \
    qemu-system-x86 >/dev/null
qemu-system-x86_64 --version | head -1 >&2
# mksquashfs: hpmmap-image's read-only root images (images/src/rootdisk.rs).
$SUDO apt-get install -y -qq --no-install-recommends squashfs-tools >/dev/null
# libslurm-dev: slurm/spank.h for the SPANK plugin (slurm/spank, scripts/test.d/slurm-spank.sh).
$SUDO apt-get install -y -qq --no-install-recommends libslurm-dev >/dev/null
# socat: the host side of vmm/tests/virtio_vsock.rs in the lab (UNIX-CONNECT to --vsock).
$SUDO apt-get install -y -qq --no-install-recommends socat >/dev/null
# libmpich-dev: mpicc.mpich builds the Slurm lab's MPI check (slurm/lab/allreduce.c).
$SUDO apt-get install -y -qq --no-install-recommends libmpich-dev >/dev/null
log "done"
