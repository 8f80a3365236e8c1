#!/bin/bash
# Self-test of the nested KVM test host (tests/testhost/run) and of
# tests/lib/kvm-kind and tests/lib/with-kvm. Boots the test host about nine
# times (a few minutes under TCG). Ends with "N passed, N failed"; exits
# non-zero when anything failed.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
run=$here/run

pass=0 fail=0
ok()  { pass=$((pass + 1)); echo "ok   - $*"; }
bad() { fail=$((fail + 1)); echo "FAIL - $*"; }
check() {  # description, then a command: ok if it succeeds
    local what=$1; shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}

# Every run gets this private TMPDIR, so leftovers are easy to see.
work=$(mktemp -d /tmp/palisade-testhost-selftest.XXXXXX)
export TMPDIR=$work/tmp
mkdir -p "$TMPDIR"
trap 'rm -rf "$work"' EXIT

no_leftovers() {  # what
    local left procs
    left=$(ls -A "$TMPDIR")
    # Processes that still refer to our TMPDIR (qemu, tail, sleep).
    procs=$(pgrep -af -- "$TMPDIR" | grep -v pgrep)
    if [ -z "$left" ] && [ -z "$procs" ]; then
        ok "no temp dirs or processes left behind ($1)"
    else
        bad "leftovers after $1: dirs: ${left:-none}; processes: ${procs:-none}"
        rm -rf "${TMPDIR:?}"/*
    fi
}

echo "# preparing assets"
if assets=$("$here/prepare.sh"); then ok "prepare.sh -> $assets"; else bad "prepare.sh"; fi
if [ "$("$here/prepare.sh" 2>/dev/null)" = "$assets" ]; then ok "prepare.sh is idempotent"; else bad "prepare.sh gave another dir"; fi
for f in vmlinuz initrd.img info; do
    check "asset $f exists" test -s "$assets/$f"
done

echo "# usage errors (no boot)"
"$run" >/dev/null 2>&1; check "no command: exit 2" test $? = 2
"$run" --timeout abc -- true >/dev/null 2>&1; check "bad --timeout: exit 2" test $? = 2

echo "# (a) exit code, stdout and stderr kept apart"
"$run" -- sh -c 'echo out; echo err >&2; exit 7' >"$work/a.out" 2>"$work/a.err"
rc=$?
check "exit code 7 (got $rc)" test "$rc" = 7
check "stdout is exactly 'out' (got: $(head -c 200 "$work/a.out"))" test "$(cat "$work/a.out")" = out
check "stderr is exactly 'err' (got: $(head -c 200 "$work/a.err"))" test "$(cat "$work/a.err")" = err
no_leftovers "(a)"

echo "# (b,c) KVM inside, cwd, environment, writable places"
cd "$repo/tests/testhost" || exit 1
PALISADE_SELFTEST_VAR='a b$c' "$run" --env EXTRA_VAR=xyz -- bash -c '
    echo "cwd=$PWD"
    [ -c /dev/kvm ] && echo kvm-dev
    { : <>/dev/kvm; } 2>/dev/null && echo kvm-open
    # KVM_GET_API_VERSION (0xAE00) must be 12; KVM_CREATE_VM (0xAE01) gives a VM fd.
    perl -e "open(my \$k, q(+<), q(/dev/kvm)) or exit 1;
             my \$v = ioctl(\$k, 0xAE00, 0); print qq(kvm-api=\$v\n);
             my \$vm = ioctl(\$k, 0xAE01, 0); print qq(kvm-create-vm\n) if defined \$vm;"
    dmesg | grep -qi "nested virtualization enabled" && echo kvm-nested
    dmesg | grep -qi "nested paging enabled" && echo kvm-npt
    echo "var=$PALISADE_SELFTEST_VAR"
    echo "extra=$EXTRA_VAR"
    echo "testhost=$PALISADE_TESTHOST"
    echo "home=$HOME"
    touch /tmp/x /var/tmp/x /root/x /etc/x /var/lib/x /var/lib/containerd/x /run/x /var/log/x && echo writable
    touch /usr/x 2>/dev/null || echo usr-readonly
    test -d /var/cache/palisade/testhost && echo cache-visible
    modprobe -n -q dummy && echo modprobe
    [ -c /dev/vhost-vsock ] && echo vhost-vsock
    stat -f -c %T /sys/fs/cgroup | grep -q cgroup2 && echo cgroup2
    ip -o link show lo | grep -q UP && echo lo-up
    [ "$(hostname)" = testhost ] && echo hostname
' >"$work/b.out" 2>"$work/b.err"
rc=$?
check "inside checks ran (exit $rc; stderr: $(head -c 300 "$work/b.err"))" test "$rc" = 0
has() { grep -qxF -- "$1" "$work/b.out"; }
check "(c) cwd preserved ($(grep '^cwd=' "$work/b.out"))" has "cwd=$repo/tests/testhost"
check "(b) /dev/kvm exists" has kvm-dev
check "(b) /dev/kvm opens read-write" has kvm-open
check "(b) KVM_GET_API_VERSION is 12" has kvm-api=12
check "(b) KVM_CREATE_VM works" has kvm-create-vm
check "(b) dmesg: nested virtualization enabled" has kvm-nested
check "(b) dmesg: nested paging enabled" has kvm-npt
check "PALISADE_* variables pass through" has 'var=a b$c'
check "--env passes a variable" has extra=xyz
check "PALISADE_TESTHOST=1 inside" has testhost=1
check "HOME=/root" has home=/root
check "/tmp /var/tmp /root /etc /var/lib /run /var/log writable" has writable
check "/usr read-only" has usr-readonly
check "the asset cache is visible" has cache-visible
check "modprobe finds the test host's modules" has modprobe
check "vhost-vsock is available" has vhost-vsock
check "cgroup2 on /sys/fs/cgroup" has cgroup2
check "loopback up" has lo-up
check "hostname testhost" has hostname
cd - >/dev/null || exit 1
no_leftovers "(b,c)"

echo "# (c) a cwd that the test host covers with tmpfs, --rw, --out"
mkdir -p "$work/cwd" "$work/rw" "$work/out"
echo hello-from-host > "$work/cwd/file"
(cd "$work/cwd" && "$run" --rw "$work/rw" --out "$work/out" -- sh -c \
    'pwd; cat file; echo written > '"$work/rw"'/f; echo result > "$PALISADE_TESTHOST_OUT/r"') \
    >"$work/c.out" 2>"$work/c.err"
rc=$?
check "exit 0 (got $rc; stderr: $(head -c 300 "$work/c.err"))" test "$rc" = 0
check "cwd under /tmp preserved" test "$(sed -n 1p "$work/c.out")" = "$work/cwd"
check "host files in that cwd visible" test "$(sed -n 2p "$work/c.out")" = hello-from-host
check "--rw share written through" test "$(cat "$work/rw/f" 2>/dev/null)" = written
check "--out results copied back" test "$(cat "$work/out/r" 2>/dev/null)" = result
no_leftovers "--rw/--out"

echo "# large output, stdout/stderr separation, death by signal"
"$run" -- bash -c 'seq 1 200000; seq 1 5000 >&2; kill -9 $$' >"$work/l.out" 2>"$work/l.err"
rc=$?
check "killed by SIGKILL: exit 137 (got $rc)" test "$rc" = 137
check "2 MB of stdout intact" test "$(md5sum < "$work/l.out")" = "$(seq 1 200000 | md5sum)"
check "stderr intact" test "$(md5sum < "$work/l.err")" = "$(seq 1 5000 | md5sum)"
no_leftovers "large output"

echo "# timeout"
start=$(date +%s)
"$run" --timeout 20 -- sleep 600 >/dev/null 2>"$work/t.err"
rc=$?
took=$(( $(date +%s) - start ))
check "timeout: exit 124 (got $rc)" test "$rc" = 124
check "timeout: took ${took}s (<= 60)" test "$took" -le 60
check "timeout: says so" grep -q "timed out" "$work/t.err"
no_leftovers "timeout"

echo "# a hung test host (its heartbeat stopped): the watchdog ends the run"
# The command stops /init's heartbeat loop (the only process the test host
# protects from the OOM killer), as a test host spinning in its kernel
# would; the run must end with 125 soon after the hang limit, not at its
# timeout, and say why.
start=$(date +%s)
PALISADE_TESTHOST_HANG_TIMEOUT=20 "$run" --timeout 300 -- sh -c '
    for p in /proc/[0-9]*; do
        [ "$(cat "$p/oom_score_adj" 2>/dev/null)" = -1000 ] && kill -STOP "${p#/proc/}"
    done
    sleep 600' >/dev/null 2>"$work/h.err"
rc=$?
took=$(( $(date +%s) - start ))
check "hang: exit 125 (got $rc)" test "$rc" = 125
check "hang: took ${took}s (<= 120, not the 300 s timeout)" test "$took" -le 120
check "hang: says so ($(grep -m1 'no progress' "$work/h.err"))" grep -q "the test host made no progress for" "$work/h.err"
check "hang: shows the vCPUs' registers" grep -q "vCPU 0: RIP=" "$work/h.err"
no_leftovers "hang"

echo "# interrupted (SIGTERM while the command runs)"
"$run" -- sleep 600 >/dev/null 2>&1 &
rpid=$!
for _ in $(seq 1 240); do
    ls "$TMPDIR"/*/results/started >/dev/null 2>&1 && break
    sleep 0.5
done
kill -TERM "$rpid"
wait "$rpid"
rc=$?
check "SIGTERM: exit 143 (got $rc)" test "$rc" = 143
no_leftovers "SIGTERM"

echo "# run SIGKILLed: QEMU must not outlive it"
"$run" -- sleep 600 >/dev/null 2>&1 &
rpid=$!
for _ in $(seq 1 240); do
    ls "$TMPDIR"/*/results/started >/dev/null 2>&1 && break
    sleep 0.5
done
kill -KILL "$rpid"
wait "$rpid" 2>/dev/null
sleep 2
procs=$(pgrep -af -- "$TMPDIR" | grep -v pgrep)
check "SIGKILL: no QEMU or helper left (${procs:-none})" test -z "$procs"
for p in $(pgrep -f -- "$TMPDIR/palisade-testhost"); do kill -KILL "$p"; done
rm -rf "${TMPDIR:?}"/*   # a SIGKILLed run cannot remove its temp dir

echo "# a test host that does not boot in time"
PALISADE_TESTHOST_BOOT_TIMEOUT=1 "$run" -- true >"$work/f.out" 2>"$work/f.err"
rc=$?
check "boot failure: exit 125 (got $rc)" test "$rc" = 125
check "boot failure: says so" grep -q "did not start the command" "$work/f.err"
no_leftovers "boot failure"

echo "# tests/lib"
kind=$("$repo/tests/lib/kvm-kind")
check "kvm-kind prints hardware, pvm or none (got $kind)" test "$kind" = hardware -o "$kind" = pvm -o "$kind" = none
out=$(PALISADE_FORCE_KVM_KIND=hardware "$repo/tests/lib/with-kvm" -- sh -c 'echo direct; exit 3')
rc=$?
check "with-kvm runs directly on hardware (exit $rc, '$out')" test "$rc" = 3 -a "$out" = direct
out=$(PALISADE_FORCE_KVM_KIND=pvm "$repo/tests/lib/with-kvm" -- sh -c '"$0"; exit 4' "$repo/tests/lib/kvm-kind")
rc=$?
check "with-kvm uses the test host on pvm, where kvm-kind says hardware (exit $rc, '$out')" \
    test "$rc" = 4 -a "$out" = hardware
no_leftovers "with-kvm"

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
