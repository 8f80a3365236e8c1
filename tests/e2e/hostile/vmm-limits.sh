# Attacks on the host through what the pod's VMM holds for its guest
# (sourced by tests/e2e/hostile-guest.sh): the guest console, which the
# VMM writes to a log on the host's /run, and the virtio-fs server's open
# files. Each pod runs with small limits of its own (a configuration of
# the test's, given with --runtime-config-path) so the nested test host
# reaches them in seconds; the limits themselves are the same code at any
# size.

HOSTILE_TESTS+=(console-flood fd-exhaustion)
# How long the guest floods its console (the issue asks for 60 s).
VMM_LIMITS_FLOOD_SECS=${E2E_FLOOD_SECS:-60}
LIMIT_console_flood=$((VMM_LIMITS_FLOOD_SECS + 240))
LIMIT_fd_exhaustion=480
# palisade_vmm::OPEN_FILE_RESERVE: the fds RLIMIT_NOFILE leaves the VMM
# beyond the share's cap (1024 vsock connections, 32 vCPUs, 128 others).
VMM_LIMITS_FD_RESERVE=1184

# The suite's configuration with [hypervisor] KEY = VALUE set, in OUT.
vmm_limits_config() {  # OUT KEY=VALUE...
    local out=$1 kv drop=() add=''
    shift
    for kv in "$@"; do
        drop+=(-e "/^${kv%%=*} *=/d")
        add+="${kv%%=*} = ${kv#*=}\n"
    done
    sed "${drop[@]}" "$E2E_TMP/configuration.toml" |
        awk -v add="$add" '{ print } /^\[hypervisor\][ \t]*$/ { printf "%s", add }' >"$out"
    for kv in "$@"; do
        grep -qx "${kv%%=*} = ${kv#*=}" "$out" ||
            bad "cannot set ${kv%%=*} in $out: the suite's configuration has no [hypervisor] section"
    done
}
# Guest root with the whole share at /mnt, as the runner's start_attacker,
# but making /mnt first (the busybox image has none) and with its log,
# /attack.log, read on the host through the share (its path is left in
# VMM_LIMITS_ATTACK_LOG): a guest at its open-file cap cannot run the
# `cat` that attack_log does.
vmm_limits_start_attacker() {  # POD SCRIPT
    local log=/run/palisade/$1/shared/$1/rootfs/attack.log
    VMM_LIMITS_ATTACK_LOG=$log
    RUN_OPTS=(--privileged)
    start_in_pod "$1" "$1" sh -c "mkdir -p /mnt && mount -t virtiofs palisade /mnt || { echo MOUNT-FAILED >/attack.log; sleep 100000; }
echo MOUNTED >/attack.log
( $2 ) >>/attack.log 2>&1
echo ATTACK-DONE >>/attack.log
sleep 100000"
    RUN_OPTS=()
    wait_until 60 grep -q -e MOUNTED -e MOUNT-FAILED "$log" ||
        bad "the attacker's log did not appear at $log on the host"
    grep -q MOUNTED "$log" || bad "the attacker could not mount the share: $(cat "$log")"
}
vmm_limits_size() { stat -c %s "$1" 2>/dev/null || echo 0; }
vmm_limits_fds() { local f=("/proc/$1/fd/"*); echo "${#f[@]}"; }

