#!/usr/bin/env bash
# Measures how reliable the nested test host is under palisade's load, for
# one or more test host combinations (kernel series + QEMU), side by side:
#
#   tests/testhost/soak.sh [-n CYCLES] [-s PER_SESSION] [-b BUDGET] COMBO...
#
# COMBO is KERNEL+QEMU as prepare.sh takes them: 6.1+7.2, 6.12+7.2,
# 6.12+10, 6.1+10. Each combination gets CYCLES (default 100) `ctr run
# --rm busybox true` cycles with the palisade runtime, in test host sessions
# of PER_SESSION cycles (default 25): the combinations take turns, session
# by session, so each sees the same machine load. A session that the test
# host ends (kernel panic, hang caught by run's watchdog, timeout) counts
# as such, and the next session goes on with the cycles left. BUDGET
# (seconds, default none) stops starting sessions after that long; the
# table then says how many cycles each combination got.
#
# Prints one line per cycle and session, and at the end a table:
# combination, cycles, failed cycles, test host panics, hangs, time per
# cycle (the mean of the cycles that passed, boot not included).
#
# Needs what tests/e2e/ctr-palisade.sh needs: the shim in target/release,
# guest-kernel/build.sh and rootfs-builder/build.sh run, and the busybox
# image (built here, before the test hosts start: their view of the repo is
# read-only).
#
# Inside the test host it runs itself as `soak.sh --inner N`.
set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

# --- inside the test host: N cycles ------------------------------------------------
if [ "${1:-}" = --inner ]; then
    n=$2
    RUNTIME=io.containerd.palisade.v2
    . "$repo/tests/e2e/ctr-lib.sh"
    ctr_suite_setup soak
    TEST=soak
    echo "SESSION kernel $(uname -r)"
    for i in $(seq "$n"); do
        id=$(tid "$i")
        t0=$(date +%s.%N)
        if run_ --rm "$BUSYBOX_IMAGE" "$id" true >"$E2E_TMP/cycle.out" 2>&1; then
            echo "CYCLE $i ok $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
        else
            echo "CYCLE $i FAIL $(tail -n 2 "$E2E_TMP/cycle.out" | tr '\n' ' ')"
            remove_container "$id"
        fi
    done
    echo "SESSION done"
    exit 0
fi

# --- on the host: sessions per combination --------------------------------------------
cycles=100 per=25 budget=0
while getopts n:s:b: o; do
    case $o in
        n) cycles=$OPTARG ;;
        s) per=$OPTARG ;;
        b) budget=$OPTARG ;;
        *) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || { echo "soak: name at least one combination (e.g. 6.1+7.2 6.12+10)" >&2; exit 2; }
for c in "$@"; do
    case "$c" in 6.1+7.2|6.12+7.2|6.12+10|6.1+10) ;; *) echo "soak: unknown combination '$c'" >&2; exit 2 ;; esac
done

"$repo/tests/images/build-busybox-image" >/dev/null || { echo "soak: cannot build the busybox image" >&2; exit 1; }
work=$(mktemp -d /tmp/palisade-soak.XXXXXX)
trap 'rm -rf "$work"' EXIT

declare -A done_=() failed=() panics=() hangs=() timeouts=() other=() secs=() sessions=()
for c in "$@"; do
    done_[$c]=0 failed[$c]=0 panics[$c]=0 hangs[$c]=0 timeouts[$c]=0 other[$c]=0 secs[$c]=0 sessions[$c]=0
    # Assets first, so that no session pays for a build.
    PALISADE_TESTHOST_KERNEL=${c%+*} PALISADE_TESTHOST_QEMU=${c#*+} "$here/prepare.sh" >/dev/null ||
        { echo "soak: prepare.sh failed for $c" >&2; exit 1; }
done
t_start=$SECONDS
more=1
while [ "$more" = 1 ]; do
    more=0
    for c in "$@"; do
        left=$((cycles - done_[$c]))
        [ "$left" -gt 0 ] || continue
        if [ "$budget" -gt 0 ] && [ $((SECONDS - t_start)) -ge "$budget" ]; then
            echo "soak: time budget of ${budget}s used up"
            break 2
        fi
        more=1
        k=$((left < per ? left : per))
        sessions[$c]=$((sessions[$c] + 1))
        echo "== $c: session ${sessions[$c]}, $k cycles (${done_[$c]} done)"
        out=$work/out err=$work/err
        PALISADE_TESTHOST_KERNEL=${c%+*} PALISADE_TESTHOST_QEMU=${c#*+} \
            "$here/run" --timeout $((k * 60 + 300)) -- "$0" --inner "$k" >"$out" 2>"$err"
        rc=$?
        grep -E '^(SESSION|CYCLE)' "$out" | sed "s/^/[$c] /"
        ok=$(grep -c '^CYCLE [0-9]* ok' "$out")
        bad=$(grep -c '^CYCLE [0-9]* FAIL' "$out")
        t=$(awk '/^CYCLE [0-9]+ ok/ { s += $4 } END { printf "%.1f", s + 0 }' "$out")
        secs[$c]=$(awk -v a="${secs[$c]}" -v b="$t" 'BEGIN { print a + b }')
        failed[$c]=$((failed[$c] + bad))
        # A session that ended early still used its cycles up to the end.
        ran=$((ok + bad))
        why=
        if [ "$rc" = 0 ] && grep -q '^SESSION done' "$out"; then
            :
        elif [ "$rc" = 125 ] && grep -q 'made no progress' "$err"; then
            hangs[$c]=$((hangs[$c] + 1)); why=hang
        elif [ "$rc" = 125 ] && grep -q 'died while the command was running' "$err"; then
            panics[$c]=$((panics[$c] + 1)); why=panic
        elif [ "$rc" = 124 ]; then
            timeouts[$c]=$((timeouts[$c] + 1)); why=timeout
        else
            other[$c]=$((other[$c] + 1)); why="exit $rc"
        fi
        if [ -n "$why" ]; then
            # The cycle the test host died in counts as run and failed.
            ran=$((ran + 1)); failed[$c]=$((failed[$c] + 1))
            echo "[$c] SESSION ENDED ($why) after $((ok + bad)) cycles:"
            grep -m1 -E 'made no progress|Kernel panic|BUG:|Oops|timed out|error' "$err" | sed "s/^/[$c]   /"
            grep -E 'RIP|vCPU|Kernel panic|BUG:|Call Trace|^ [a-z_]+\+0x' "$err" | head -n 12 | sed "s/^/[$c]   /"
            [ "$ran" -gt 0 ] || ran=1
        fi
        done_[$c]=$((done_[$c] + ran))
    done
done

echo
echo "| combination | cycles | failed cycles | panics | hangs | timeouts | other | time per cycle |"
echo "|---|---|---|---|---|---|---|---|"
for c in "$@"; do
    okc=$((done_[$c] - failed[$c]))
    per_cycle=$(awk -v s="${secs[$c]}" -v n="$okc" 'BEGIN { if (n > 0) printf "%.1f s", s / n; else print "-" }')
    echo "| $c | ${done_[$c]} | ${failed[$c]} | ${panics[$c]} | ${hangs[$c]} | ${timeouts[$c]} | ${other[$c]} | $per_cycle |"
done
echo "soak: $((SECONDS - t_start))s in all"
