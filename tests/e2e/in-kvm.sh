#!/usr/bin/env bash
# The end-to-end suites that boot real guests, one after the other in one
# KVM environment (run through tests/lib/with-kvm, so inside one nested test
# host when this machine's /dev/kvm is not hardware KVM: its boot is paid
# once). Each suite prints PASS/FAIL lines; a suite that dies without
# reporting is a FAIL of its own.
set -u
here=$(cd "$(dirname "$0")" && pwd)

suite() {
    local name=$1; shift
    local out rc
    out=$(mktemp /tmp/palisade-suite.XXXXXX)
    "$@" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || grep -q '^FAIL' "$out" || echo "FAIL $name: exited $rc without reporting"
    rm -f "$out"
}

suite boot-in-kvm "$here/boot-in-kvm.sh"
suite ctr-run-palisade env RUNTIME=io.containerd.palisade.v2 "$here/ctr-run.sh"
suite ctr-palisade "$here/ctr-palisade.sh"
suite containers-in-vm "$here/containers-in-vm.sh"