# The guest writes its serial console as fast as it can for 60 s (a tty
# node for the 8250 the kernel's console is on, made in the container's
# /dev): console.log and console.log.1 together stay within the cap all
# along, the newest output is kept, and the pod answers afterwards.
t_console_flood() {
    local pod cfg log rotated cap_kib=64 cap size max=0 ino last_ino='' rotations=0 end out
    pod=$(tid 0)
    cap=$((cap_kib * 1024))
    cfg=$E2E_TMP/$TEST.toml
    vmm_limits_config "$cfg" console_log_max_kib=$cap_kib
    RUNTIME_OPTS=(--runtime-config-path "$cfg")
    log=/run/palisade/$pod/console.log
    rotated=$log.1
    RUN_OPTS=(--privileged)
    start_in_pod "$pod" "$pod" sh -c "
        mknod /dev/flood-ttyS0 c 4 64 || { echo NO-TTY >/flood.log; sleep 100000; }
        echo FLOOD-START >/dev/flood-ttyS0
        timeout $VMM_LIMITS_FLOOD_SECS yes 'console-flood: the guest writes its console as fast as it can' >/dev/flood-ttyS0
        echo FLOOD-END >/dev/flood-ttyS0
        echo FLOOD-END >/flood.log
        sleep 100000"
    RUN_OPTS=()
    end=$((SECONDS + VMM_LIMITS_FLOOD_SECS + 120))
    while :; do
        size=$(($(vmm_limits_size "$log") + $(vmm_limits_size "$rotated")))
        [ "$size" -le "$max" ] || max=$size
        [ "$size" -le "$cap" ] || bad "console.log and console.log.1 hold $size bytes, over the cap of $cap"
        ino=$(stat -c %i "$rotated" 2>/dev/null)
        if [ -n "$ino" ] && [ "$ino" != "$last_ino" ]; then
            rotations=$((rotations + 1))
            last_ino=$ino
        fi
        grep -qa FLOOD-END "$log" "$rotated" 2>/dev/null && break
        [ "$(task_status "$pod")" = RUNNING ] ||
            bad "the pod died during the flood (task '$(task_status "$pod")'): $(grep -a "$pod" "$CTD_LOG" | grep -a -i -e 'VMM' -e 'guest' | tail -n 3 | cut -c1-300 | tr '\n' ' ')"
        [ $SECONDS -lt $end ] || bad "the flood did not end within $((VMM_LIMITS_FLOOD_SECS + 120))s (its tty: $(exec_ --exec-id "f$RANDOM" "$pod" cat /flood.log 2>&1))"
        sleep 1
    done
    note "console log at most $max of $cap bytes; console.log.1 replaced $rotations times (about $((rotations * cap / 2 / VMM_LIMITS_FLOOD_SECS)) bytes/s reached the log)"
    [ "$rotations" -ge 2 ] || bad "the log was rotated $rotations times: the flood did not reach the cap, nothing was shown"
    grep -qa 'console-flood: the guest' "$log" "$rotated" || bad "no flood output in the console log: the attack did not reach the serial port"
    out=$(exec_ --exec-id "alive$RANDOM" "$pod" echo pod-answers 2>&1)
    [ "$out" = pod-answers ] || bad "the pod does not answer after the flood: $out"
    size=$(($(vmm_limits_size "$log") + $(vmm_limits_size "$rotated")))
    [ "$size" -le "$cap" ] || bad "console.log and console.log.1 hold $size bytes after the flood, over the cap of $cap"
}

