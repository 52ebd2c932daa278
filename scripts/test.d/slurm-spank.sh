#!/usr/bin/env bash
# slurm/spank: the SPANK plugin builds against Debian's libslurm-dev with warnings as
# errors, and its option checks pass their unit tests (make test). About 2 s.
# The plugin in a running Slurm cluster: tests/tests/slurm_lab.rs (nested lab).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -f /usr/include/slurm/spank.h ]; then
    echo "slurm-spank: /usr/include/slurm/spank.h is missing: apt-get install libslurm-dev (scripts/setup-host.sh)" >&2
    exit 1
fi
make -s -C slurm/spank OUT="$PWD/target/slurm-spank" all test
