# shellcheck shell=dash
# Issue 15.5 in L1 (tests/tests/mpi_image_lab.rs): each job image given as an argument (/NAME,
# built with `hpmmap-image build --packages openmpi-bin,lammps ... --ranks N`, with or without
# hpmmap) boots under hpmmap-vmm with its root tree on the read-only virtio-blk disk and its
# /out on the output disk; one `key=value` line per fact, prefixed with the image's name.
# shellcheck source=tests/lab/retry.sh
. /root/retry.sh
for img in "$@"; do
    VMM_LOG=/tmp/$img.log VMM_QUIET=1 VMM_LIMIT=1200
    vmm_retrying --image "/$img" --mem 3G --vcpus 2 --output "/tmp/out-$img" --report "/tmp/$img.json"
    echo "$img vmm_rc=$?"
    grep -E "hpmmap-init: (platform|hpmmap counters|hpmmap peak|output|root)|Loop time|HPMMAP-JOB-EXIT" \
        "/tmp/$img.log" | sed "s/^/$img: /"
    echo "$img report=$(tr -d '\n' < "/tmp/$img.json" 2>/dev/null)"
    if [ -f "/tmp/out-$img/log.lammps" ]; then
        sed -n '/^ *Step /,/^Loop time/p' "/tmp/out-$img/log.lammps" | grep -v '^Loop' > "/tmp/thermo-$img"
        echo "$img thermo_rows=$(wc -l < "/tmp/thermo-$img")"
        echo "$img thermo_md5=$(md5sum < "/tmp/thermo-$img" | cut -c1-32)"
    else
        echo "$img thermo_rows=0"
    fi
done