# Guest root creates files in the share until refused: every one of them is
# an inode the guest keeps, and an fd the VMM holds for it. The guest gets
# "Too many open files (in system)", the VMM's fd count stays within the
# cap plus its reserve (its RLIMIT_NOFILE says so too), and once the
# attacker removes its files the pod creates files again.
t_fd_exhaustion() {
    local pod cfg cap=512 bound vmm limits fds_before fds_held fds_after attack_log end out
    pod=$(tid 0)
    cfg=$E2E_TMP/$TEST.toml
    vmm_limits_config "$cfg" virtio_fs_max_open_files=$cap
    RUNTIME_OPTS=(--runtime-config-path "$cfg")
    # Far past what the VMM may hold, so a VMM without a cap is caught.
    bound=$((cap + VMM_LIMITS_FD_RESERVE + 100))
    # While the guest is at the cap it cannot open a file, so it reads no
    # signal from the test and runs no program (exec opens the binary):
    # it waits on a FIFO in its /dev (a tmpfs, not the share), holds 7
    # files open to close when it lets go (room for rm to run), holds the
    # cap for 20 s and then lets go by itself. Files are made with `true`,
    # not `:`: a failed redirection of a special built-in ends the shell.
    vmm_limits_start_attacker "$pod" "
        d=/mnt/$pod/rootfs/tmp/fd-flood
        mkdir -p \$d && mkfifo /dev/fd-flood-wait || exit 1
        for n in 3 4 5 6 7 8 9; do true >\$d/keep\$n; done
        exec 3<\$d/keep3 4<\$d/keep4 5<\$d/keep5 6<\$d/keep6 7<\$d/keep7 8<\$d/keep8 9<\$d/keep9
        while [ ! -e /go ]; do read -t 1 x <>/dev/fd-flood-wait; done
        i=0
        while [ \$i -lt $bound ] && true >\$d/f\$i; do i=\$((i + 1)); done
        echo CREATED \$i
        read -t 20 x <>/dev/fd-flood-wait
        exec 3<&- 4<&- 5<&- 6<&- 7<&- 8<&- 9<&-
        rm -rf \$d
        echo RELEASED"
    attack_log=$VMM_LIMITS_ATTACK_LOG
    vmm=$(pod_vmm_pid "$pod") || bad "no VMM process for pod $pod"
    limits=$(awk '/^Max open files/ { print $4, $5 }' "/proc/$vmm/limits")
    fds_before=$(vmm_limits_fds "$vmm")
    exec_ --exec-id "go$RANDOM" "$pod" touch /go || bad "cannot start the attack"
    end=$((SECONDS + 300))
    until grep -q -e '^CREATED' -e '^ATTACK-DONE' "$attack_log"; do
        [ $SECONDS -lt $end ] || bad "the attacker did not finish creating files in 300s: $(tail -n 3 "$attack_log")"
        sleep 1
    done
    grep -q '^CREATED' "$attack_log" || bad "the attack did not run: $(tail -n 3 "$attack_log")"
    fds_held=$(vmm_limits_fds "$vmm")
    note "VMM fds: $fds_before before, $fds_held at the cap of $cap (RLIMIT_NOFILE $limits); attacker: $(grep -e CREATED -e 'open files' "$attack_log" | tr -s ' \n' ' ')"
    [ "$limits" = "$((cap + VMM_LIMITS_FD_RESERVE)) $((cap + VMM_LIMITS_FD_RESERVE))" ] ||
        bad "the VMM's RLIMIT_NOFILE is '$limits' (soft, hard), not the cap plus the reserve, $((cap + VMM_LIMITS_FD_RESERVE))"
    [ "$fds_held" -le $((cap + VMM_LIMITS_FD_RESERVE)) ] ||
        bad "the VMM holds $fds_held fds, over the cap plus the reserve ($((cap + VMM_LIMITS_FD_RESERVE)))"
    grep -q "^CREATED $bound\$" "$attack_log" && bad "the guest created $bound files and was never refused"
    grep -q 'Too many open files' "$attack_log" ||
        bad "the guest was refused with something else than ENFILE/EMFILE: $(grep -v -e MOUNTED -e CREATED "$attack_log" | tail -n 2)"
    end=$((SECONDS + 120))
    until grep -q '^RELEASED' "$attack_log"; do
        [ $SECONDS -lt $end ] || bad "the attacker did not let go within 120s: $(tail -n 3 "$attack_log")"
        sleep 1
    done
    out=$(exec_ --exec-id "after$RANDOM" "$pod" sh -c 'echo again >/tmp/after-flood && cat /tmp/after-flood' 2>&1)
    [ "$out" = again ] || bad "the pod cannot create files after the attacker let go: $out"
    fds_after=$(vmm_limits_fds "$vmm")
    note "VMM fds after the attacker let go: $fds_after"
    [ "$fds_after" -lt "$fds_held" ] || bad "the VMM still holds $fds_after fds after the guest removed its files ($fds_held at the cap)"
}
