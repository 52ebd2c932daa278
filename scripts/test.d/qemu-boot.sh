#!/usr/bin/env bash
# scripts/lib/qemu-boot.sh against a stand-in qemu-system-x86_64 (a shell script first in
# PATH): QEMU's own crash cannot be provoked on demand, so the stand-in aborts itself the
# way QEMU's assertion does (SIGABRT after one stderr line). Checks: one crash -> one more
# boot whose console is LOG and the first kept as LOG.crash-1; two crashes -> status 134
# and no third boot; an exit status QEMU chose -> returned as it is, no second boot.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib/qemu-boot.sh
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
mkdir "$t/bin"
cat >"$t/bin/qemu-system-x86_64" <<'FAKE'
#!/bin/sh
ulimit -c 0
n=$(( $(cat "$FAKE_DIR/starts" 2>/dev/null || echo 0) + 1 ))
echo $n >"$FAKE_DIR/starts"
echo "console of start $n"
if [ $n -le "$FAKE_CRASHES" ]; then
    echo "qemu-system-x86_64: system/physmem.c:2678: iotlb_to_section: Assertion failed." >&2
    kill -ABRT $$
fi
exit "$FAKE_EXIT"
FAKE
chmod +x "$t/bin/qemu-system-x86_64"
fail() { echo "[FAIL] qemu-boot: $*"; exit 1; }

# boot NAME CRASHES EXIT: runs qemu_boot with the stand-in; sets rc and starts.
boot() {
    mkdir "$t/$1"
    rc=0
    PATH="$t/bin:$PATH" FAKE_DIR="$t/$1" FAKE_CRASHES=$2 FAKE_EXIT=$3 \
        qemu_boot --quiet "$t/$1/console.log" 30 -display none 2>"$t/$1/err" || rc=$?
    starts=$(cat "$t/$1/starts")
}

boot once 1 0
[ "$rc" = 0 ] || fail "one crash: status $rc, want 0"
[ "$starts" = 2 ] || fail "one crash: $starts starts, want 2"
grep -qx 'console of start 2' "$t/once/console.log" || fail "one crash: LOG is not the second console"
grep -qx 'console of start 1' "$t/once/console.log.crash-1" || fail "one crash: first console not kept"
grep -q 'iotlb_to_section' "$t/once/console.log.crash-1.stderr" || fail "one crash: first stderr not kept"
grep -q 'QEMU itself crashed (status 134' "$t/once/err" || fail "one crash: no line says so"

boot twice 2 0
[ "$rc" = 134 ] || fail "two crashes: status $rc, want 134"
[ "$starts" = 2 ] || fail "two crashes: $starts starts, want 2"
grep -q 'crashed twice' "$t/twice/err" || fail "two crashes: no line says so"

boot chosen 0 3
[ "$rc" = 3 ] || fail "exit 3: status $rc, want 3"
[ "$starts" = 1 ] || fail "exit 3: $starts starts, want 1"

echo "[ ok ] qemu-boot: a QEMU crash boots once more and only once; other statuses pass through"
