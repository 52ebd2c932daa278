# shellcheck shell=dash
# Issue 15.5 in L1 (tests/tests/mpi_image_lab.rs): each job image given as an argument (/NAME,
# built with `hpmmap-image build --packages openmpi-bin,lammps ... --ranks N`, with or without
# hpmmap, or with `--packages hpcc`) boots under hpmmap-vmm with its root tree on the read-only virtio-blk disk and its
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
    if [ -f "/tmp/out-$img/hpccoutf.txt" ]; then
        # HPCC's own verdicts: HPL's scaled residual, STREAM, RandomAccess, the summary.
        o=/tmp/out-$img/hpccoutf.txt
        echo "$img hpcc_residual=$(grep '||Ax-b||_oo/(eps' "$o" | head -n 1)"
        echo "$img hpcc_stream_validates=$(grep -c 'Solution Validates' "$o")"
        echo "$img hpcc_ra_errors=$(sed -n 's/^MPIRandomAccess_Errors=//p' "$o")"
        echo "$img hpcc_success=$(sed -n 's/^Success=//p' "$o")"
        echo "$img hpcc_failed=$(grep -c FAILED "$o")"
    fi
    grep "hpmmap-init: hpmmap-run: rank" "/tmp/$img.log" | sed "s/^/$img: /"
    if [ -f "/tmp/out-$img/log.lammps" ]; then
        sed -n '/^ *Step /,/^Loop time/p' "/tmp/out-$img/log.lammps" | grep -v '^Loop' > "/tmp/thermo-$img"
        echo "$img thermo_rows=$(wc -l < "/tmp/thermo-$img")"
        echo "$img thermo_md5=$(md5sum < "/tmp/thermo-$img" | cut -c1-32)"
    elif [ ! -f "/tmp/out-$img/hpccoutf.txt" ]; then
        echo "$img thermo_rows=0"
    fi
done
