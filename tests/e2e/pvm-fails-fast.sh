#!/usr/bin/env bash
# On a PVM host (this project's machines), `palisade check` must say plainly
# that standard guests cannot boot here and exit non-zero within seconds.
set -u
. "$(dirname "$0")/lib.sh"
t=check-on-pvm-fails-fast
kind=$("$E2E_REPO/tests/lib/kvm-kind")
if [ "$kind" != pvm ]; then
    echo "SKIP $t: this host's /dev/kvm is '$kind', not PVM"
    exit 0
fi
tmp=$(mktemp -d /tmp/palisade-e2e.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
write_test_config "$tmp/c.toml"
start=$(date +%s%N)
text=$(timeout 30 "$E2E_BIN/palisade" check --config "$tmp/c.toml" 2>&1); rc=$?
ms=$(( ($(date +%s%N) - start) / 1000000 ))
if [ $rc -eq 0 ]; then fail $t "check passed on PVM"
elif [ $rc -eq 124 ]; then fail $t "check hung on PVM"
elif ! grep -q "PVM" <<<"$text"; then fail $t "the message does not say PVM: $text"
elif [ $ms -gt 5000 ]; then fail $t "took ${ms} ms"
elif [ -n "$(leftovers)" ]; then fail $t "left behind: $(leftovers)"
else pass $t; echo "  failed in ${ms} ms: $(grep -m1 PVM <<<"$text")"; fi
