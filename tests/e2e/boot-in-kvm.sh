#!/usr/bin/env bash
# End-to-end boot tests. Needs real KVM: run through tests/lib/with-kvm,
# which uses the nested test host when this machine's /dev/kvm is not
# hardware KVM. Every test here really boots the guest.
set -u
. "$(dirname "$0")/lib.sh"

if [ "$(cat /sys/module/kvm_pvm/initstate 2>/dev/null)" = live ] || [ ! -c /dev/kvm ]; then
    fail boot-environment "no hardware-style /dev/kvm here; run this through tests/lib/with-kvm"
    exit 1
fi

tmp=$(mktemp -d /tmp/palisade-e2e.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cfg=$tmp/configuration.toml
write_test_config "$cfg" "quiet" 2

before=$(leftovers)

# 1. palisade check boots the guest, the agent answers with the kernel we
#    built, the VM exits cleanly, nothing is left behind.
t=check-boots-and-answers
out=$("$E2E_BIN/palisade" check --json --config "$cfg" 2>"$tmp/check.err"); rc=$?
want_release=$(cat "$E2E_OUT/vmlinux.release")
want_version=$("$E2E_BIN/palisade" --version | awk '{print $2}')
if [ $rc -ne 0 ]; then
    fail $t "exit $rc: $(echo "$out" | json_field error) $(cat "$tmp/check.err")"
    echo "$out" | json_field console_tail | tail -20
elif [ "$(echo "$out" | json_field kernel_release)" != "$want_release" ]; then
    fail $t "guest kernel $(echo "$out" | json_field kernel_release), built $want_release"
elif [ "$(echo "$out" | json_field agent_version)" != "$want_version" ]; then
    fail $t "agent version $(echo "$out" | json_field agent_version), want $want_version"
elif [ "$(echo "$out" | json_field guest_cpus)" != 2 ]; then
    fail $t "guest sees $(echo "$out" | json_field guest_cpus) CPUs, configured 2"
elif [ -z "$(echo "$out" | json_field shutdown_ms)" ]; then
    fail $t "the VM did not report a clean shutdown"
elif [ -e "$(echo "$out" | json_field sandbox_dir)" ]; then
    fail $t "sandbox directory left behind"
elif [ "$(leftovers)" != "$before" ]; then
    fail $t "left behind: $(leftovers)"
else
    pass $t
    phases=""
    for k in vmm_started guest_entered agent_started agent_ready first_answer; do
        phases+=" $k=$(echo "$out" | json_field ${k}_ms | cut -d. -f1)"
    done
    echo "  boot phases (ms from VMM spawn):$phases"
fi

# 2. The human-readable report names every phase.
t=check-text-report
text=$("$E2E_BIN/palisade" check --config "$cfg" 2>&1); rc=$?
missing=""
for phase in "VMM process started" "guest kernel entered" "agent ready" "first answer" "$want_release"; do
    grep -qi -- "$phase" <<<"$text" || missing+=" [$phase]"
done
if [ $rc -ne 0 ] || [ -n "$missing" ]; then
    fail $t "exit $rc, missing:$missing"; echo "$text" | tail -20
else
    pass $t
fi

# 3. The VMM stops cleanly on SIGTERM and removes its vsock socket.
t=vmm-sigterm-teardown
sock=$tmp/v.sock
"$E2E_BIN/containerd-shim-palisade-v2" __vmm --kernel "$E2E_OUT/vmlinux" --initrd "$E2E_OUT/initramfs.cpio.gz" \
    --kernel-params quiet --vcpus 1 --memory-mib 128 --serial-log "$tmp/console.log" --vsock-uds "$sock" \
    >"$tmp/vmm.out" 2>"$tmp/vmm.err" &
vmm=$!
deadline=$((SECONDS + 120))
until grep -q "boot-signal 2" "$tmp/vmm.out" 2>/dev/null || [ $SECONDS -ge $deadline ]; do sleep 0.2; done
if ! grep -q "boot-signal 2" "$tmp/vmm.out"; then
    fail $t "agent never became ready: $(cat "$tmp/vmm.err"); console: $(tail -5 "$tmp/console.log")"
    kill -9 $vmm 2>/dev/null
else
    kill -TERM $vmm; wait $vmm; rc=$?
    if [ $rc -ne 0 ]; then fail $t "VMM exited $rc after SIGTERM: $(cat "$tmp/vmm.err")"
    elif ! grep -q "exit stopped" "$tmp/vmm.out"; then fail $t "no 'exit stopped' report: $(cat "$tmp/vmm.out")"
    elif [ -e "$sock" ]; then fail $t "vsock socket left behind"
    else pass $t; fi
fi

# 4. A kernel that does not exist: one clear message, nothing left behind.
t=missing-kernel-is-a-clear-error
sed "s|$E2E_OUT/vmlinux|$tmp/no-such-vmlinux|" "$cfg" >"$tmp/bad.toml"
text=$("$E2E_BIN/palisade" check --config "$tmp/bad.toml" 2>&1); rc=$?
if [ $rc -eq 0 ]; then fail $t "check passed with a missing kernel"
elif ! grep -q "no-such-vmlinux" <<<"$text"; then fail $t "the message does not name the kernel: $text"
elif [ "$(leftovers)" != "$before" ]; then fail $t "left behind: $(leftovers)"
else pass $t; fi

# 5. An agent that never answers on the agent port: the check gives up
#    after dial_timeout_ms with an error naming the timeout, and cleans up.
t=agent-unreachable-times-out
write_test_config "$tmp/noagent.toml" "quiet palisade.agent_addr=vsock://-1:2000"
sed -i 's/dial_timeout_ms = .*/dial_timeout_ms = 15000/' "$tmp/noagent.toml"
start=$(date +%s)
text=$("$E2E_BIN/palisade" check --config "$tmp/noagent.toml" 2>&1); rc=$?
took=$(( $(date +%s) - start ))
if [ $rc -eq 0 ]; then fail $t "check passed without an agent"
elif ! grep -qE "15000 ?ms|15 ?s" <<<"$text"; then fail $t "the error does not name the timeout: $(tail -3 <<<"$text")"
elif [ "$(leftovers)" != "$before" ]; then fail $t "left behind: $(leftovers)"
else pass $t; echo "  gave up after ${took}s"; fi

# 6. A guest that dies during boot (no init to run): the check reports the
#    VM's exit at once instead of waiting for the timeout.
t=guest-death-is-reported
write_test_config "$tmp/noinit.toml" "quiet rdinit=/nonexistent init=/nonexistent"
text=$("$E2E_BIN/palisade" check --config "$tmp/noinit.toml" 2>&1); rc=$?
if [ $rc -eq 0 ]; then fail $t "check passed without an init"
elif ! grep -qiE "exit|reset|stopped" <<<"$text"; then fail $t "unclear error: $(tail -3 <<<"$text")"
elif [ "$(leftovers)" != "$before" ]; then fail $t "left behind: $(leftovers)"
else pass $t; fi

# 7. An SMP guest has a working local APIC timer on every CPU: the VMM
#    advertises the TSC-deadline mode KVM emulates, so Linux neither
#    calibrates the APIC timer against the PIT nor, when that check fails
#    under emulation, falls back to broadcasting the PIT's tick by IPI.
t=smp-guest-has-deadline-timers
"$E2E_BIN/containerd-shim-palisade-v2" __vmm --kernel "$E2E_OUT/vmlinux" --initrd "$E2E_OUT/initramfs.cpio.gz" \
    --kernel-params "printk.time=1" --vcpus 2 --memory-mib 128 --serial-log "$tmp/smp.log" \
    --vsock-uds "$tmp/smp.sock" >"$tmp/smp.out" 2>"$tmp/smp.err" &
vmm=$!
deadline=$((SECONDS + 120))
until grep -q "boot-signal 2" "$tmp/smp.out" 2>/dev/null || ! kill -0 $vmm 2>/dev/null || [ $SECONDS -ge $deadline ]; do
    sleep 0.2
done
kill -TERM $vmm 2>/dev/null; wait $vmm 2>/dev/null
if ! grep -q "boot-signal 2" "$tmp/smp.out"; then
    fail $t "the agent never became ready: $(cat "$tmp/smp.err"); console: $(tail -5 "$tmp/smp.log")"
elif ! grep -q "smp: Brought up 1 node, 2 CPUs" "$tmp/smp.log"; then
    fail $t "the guest did not bring up 2 CPUs: $(grep -a 'smp:' "$tmp/smp.log")"
elif ! grep -q "TSC deadline timer available" "$tmp/smp.log"; then
    fail $t "the guest has no TSC-deadline timer"
elif grep -qE "APIC timer disabled|lapic is not functional" "$tmp/smp.log"; then
    fail $t "the guest disabled its APIC timer: $(grep -aE 'APIC timer|lapic' "$tmp/smp.log" | head -3)"
else
    pass $t
fi
