#!/usr/bin/env bash
# Runs the agent's container tests (tests/containers.rs) inside palisade's
# own guest kernel, under QEMU's software emulator: the guest paths a host
# cannot exercise get run for real there:
#   - the root is the initramfs ("rootfs"), which pivot_root(2) refuses to
#     move (rootfs.rs works around it);
#   - cgroup v2 with the cpu, memory, pids, io and cpuset controllers
#     (limits, stats, OOM kill events, freeze);
#   - the guest kernel's own config (namespaces, seccomp, devpts).
# The agent runs in host mode there (--listen unix://), started by the test
# binary; the boot-time PID 1 path is covered by tests/pid1_namespace.rs and
# tests/e2e.
#
# Needs: qemu-system-x86_64, cpio, /bin/busybox (static), a built guest
# kernel (guest-kernel/build.sh -> target/palisade/vmlinux). No /dev/kvm:
# TCG is slow (a minute or two) but works on any machine.
#
# Usage: agent/tests/in-guest.sh [TEST-NAME-FILTER]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=x86_64-unknown-linux-gnu
kernel=$repo/target/palisade/vmlinux
filter=${1:-}

die() { printf 'in-guest: %s\n' "$*" >&2; exit 1; }
[ -f "$kernel" ] || die "no guest kernel at $kernel; run guest-kernel/build.sh"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found (apt-get install qemu-system-x86)"
command -v cpio >/dev/null || die "cpio not found (apt-get install cpio)"
[ -x /bin/busybox ] || die "/bin/busybox not found (apt-get install busybox-static)"

# Static test binary and agent: the guest has no dynamic loader or libc.
# The test finds the agent at the absolute path cargo compiled into it.
test_bin=$(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo test --no-run --message-format=json -p palisade-agent --test containers --target "$target" 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*containers-[^"]*\)".*/\1/p' | tail -1)
[ -x "$test_bin" ] || die "building the static test binary failed (run the cargo command above to see why)"
agent=$repo/target/$target/debug/palisade-agent
[ -x "$agent" ] || die "no static agent at $agent"

work=$(mktemp -d /tmp/palisade-in-guest.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,proc,sys,dev,tmp,run,etc} "$root$(dirname "$agent")"
cp /bin/busybox "$root/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"; done
cp "$agent" "$root$agent"
cp "$test_bin" "$root/containers-test"
cat >"$root/init" <<EOF
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
for c in \$(cat /sys/fs/cgroup/cgroup.controllers); do echo "+\$c" >/sys/fs/cgroup/cgroup.subtree_control; done
echo "in-guest: kernel \$(uname -r), root \$(awk '\$5 == "/" {print \$9; exit}' /proc/self/mountinfo), cgroup2 controllers: \$(cat /sys/fs/cgroup/cgroup.subtree_control)"
PALISADE_TEST_CGROUP_ROOT=/sys/fs/cgroup /containers-test --test-threads=1 --include-ignored $filter 2>&1
echo "in-guest: tests exited \$?"
reboot -f
EOF
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc 2>/dev/null | gzip -1 >"$work/initrd.gz")

timeout 900 qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=off -accel tcg -cpu max -smp 2 -m 1024 \
    -nographic -no-reboot -kernel "$kernel" -initrd "$work/initrd.gz" \
    -append "console=ttyS0 8250.nr_uarts=1 reboot=k panic=-1 pci=off nomodule no_timer_check quiet rdinit=/init" \
    >"$work/console.log" 2>&1 || true
grep -E '^(in-guest:|test |test result:)' "$work/console.log" || true
if ! grep -q '^in-guest: tests exited 0' "$work/console.log"; then
    cp "$work/console.log" /tmp/palisade-in-guest-console.log
    sed -n '/^failures:/,/^test result:/p' "$work/console.log" | head -60
    echo "in-guest: FAILED; the whole console is in /tmp/palisade-in-guest-console.log" >&2
    exit 1
fi
