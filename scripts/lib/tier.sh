# shellcheck shell=bash
# Test tiers for shell suites (the shell side of tests/testkit): source this, then call
#   tier_ran TIER NAME             when a tiered suite really runs,
#   tier_skip TIER NAME REASON...  when it cannot: prints SKIP[tier], records it, and returns
#                                  1 (fails the suite) when HPMMAP_REQUIRE lists the tier.
# Lines go to $HPMMAP_TIER_LOG, which scripts/test.sh turns into the run's tier table.

tier_record() {
    [ -n "${HPMMAP_TIER_LOG:-}" ] || return 0
    printf '%s\n' "$*" | tr -d '\r' >>"$HPMMAP_TIER_LOG"
}

tier_required() {
    local t=$1 w
    for w in $(printf '%s' "${HPMMAP_REQUIRE:-}" | tr ',' ' '); do
        [ "$w" = all ] || [ "$w" = "$t" ] && return 0
    done
    return 1
}

tier_ran() {
    tier_record "ran $1 ${2// /_}"
}

tier_skip() {
    local t=$1 name=${2// /_}
    shift 2
    echo "SKIP[$t]: $name: $*"
    tier_record "skip $t $name $*"
    if tier_required "$t"; then
        echo "FAIL: $name: the $t tier is required here (HPMMAP_REQUIRE=$HPMMAP_REQUIRE) but cannot run: $*" >&2
        return 1
    fi
    return 0
}

# The table printed at the end of a run: how many tests ran in each tier, and each skip's reason.
tier_table() {
    local log=$1
    [ -s "$log" ] || { echo "(no tiered test recorded: HPMMAP_TIER_LOG was empty)"; return 0; }
    awk '
        { ev = $1; t = $2; name = $3; $1 = $2 = $3 = ""; sub(/^ +/, "");
          if (ev == "ran") ran[t]++
          else if (ev == "skip") { sk[t]++; why[t] = why[t] "\n    " name ": " $0 }
          else if (ev == "n/a") { na[t]++; nwhy[t] = nwhy[t] "\n    " name ": " $0 } }
        END {
          printf "%-8s %5s %8s %5s\n", "tier", "ran", "skipped", "n/a"
          split("kvm root hugetlb qemu lab tools", order, " ")
          for (i = 1; i <= 6; i++) { t = order[i]; printf "%-8s %5d %8d %5d\n", t, ran[t], sk[t], na[t] }
          for (i = 1; i <= 6; i++) { t = order[i]; if (sk[t]) printf "skipped in %s:%s\n", t, why[t] }
          for (i = 1; i <= 6; i++) { t = order[i]; if (na[t]) printf "not applicable here (%s):%s\n", t, nwhy[t] }
        }' "$log"
}
