# The VMM's seccomp filters on a real pod (sourced by
# tests/e2e/hostile-guest.sh): every thread of a pod's VMM runs filtered
# (Seccomp: 2, one filter, no_new_privs) while guest root works the share
# through every virtio-fs path and the vsock streams; `seccomp = "log"`
# still runs a pod; and a VMM killed by SIGSYS is reported by the shim
# with the cause. (A real violation is tested on the host, where
# vmm/src/seccomp/tests.rs makes one in a filtered child: a release VMM
# has no hook to make one on demand, by design.)

HOSTILE_TESTS+=(seccomp-every-thread seccomp-log-mode seccomp-sigsys-reported)
LIMIT_seccomp_every_thread=300

# Every task of process PID: "tid name Seccomp filters NoNewPrivs" lines;
# fails if any is not filtered as designed (Seccomp 2, FILTERS filters,
# NoNewPrivs 1).
seccomp_check_threads() {  # PID FILTERS
    local t name mode filters nnp bad_threads='' n=0
    for t in /proc/"$1"/task/*; do
        name=$(cat "$t/comm" 2>/dev/null) || continue
        mode=$(sed -n 's/^Seccomp:[[:space:]]*//p' "$t/status")
        filters=$(sed -n 's/^Seccomp_filters:[[:space:]]*//p' "$t/status")
        nnp=$(sed -n 's/^NoNewPrivs:[[:space:]]*//p' "$t/status")
        n=$((n + 1))
        [ "$mode" = 2 ] && [ "$filters" = "$2" ] && [ "$nnp" = 1 ] ||
            bad_threads+=" ${t##*/}($name: Seccomp $mode, filters $filters, NoNewPrivs $nnp)"
    done
    [ "$n" -ge 2 ] || bad "the VMM (pid $1) has $n threads; a vCPU and the event loop at least"
    [ -z "$bad_threads" ] || bad "VMM threads not filtered as designed:$bad_threads"
    note "$n VMM threads, each Seccomp 2 with $2 filter(s) and NoNewPrivs 1"
}

# The VMM must not have died of SIGSYS (its own filter) during a test.
seccomp_no_sigsys_in_log() {
    ! grep -q -e 'seccomp violation' -e 'killed by its seccomp filter' "$CTD_LOG" ||
        bad "a VMM was killed by its own filter: $(grep -m1 -e 'seccomp violation' -e 'killed by its seccomp filter' "$CTD_LOG")"
}

# Guest root works the share through every FUSE request the passthrough
# serves (lookup, create, mkdir, mknod of a fifo, symlink, link, rename,
# setattr (chmod, chown, truncate, utimes), write, read, fallocate,
# fsync, readdir, readlink, statfs, unlink, rmdir), and the pod runs
# execs (vsock streams): the VMM stays up, every thread filtered.
t_seccomp_every_thread() {
    local pod vmm d out
    pod=$(tid 0)
    # The share's root is a read-only view; the container's own rootfs in
    # it is writable, so the work goes there.
    d=/mnt/$pod/rootfs/tmp/seccomp-work
    start_attacker "$pod" "$pod" "
        mkdir -p $d/a/b && cd $d || exit 1
        for i in 1 2 3 4 5 6 7 8 9 10; do echo data\$i >a/f\$i; done
        cat a/f* >/dev/null && dd if=/dev/zero of=big bs=64k count=16 2>/dev/null && sync
        ln -s a/f1 sym && readlink sym && ln a/f2 hard && mv a/f3 a/b/moved && mkfifo fifo
        chmod 600 a/f4 && chown 1000:1000 a/f5 && touch -d '2001-01-01' a/f6 && truncate -s 1 a/f7
        fallocate -l 65536 falloc 2>/dev/null || echo no-fallocate
        ls -laR $d >/dev/null && df /mnt >/dev/null && stat a/f1 >/dev/null
        su -s /bin/sh nobody -c 'ls $d' >/dev/null 2>&1
        dd if=big of=/dev/null bs=4k 2>/dev/null
        rm -rf a sym hard fifo big falloc && ls $d
        echo WORK-DONE"
    wait_until 120 grep_attack_log "$pod" ATTACK-DONE ||
        bad "the share work did not finish: $(attack_log "$pod" | tail -n 5)"
    grep_attack_log "$pod" WORK-DONE || bad "the share work failed: $(attack_log "$pod" | tail -n 5)"
    out=$(exec_ --exec-id "s$RANDOM" "$pod" sh -c 'echo exec-ok; uname -r' 2>&1)
    case $out in *exec-ok*) ;; *) bad "exec in the pod failed: $out" ;; esac
    vmm=$(pod_vmm_pid "$pod") || bad "the pod's VMM is gone after the share work"
    seccomp_check_threads "$vmm" 1
    seccomp_no_sigsys_in_log
    remove_container "$pod"
}

# seccomp = "log": the filters are installed (mode 2) but only log; the
# pod runs and answers.
t_seccomp_log_mode() {
    local pod cfg vmm out saved=("${RUNTIME_OPTS[@]}")
    pod=$(tid 0)
    cfg=$E2E_TMP/$TEST.toml
    vmm_limits_config "$cfg" 'seccomp="log"'
    RUNTIME_OPTS=(--runtime-config-path "$cfg")
    start_in_pod "$pod" "$pod" sleep 100000
    out=$(exec_ --exec-id "s$RANDOM" "$pod" sh -c 'echo log-mode-ok > /f && cat /f' 2>&1)
    RUNTIME_OPTS=("${saved[@]}")
    case $out in *log-mode-ok*) ;; *) bad "exec in a log-mode pod failed: $out" ;; esac
    vmm=$(pod_vmm_pid "$pod") || bad "the log-mode pod's VMM is gone"
    seccomp_check_threads "$vmm" 1
    remove_container "$pod"
}

# SIGSYS to a pod's VMM from outside (kill -SYS): the VMM's handler says
# who sent it and dies of SIGSYS; the shim logs the cause and the pod's
# task ends, as after any VMM death. This is the reporting path a real
# violation takes too (vmm/src/seccomp/tests.rs shows the handler's line
# for one; shim/src/vmm_process/supervisor.rs the shim's message).
t_seccomp_sigsys_reported() {
    local pod vmm
    pod=$(tid 0)
    start_in_pod "$pod" "$pod" sleep 100000
    vmm=$(pod_vmm_pid "$pod") || bad "no VMM for the pod"
    kill -SYS "$vmm"
    wait_until "$CT" _seccomp_status_is "$pod" STOPPED ||
        bad "the task is '$(task_status "$pod")' ${CT}s after its VMM got SIGSYS"
    wait_until 10 grep -q "killed by SIGSYS, sent by pid" "$CTD_LOG" ||
        bad "the shim did not report the SIGSYS death: $(grep -m3 -i 'vmm' "$CTD_LOG" | tail -n 3)"
    note "shim: $(grep -m1 -o 'the VMM process.*killed by SIGSYS[^"]*' "$CTD_LOG")"
    remove_container "$pod"
}
_seccomp_status_is() { [ "$(task_status "$1")" = "$2" ]; }
