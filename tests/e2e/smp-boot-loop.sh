#!/usr/bin/env bash
# Boots the guest N times with several vCPUs and counts how each boot ends:
# ok (the agent signalled ready: boot-signal 2), reset (the guest reset or
# triple-faulted before that), hang (no ready within the timeout), or error
# (the VMM failed). Needs real KVM: run it through tests/lib/with-kvm.
#
#   tests/e2e/smp-boot-loop.sh [-q] [-b BINDIR] [-n BOOTS] [-c VCPUS] [-t TIMEOUT_S] [-p PARAMS] [-k DIR]
#
# -b takes containerd-shim-palisade-v2 from BINDIR instead of target/release
# (to compare two builds in one test host session). Each ok palisade boot
# reports the VMM's own time from its start to the agent's ready signal.
# -q boots the same kernel and initramfs with QEMU's microvm machine on the
# same KVM instead (the peer to tell a VMM bug from one below it); a boot
# is ok when the agent prints its ready line on the serial console.
# -p sets the guest kernel parameters (default "printk.time=1": the serial
# log shows how far a failed boot got).
# -k keeps the serial log and VMM output of every failed boot in DIR; the
# running boot's serial log is DIR/current.console.log (on a shared DIR, it
# can be read from outside a test host that hangs).
# Ends with "N passed, N failed" (passed = ok boots).
set -u
. "$(dirname "$0")/lib.sh"

boots=20 vcpus=2 timeout=90 keep= params=printk.time=1 qemu=
while getopts qb:n:c:t:p:k: opt; do
    case $opt in
        q) qemu=1 ;;
        b) E2E_BIN=$OPTARG ;;
        n) boots=$OPTARG ;;
        c) vcpus=$OPTARG ;;
        t) timeout=$OPTARG ;;
        p) params=$OPTARG ;;
        k) keep=$OPTARG ;;
        *) exit 2 ;;
    esac
done

if [ "$(cat /sys/module/kvm_pvm/initstate 2>/dev/null)" = live ] || [ ! -c /dev/kvm ]; then
    echo "FAIL smp-boot-loop: no hardware-style /dev/kvm here; run this through tests/lib/with-kvm"
    exit 1
fi

tmp=$(mktemp -d /tmp/palisade-smp.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
serial=$tmp/console.log
if [ -n "$keep" ]; then
    mkdir -p "$keep"
    serial=$keep/current.console.log
fi
ok=0 reset=0 hang=0 error=0
for i in $(seq 1 "$boots"); do
    rm -f "$tmp"/* "$serial"
    start=$SECONDS
    if [ -n "$qemu" ]; then
        # The VMM's base command line (vmm/src/vmm.rs), as the boot benchmark
        # gives QEMU.
        qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=off -enable-kvm -cpu host \
            -m 256 -smp "$vcpus" -kernel "$E2E_OUT/vmlinux" -initrd "$E2E_OUT/initramfs.cpio.gz" \
            -append "console=ttyS0 8250.nr_uarts=1 reboot=k panic=-1 pci=off nomodule no_timer_check rdinit=/init $params" \
            -nodefaults -no-user-config -nographic -no-reboot -serial "file:$serial" \
            >"$tmp/vmm.err" 2>&1 </dev/null &
        ready="palisade-agent: ready"
        ready_in=$serial
    else
        "$E2E_BIN/containerd-shim-palisade-v2" __vmm --kernel "$E2E_OUT/vmlinux" \
            --initrd "$E2E_OUT/initramfs.cpio.gz" --kernel-params "$params" \
            --vcpus "$vcpus" --memory-mib 256 --serial-log "$serial" \
            --vsock-uds "$tmp/v.sock" >"$tmp/vmm.out" 2>"$tmp/vmm.err" &
        ready="boot-signal 2"
        ready_in=$tmp/vmm.out
    fi
    vmm=$!
    deadline=$((SECONDS + timeout))
    while ! grep -q "$ready" "$ready_in" 2>/dev/null && kill -0 $vmm 2>/dev/null &&
        [ $SECONDS -lt $deadline ]; do
        sleep 0.2
    done
    if grep -q "$ready" "$ready_in" 2>/dev/null; then
        result=ok
        if [ -z "$qemu" ]; then
            # CLOCK_MONOTONIC ns on both lines (shim/src/vmm_process/protocol.rs).
            result="ok ($(awk '$1 == "started" {s = $2} $1 == "event" && $2 == "boot-signal" && $3 == 2 {
                printf "ready %d ms", ($4 - s) / 1e6; exit}' "$tmp/vmm.out"))"
        fi
        ok=$((ok + 1))
    elif kill -0 $vmm 2>/dev/null; then
        result=hang
        hang=$((hang + 1))
    elif [ -n "$qemu" ] || grep -q "exit guest-reset" "$tmp/vmm.out"; then
        # QEMU runs with -no-reboot: it exits when the guest resets.
        result=reset
        reset=$((reset + 1))
    else
        result=error
        error=$((error + 1))
    fi
    kill -TERM $vmm 2>/dev/null
    # A VMM that ignores SIGTERM is a failure of its own: do not wait forever.
    for _ in $(seq 50); do kill -0 $vmm 2>/dev/null || break; sleep 0.1; done
    if kill -0 $vmm 2>/dev/null; then
        kill -KILL $vmm
        result="$result+vmm-ignored-sigterm"
    fi
    wait $vmm 2>/dev/null
    last=$(grep -a . "$serial" 2>/dev/null | tail -1 | tr -d '\r' | cut -c1-150)
    echo "boot $i: $result in $((SECONDS - start))s; last console line: $last"
    if [ "${result%% *}" != ok ] && [ -n "$keep" ]; then
        cp "$serial" "$keep/boot$i.console.log" 2>/dev/null
        for f in vmm.out vmm.err; do cp "$tmp/$f" "$keep/boot$i.$f" 2>/dev/null; done
    fi
done
what=palisade
[ -n "$qemu" ] && what="QEMU microvm"
echo "smp-boot-loop: $boots boots of $what with $vcpus vCPUs: ok $ok, reset $reset, hang $hang, error $error"
echo "$ok passed, $((boots - ok)) failed"
[ "$ok" -eq "$boots" ]
