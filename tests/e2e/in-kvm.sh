#!/usr/bin/env bash
# The end-to-end suites that boot real guests (all, or those named), one
# after the other in one KVM environment (run through tests/lib/with-kvm,
# so inside a nested test host when this machine's /dev/kvm is not
# hardware KVM; tests/e2e/run gives each suite a test host of its own).
# Each suite prints PASS/FAIL lines; a suite that dies without reporting
# is a FAIL of its own.
#
# A suite's lines are shown live, prefixed with its name; its verdict lines
# (PASS/FAIL, the ones that count) are printed again, bare, when it ends.
# In the nested test host only, a suite whose guest triple-faulted without
# a kernel panic is run once more and the second run's verdicts count.
# There, guests reset now and then at any point, also in early boot before
# any palisade device is in use (a few in a hundred boots over a day of
# runs), under an SVM that QEMU emulates in software; one such reset should
# not sink a CI run. The retry is reported as a RETRY line with the
# evidence, and a second triple fault fails. On hardware KVM a triple fault
# is a failure like any other.
set -u
here=$(cd "$(dirname "$0")" && pwd)

# The first attempt's evidence for a retry, or nothing.
emulator_flake() {  # output-file
    [ "${PALISADE_TESTHOST:-}" = 1 ] || return 1
    grep -q '^FAIL' "$1" || return 1
    grep -qi 'kernel panic' "$1" && return 1
    grep -m1 -o 'guest triple-faulted[^;]*' "$1"
}

# One line on what the suites so far left in use: memory (the test host's
# files are all in RAM) and processes; for telling a slow or starved test
# host from a failing runtime when a late suite fails.
resources() {
    local avail files procs
    avail=$(awk '/^MemAvailable:/ { print int($2 / 1024) }' /proc/meminfo)
    files=$(df -k --output=used /tmp /run /var/lib/containerd 2>/dev/null | awk 'NR > 1 { s += $1 } END { print int(s / 1024) }')
    procs=$(ls -d /proc/[0-9]* | wc -l)
    echo "resources before $1: ${avail} MiB available, ${files} MiB in /tmp, /run and /var/lib/containerd, $procs processes, load $(cut -d' ' -f1-3 /proc/loadavg)"
}

# `in-kvm.sh [--list | SUITE...]`: the suites named (all by default);
# tests/e2e/run runs each in a test host of its own.
all_suites=(boot-in-kvm ctr-run-runc-cgroup-v2 ctr-run-palisade ctr-palisade containers-in-vm hostile-guest)
if [ "${1:-}" = --list ]; then
    printf '%s\n' "${all_suites[@]}"
    exit 0
fi
wanted=("$@")
[ $# -gt 0 ] || wanted=("${all_suites[@]}")
for w in "${wanted[@]}"; do
    [[ " ${all_suites[*]} " == *" $w "* ]] || { echo "FAIL in-kvm: no suite $w (there are: ${all_suites[*]})"; exit 2; }
done

suite() {
    local name=$1; shift
    local out rc attempt evidence
    [[ " ${wanted[*]} " == *" $name "* ]] || return 0
    resources "$name"
    out=$(mktemp /tmp/palisade-suite.XXXXXX)
    for attempt in 1 2; do
        "$@" 2>&1 | tee "$out" | sed -u "s/^/[$name] /"
        rc=${PIPESTATUS[0]}
        if [ "$attempt" = 1 ] && evidence=$(emulator_flake "$out"); then
            echo "RETRY $name: $evidence ($(grep -c '^FAIL' "$out") failures); running it again"
            continue
        fi
        break
    done
    grep -E '^(PASS|FAIL) ' "$out"
    [ "$rc" -eq 0 ] || grep -q '^FAIL' "$out" || echo "FAIL $name: exited $rc without reporting"
    rm -f "$out"
}

suite boot-in-kvm "$here/boot-in-kvm.sh"
# runc, the peer, on the test host's cgroup v2 (the project's machines are
# v1): the cgroup files a container sees.
suite ctr-run-runc-cgroup-v2 env RUNTIME=io.containerd.runc.v2 "$here/ctr-run.sh" cgroup-view
suite ctr-run-palisade env RUNTIME=io.containerd.palisade.v2 "$here/ctr-run.sh"
suite ctr-palisade "$here/ctr-palisade.sh"
suite containers-in-vm "$here/containers-in-vm.sh"
suite hostile-guest "$here/hostile-guest.sh"
