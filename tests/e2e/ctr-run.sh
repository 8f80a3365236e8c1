#!/usr/bin/env bash
# The ctr end-to-end suite: what `ctr` users do with a runtime, against a
# private containerd (tests/lib/containerd.sh) and the busybox test image.
#
#   RUNTIME=io.containerd.runc.v2 tests/e2e/ctr-run.sh [TEST...]   # the peer, anywhere
#   tests/lib/with-kvm -- env RUNTIME=io.containerd.palisade.v2 tests/e2e/ctr-run.sh
#
# TESTs: a subset by name (default: all; --list prints them). Prints `PASS name` or `FAIL name: why` per test and `ctr-run: N passed,
# N failed`; exits non-zero if any failed. Passing with runc validates the
# tests themselves. Every test has a timeout (E2E_TEST_TIMEOUT, and
# E2E_CMD_TIMEOUT per ctr command), removes its containers, and is checked
# for leftovers (containers, tasks, snapshots, mounts, shims, shim sockets,
# bundles, FIFOs, palisade sandboxes and VMMs). See tests/e2e/ctr-lib.sh.
#
# containerd 1.6.20's ctr has no `run --user` and no `task update`: the
# user test uses an image whose config says User 1000:1000 (and `task exec
# --user`), the update test calls the Update RPC through
# tests/lib/ctr-task-update.
set -u
. "$(dirname "$0")/ctr-lib.sh"

# --- run ---------------------------------------------------------------------------
t_run_echo() {
    local id out rc
    id=$(tid 1)
    out=$(run_ --rm "$BUSYBOX_IMAGE" "$id" echo hello 2>"$E2E_TMP/$TEST.err"); rc=$?
    [ $rc -eq 0 ] || bad "ctr run exited $rc: $(cat "$E2E_TMP/$TEST.err")"
    [ "$out" = hello ] || bad "printed '$out', want 'hello'"
}

t_run_exit_code() {
    local id rc
    id=$(tid 1)
    run_ --rm "$BUSYBOX_IMAGE" "$id" sh -c 'exit 3'; rc=$?
    [ $rc -eq 3 ] || bad "ctr run exited $rc, want 3 (the container's exit code)"
}

t_run_rm() {
    local id rc
    id=$(tid 1)
    run_ --rm "$BUSYBOX_IMAGE" "$id" true; rc=$?
    [ $rc -eq 0 ] || bad "ctr run exited $rc"
    ! ctr_ containers ls -q | grep -qx -- "$id" || bad "container $id still listed after --rm"
    ! ctr_ snapshots ls | grep -q -- "^$id " || bad "snapshot $id still there after --rm"
}

t_run_stdout_stderr() {
    local id out err
    id=$(tid 1)
    out=$(run_ --rm "$BUSYBOX_IMAGE" "$id" sh -c 'echo to-out; echo to-err >&2' 2>"$E2E_TMP/$TEST.err")
    err=$(cat "$E2E_TMP/$TEST.err")
    [ "$out" = to-out ] || bad "stdout was '$out', want 'to-out'"
    [ "$err" = to-err ] || bad "stderr was '$err', want 'to-err'"
}

t_env() {
    local id out
    id=$(tid 1)
    out=$(run_ --rm --env FOO=bar "$BUSYBOX_IMAGE" "$id" sh -c 'echo "$FOO $PATH"')
    [ "$out" = "bar /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" ] ||
        bad "got '$out', want 'bar' and the image's PATH"
}

t_cwd() {
    local id out
    id=$(tid 1)
    out=$(run_ --rm --cwd /tmp "$BUSYBOX_IMAGE" "$id" pwd)
    [ "$out" = /tmp ] || bad "--cwd /tmp: pwd printed '$out'"
    id=$(tid 2)
    out=$(run_ --rm "$BUSYBOX_IMAGE" "$id" pwd)
    [ "$out" = / ] || bad "the image's WorkingDir /: pwd printed '$out'"
}

# ctr 1.6 `run` has no --user: the :app image's config has User 1000:1000,
# which ctr puts in the spec's process.user.
t_user() {
    local id out
    id=$(tid 1)
    out=$(run_ --rm "$BUSYBOX_APP_IMAGE" "$id" sh -c 'id -u; id -g; touch /home/app/f && echo home-ok; ls /root >/dev/null 2>&1 || echo root-denied' | tr '\n' ' ')
    [ "$out" = "1000 1000 home-ok root-denied " ] ||
        bad "got '$out', want uid 1000, gid 1000, /home/app writable, /root not readable"
}

# ctr -t needs a terminal: script(1) gives it one. Its output has CRLF line
# ends, and starts with "^@" (a NUL echoed by the terminal) when script's
# stdin is /dev/null: both are dropped.
_script() {  # command-string -> $E2E_TMP/$TEST.tty, returns its exit code
    local rc
    timeout -k 5 "$CT" script -qec "$1" /dev/null >"$E2E_TMP/$TEST.tty.raw"; rc=$?
    tr -d '\r\0' <"$E2E_TMP/$TEST.tty.raw" | sed 's/\^@//g' >"$E2E_TMP/$TEST.tty"
    return $rc
}
t_tty_run() {
    local id cmd out rc
    id=$(tid 1)
    cmd=$(printf '%q ' $CTR run --runtime "$RUNTIME" "${RUNTIME_OPTS[@]}" --fifo-dir "$FIFO" \
        -t --rm "$BUSYBOX_IMAGE" "$id" sh -c 'tty; echo tty-ok; exit 4')
    _script "$cmd"; rc=$?
    out=$(cat "$E2E_TMP/$TEST.tty")
    grep -qE '^/dev/pts/[0-9]+$' <<<"$out" || bad "tty did not print /dev/pts/N: '$out'"
    grep -qx tty-ok <<<"$out" || bad "no output through the terminal: '$out'"
    [ "$rc" -eq 4 ] || bad "exit code $rc through the terminal, want 4"
}

# ctr 1.6.20 only tells the shim to close the container's stdin (CloseIO)
# if its own stdin ends after the task was created: a pipe that is already
# at EOF when `ctr run` starts (`echo data | ctr run ... cat`) leaves cat
# waiting forever. So the writer here holds the pipe open until the task runs.
_feed() {  # id text
    echo "$2"
    wait_until "$CT" _status_is "$1" RUNNING
}
# The same for an exec: hold stdin open until `ctr task ps` shows the exec
# (at most 10 s: a runtime that does not list exec ids still gets EOF).
_exec_listed() { ctr_ task ps "$1" 2>/dev/null | grep -q "ExecID:$2[,}]"; }
_feed_exec() {  # id exec-id text
    echo "$3"
    wait_until 10 _exec_listed "$1" "$2"
    return 0
}
t_stdin() {
    local id out rc
    id=$(tid 1)
    out=$(_feed "$id" data | run_ --rm "$BUSYBOX_IMAGE" "$id" cat); rc=$?
    [ $rc -eq 0 ] || bad "ctr run exited $rc (124/137: it hung and was killed), output '$out'"
    [ "$out" = data ] || bad "cat of stdin printed '$out', want 'data'"
}

t_stdin_10mb() {
    local id out
    id=$(tid 1)
    out=$(head -c 10000000 /dev/zero | run_ --rm "$BUSYBOX_IMAGE" "$id" wc -c)
    [ "$out" = 10000000 ] || bad "the container counted '$out' bytes of 10000000 on stdin"
}

t_stdout_10mb() {
    local id n want got
    id=$(tid 1)
    n=$(run_ --rm "$BUSYBOX_IMAGE" "$id" head -c 10000000 /dev/zero | wc -c)
    [ "$n" = 10000000 ] || bad "$n bytes of 10000000 arrived"
    # Order and content too, not just the count (about 6.9 MB).
    id=$(tid 2)
    want=$(seq 1 1000000 | sha256sum)
    got=$(run_ --rm "$BUSYBOX_IMAGE" "$id" seq 1 1000000 | sha256sum)
    [ "$got" = "$want" ] || bad "seq 1 1000000 arrived altered (sha256 differs)"
}

# --- exec ---------------------------------------------------------------------------
t_exec() {
    local id out rc
    id=$(tid 1)
    run_ -d "$BUSYBOX_IMAGE" "$id" sleep 1000 >/dev/null || bad "ctr run -d failed"
    wait_status "$id" RUNNING
    out=$(exec_ --exec-id x1 "$id" sh -c 'echo from-exec; exit 5'); rc=$?
    [ "$out" = from-exec ] || bad "exec printed '$out'"
    [ $rc -eq 5 ] || bad "exec exit code $rc, want 5"
    out=$(exec_ --exec-id x2 --user 1000:1000 --cwd /tmp "$id" sh -c 'id -u; pwd' | tr '\n' ' ')
    [ "$out" = "1000 /tmp " ] || bad "exec --user 1000:1000 --cwd /tmp printed '$out'"
    out=$(_feed_exec "$id" x3 in-data | exec_ --exec-id x3 "$id" cat)
    [ "$out" = in-data ] || bad "exec stdin: cat printed '$out'"
    [ "$(task_status "$id")" = RUNNING ] || bad "the container is '$(task_status "$id")' after the execs"
}

t_exec_tty() {
    local id cmd out rc
    id=$(tid 1)
    run_ -d "$BUSYBOX_IMAGE" "$id" sleep 1000 >/dev/null || bad "ctr run -d failed"
    wait_status "$id" RUNNING
    cmd=$(printf '%q ' $CTR task exec --fifo-dir "$FIFO" -t --exec-id t1 "$id" sh -c 'tty; echo tty-ok; exit 6')
    _script "$cmd"; rc=$?
    out=$(cat "$E2E_TMP/$TEST.tty")
    grep -qE '^/dev/pts/[0-9]+$' <<<"$out" || bad "tty did not print /dev/pts/N: '$out'"
    grep -qx tty-ok <<<"$out" || bad "no output through the terminal: '$out'"
    [ "$rc" -eq 6 ] || bad "exit code $rc through the terminal, want 6"
}

# --- signals -------------------------------------------------------------------------
# A foreground `ctr run` in the background: its exit code is the task's.
# The container prints "ready" once it is set up; wait for that.
_start_fg() {  # id out-file cmd...
    local id=$1 out=$2
    shift 2
    run_ "$BUSYBOX_IMAGE" "$id" "$@" >"$out" 2>&1 &
    FG_PID=$!
    wait_until "$CT" grep -q ready "$out" || bad "the container never printed 'ready': $(cat "$out")"
}

t_kill_term() {
    local id rc
    id=$(tid 1)
    _start_fg "$id" "$E2E_TMP/$TEST.out" sh -c 'trap "exit 143" TERM; echo ready; while :; do sleep 0.1; done'
    ctr_ task kill "$id" || bad "ctr task kill failed"
    wait "$FG_PID"; rc=$?
    [ $rc -eq 143 ] || bad "exit code $rc after SIGTERM, want 143"
}

t_kill_sigkill() {
    local id rc
    id=$(tid 1)
    _start_fg "$id" "$E2E_TMP/$TEST.out" sh -c 'echo ready; exec sleep 1000'
    ctr_ task kill -s SIGKILL "$id" || bad "ctr task kill -s SIGKILL failed"
    wait "$FG_PID"; rc=$?
    [ $rc -eq 137 ] || bad "exit code $rc after SIGKILL, want 137"
}

t_kill_all() {
    local id rc n
    id=$(tid 1)
    _start_fg "$id" "$E2E_TMP/$TEST.out" sh -c 'sleep 1000 & sleep 1000 & echo ready; wait'
    n=$(ctr_ task ps "$id" | awk 'NR > 1' | wc -l)
    [ "$n" -eq 3 ] || bad "ctr task ps lists $n processes, want 3"
    ctr_ task kill --all -s SIGKILL "$id" || bad "ctr task kill --all failed"
    wait "$FG_PID"; rc=$?
    [ $rc -eq 137 ] || bad "exit code $rc after kill --all SIGKILL, want 137"
}

# TERM kills a process that is not the container's init: the exit status
# is 128 + 15.
t_kill_exec() {
    local id rc ep
    id=$(tid 1)
    run_ -d "$BUSYBOX_IMAGE" "$id" sleep 1000 >/dev/null || bad "ctr run -d failed"
    wait_status "$id" RUNNING
    exec_ --exec-id s1 "$id" sh -c 'echo ready; exec sleep 1000' >"$E2E_TMP/$TEST.out" 2>&1 &
    ep=$!
    wait_until "$CT" grep -q ready "$E2E_TMP/$TEST.out" || bad "the exec never printed 'ready'"
    ctr_ task kill --exec-id s1 "$id" || bad "ctr task kill --exec-id s1 failed"
    wait "$ep"; rc=$?
    [ $rc -eq 143 ] || bad "exec exit code $rc after SIGTERM, want 143"
    [ "$(task_status "$id")" = RUNNING ] || bad "the container is '$(task_status "$id")' after its exec was killed"
}

# --- pause, ps, metrics, update ------------------------------------------------------
_counter() { cat "$1" 2>/dev/null || echo 0; }
_grew_past() { [ "$(_counter "$1")" -gt "$2" ]; }

# The container counts into a file on a bind-mounted host directory; the
# host reads it (`exec` is refused while paused).
t_pause_resume() {
    local id vol a b
    id=$(tid 1)
    vol=$E2E_TMP/$TEST.vol
    mkdir -p "$vol"
    run_ -d --mount "type=bind,src=$vol,dst=/out,options=rbind:rw" "$BUSYBOX_IMAGE" "$id" \
        sh -c 'i=0; while :; do i=$((i + 1)); echo $i >/out/c.new; mv /out/c.new /out/c; sleep 0.1; done' \
        >/dev/null || bad "ctr run -d failed"
    wait_status "$id" RUNNING
    wait_until "$CT" _grew_past "$vol/c" 2 || bad "the counter never started (bind mount not shared?)"
    ctr_ task pause "$id" || bad "ctr task pause failed"
    wait_status "$id" PAUSED 10
    sleep 0.3
    a=$(_counter "$vol/c")
    sleep 1.5
    b=$(_counter "$vol/c")
    [ "$a" = "$b" ] || bad "the counter went from $a to $b while paused"
    ctr_ task resume "$id" || bad "ctr task resume failed"
    wait_status "$id" RUNNING 10
    wait_until "$CT" _grew_past "$vol/c" "$b" || bad "the counter did not move after resume (stuck at $b)"
}

t_ps() {
    local id pids init
    id=$(tid 1)
    run_ -d "$BUSYBOX_IMAGE" "$id" sh -c 'sleep 1000 & sleep 1000 & wait' >/dev/null || bad "ctr run -d failed"
    wait_status "$id" RUNNING
    init=$(task_pid "$id")
    _three() { [ "$(ctr_ task ps "$id" | awk 'NR > 1' | wc -l)" -eq 3 ]; }
    wait_until "$CT" _three || bad "ctr task ps: $(ctr_ task ps "$id" | tr '\n' ';'), want 3 processes"
    pids=$(ctr_ task ps "$id" | awk 'NR > 1 { print $1 }')
    ! grep -qvE '^[0-9]+$' <<<"$pids" || bad "ctr task ps prints non-numeric pids: $(echo $pids)"
    if [ "$RUNTIME" = io.containerd.palisade.v2 ]; then
        # The task's pid is the host process that holds it, the pod's VMM;
        # ps lists the processes in the guest by their guest pids.
        [[ $(tr '\0' ' ' <"/proc/$init/cmdline" 2>/dev/null) =~ $VMM_RE ]] ||
            bad "the task's pid $init is not the pod's VMM: $(tr '\0' ' ' <"/proc/$init/cmdline" 2>/dev/null)"
    else
        grep -qx -- "$init" <<<"$pids" || bad "the task's pid $init is not among ctr task ps's: $(echo $pids)"
    fi
}

# Memory usage and limit, CPU time: cgroup v1 (runc here) and v2 (the test
# host, the guest) metrics have different shapes.
_mem_usage() { jq -r '(.memory.usage | if type == "object" then .usage else . end) // empty'; }
_mem_limit() { jq -r '(.memory.usage | if type == "object" then .limit else empty end) // .memory.usage_limit // empty'; }
_cpu_usage() { jq -r '(.cpu.usage | if type == "object" then .total else empty end) // .cpu.usage_usec // empty'; }
_is_pos() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -gt 0 ]; }

t_metrics() {
    local id m mem cpu table
    id=$(tid 1)
    run_ -d "$BUSYBOX_IMAGE" "$id" sh -c 'i=0; while [ $i -lt 30000 ]; do i=$((i + 1)); done; echo x >/tmp/x; exec sleep 1000' \
        >/dev/null || bad "ctr run -d failed"
    wait_status "$id" RUNNING
    sleep 1
    m=$(ctr_ task metrics --format json "$id") || bad "ctr task metrics failed"
    mem=$(_mem_usage <<<"$m")
    cpu=$(_cpu_usage <<<"$m")
    _is_pos "$mem" || bad "memory usage '$mem' is not a positive number: $(echo $m | head -c 300)"
    _is_pos "$cpu" || bad "cpu usage '$cpu' is not a positive number: $(echo $m | head -c 300)"
    table=$(ctr_ task metrics "$id") || bad "ctr task metrics (table) failed"
    grep -qE '^(memory|cpu)[a-z_.]* +[0-9]+' <<<"$table" || bad "the metrics table has no memory/cpu figures: $table"
    note "memory usage $mem bytes, cpu usage $cpu"
}

t_update_memory() {
    local id before after limit=67108864 err
    id=$(tid 1)
    run_ -d "$BUSYBOX_IMAGE" "$id" sleep 1000 >/dev/null || bad "ctr run -d failed"
    wait_status "$id" RUNNING
    before=$(ctr_ task metrics --format json "$id" | _mem_limit)
    [ "$before" != "$limit" ] || bad "the limit is already $limit before the update"
    err=$(timeout -k 5 "$CT" "$CTR_TASK_UPDATE" --memory-limit "$limit" "$id" 2>&1) ||
        bad "task update failed: $err"
    after=$(ctr_ task metrics --format json "$id" | _mem_limit)
    [ "$after" = "$limit" ] || bad "metrics show memory limit '$after' after the update, want $limit (was $before)"
    [ "$(task_status "$id")" = RUNNING ] || bad "the container is '$(task_status "$id")' after the update"
}

# --- events ----------------------------------------------------------------------------
# containerd's event stream for one run and one exec, in order. A runtime
# must publish /tasks/start before /tasks/exit even when the process exits
# at once.
_topics_of() {  # events-file id-regex
    grep -E "\"(container_id|id)\":\"$2\"" "$1" | awk '{ print $6 }' | grep -v '^/snapshot/' | tr '\n' ' '
}
t_events_order() {
    local id id2 ev ep got want
    id=$(tid 1)
    id2=$(tid 2)
    ev=$E2E_TMP/$TEST.events
    timeout -k 5 "$CT" $CTR events >"$ev" 2>&1 &
    ep=$!
    # Subscribed once an event of ours shows up.
    _subscribed() { ctr_ namespaces label "$CTD_NS" e2e-ping="$SECONDS" >/dev/null; grep -q /namespaces/update "$ev"; }
    wait_until 20 _subscribed || bad "ctr events shows nothing: $(cat "$ev")"
    run_ --rm "$BUSYBOX_IMAGE" "$id" true || bad "ctr run failed"
    run_ -d "$BUSYBOX_IMAGE" "$id2" sleep 1000 >/dev/null || bad "ctr run -d failed"
    wait_status "$id2" RUNNING
    exec_ --exec-id ev1 "$id2" sh -c 'exit 7'
    remove_container "$id2"
    sleep 0.5
    kill "$ep" 2>/dev/null
    ctr_ namespaces label "$CTD_NS" e2e-ping= >/dev/null
    got=$(_topics_of "$ev" "$id")
    want="/containers/create /tasks/create /tasks/start /tasks/exit /tasks/delete /containers/delete "
    [ "$got" = "$want" ] || bad "events for a run: '$got', want '$want'"
    got=$(grep -E '"(exec_id|id)":"ev1"' "$ev" | awk '{ print $6 }' | tr '\n' ' ')
    want="/tasks/exec-added /tasks/exec-started /tasks/exit "
    [ "$got" = "$want" ] || bad "events for an exec: '$got', want '$want'"
    grep -F '"id":"ev1"' "$ev" | grep -q '"exit_status":7' || bad "the exec's /tasks/exit has no exit_status 7: $(grep -F ev1 "$ev")"
}

# --- the CRI configuration the README documents ------------------------------------------
# A containerd with the CRI plugin and the `palisade` runtime entry starts
# and loads the plugin (the runtime itself is not run: that needs crictl).
t_cri_config() {
    local plugins
    unset CTD_PID
    CTD_NO_TRAP=1 CTD_CRI=1 CTD_CRI_CONFIG_PATH=/etc/palisade/configuration.toml \
        containerd_start "$E2E_TMP/cri" || bad "containerd with the CRI config did not start"
    trap 'containerd_stop' EXIT
    plugins=$(timeout 20 ctr --address "$CTD_SOCK" plugins ls 2>&1)
    grep -qE '^io\.containerd\.grpc\.v1 +cri +.* ok' <<<"$plugins" ||
        bad "the CRI plugin is not ok: $(grep cri <<<"$plugins"); log: $(grep -i error "$CTD_LOG" | tail -3)"
    grep -q 'io.containerd.palisade.v2' "$CTD_DIR/config.toml" || bad "no palisade runtime entry in the config"
}

# What a process learns about its own confinement from /proc/self/status:
# the same with runc and palisade for ctr's default spec, containerd's
# default seccomp profile, a custom profile and --privileged. (The
# capability masks hold for the 41 capabilities of the kernels these run
# on: Linux 6.1 on the host, 6.12 in the guest.)
_status_fields() { grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' | tr -s '\t' ' ' | paste -sd';'; }
DEFAULT_CAPS=00000000a80425fb
# --privileged gives every capability the runtime's root has: runc's is
# this host's root (which lacks CAP_SYS_RESOURCE on the project's
# machines), palisade's the guest's root, which has all 41.
_privileged_caps() {
    if [ "$RUNTIME" = io.containerd.palisade.v2 ]; then echo 000001ffffffffff
    else awk '/^CapBnd:/ { print $2 }' /proc/self/status; fi
}

t_status_default() {
    local id out
    id=$(tid 1)
    out=$(run_ --rm "$BUSYBOX_IMAGE" "$id" cat /proc/self/status | _status_fields)
    [ "$out" = "CapEff: $DEFAULT_CAPS;CapBnd: $DEFAULT_CAPS;NoNewPrivs: 1;Seccomp: 0" ] ||
        bad "default spec: $out"
}

t_seccomp_default() {
    local id out
    id=$(tid 1)
    out=$(run_ --rm --seccomp "$BUSYBOX_IMAGE" "$id" sh -c \
        'grep -E "^(Seccomp|NoNewPrivs):" /proc/self/status | tr -s "\t" " " | paste -sd";"; ls / >/dev/null && echo listed; unshare -m true 2>/dev/null; echo "unshare $?"' 2>&1)
    [ "$out" = "NoNewPrivs: 1;Seccomp: 2
listed
unshare 1" ] || bad "containerd's default profile: ${out@Q}"
}

t_seccomp_custom() {
    local id out profile=$E2E_TMP/$TEST.json
    id=$(tid 1)
    cat >"$profile" <<'JSON'
{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
 "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}
JSON
    out=$(run_ --rm --seccomp --seccomp-profile "$profile" "$BUSYBOX_IMAGE" "$id" sh -c \
        'mkdir /tmp/x 2>&1; echo "mkdir $?"; touch /tmp/y && echo touched' 2>&1)
    case $out in
        *"Operation not permitted"*"mkdir 1"*touched) ;;
        *) bad "a profile that refuses mkdir: ${out@Q}" ;;
    esac
}

t_privileged() {
    local id out all
    id=$(tid 1)
    all=$(_privileged_caps)
    out=$(run_ --rm --privileged "$BUSYBOX_IMAGE" "$id" cat /proc/self/status | _status_fields)
    [ "$out" = "CapEff: $all;CapBnd: $all;NoNewPrivs: 1;Seccomp: 0" ] ||
        bad "--privileged: $out"
}

# --- cgroup files ------------------------------------------------------------------------
# A container reads its own limits where the JVM, Go's GOMEMLIMIT tooling
# and nginx look for them: its cgroup's directory is the cgroup mount (in
# mountinfo) plus the path /proc/self/cgroup names relative to that mount's
# root, and the limit files there hold --memory-limit and --cpus. The
# container's shell is pid 1 of its pid namespace, and cgroup.procs lists
# it. ctr's default spec has no cgroup mount (CRI's, nerdctl's and
# docker's do): the test adds one, as a v1-style "cgroup" and as
# "cgroup2". Without a cgroup namespace runc 1.1 mounts the whole
# hierarchy (the container's cgroup is a directory below /sys/fs/cgroup);
# palisade binds the container's own cgroup there (its directory is
# /sys/fs/cgroup itself, as with a cgroup namespace). runc shows cgroup v2
# files on a cgroup v2 host only: the guest is one, and so is the test
# host, where the suite runs this test with runc as well
# (tests/e2e/in-kvm.sh); the project's machines are cgroup v1.
_CGROUP_VIEW='
cg=$(sed -n "s/^0:://p" /proc/self/cgroup)
root=$(awk "\$5 == \"/sys/fs/cgroup\" { print \$4 }" /proc/self/mountinfo)
case $cg in
    "$root"*) rel=${cg#"$root"}; rel=${rel#/}; dir=/sys/fs/cgroup${rel:+/$rel}; echo "dir $dir" ;;
    *) echo "cgroup ${cg:-?} is not below the mount root ${root:-?}; cgroup mounts: $(awk "/cgroup/ { print \$4, \$5, \$9 }" /proc/self/mountinfo | paste -sd";")"; dir=/sys/fs/cgroup ;;
esac
for f in memory.max cpu.max pids.max; do echo "$f $(cat $dir/$f 2>&1)"; done
grep -qx 1 $dir/cgroup.procs && echo "cgroup.procs has pid 1" || echo "cgroup.procs: $(cat $dir/cgroup.procs 2>&1 | paste -sd" ")"
'
t_cgroup_view() {
    local id out typ dirs=()
    id=$(tid 1)
    [ "$RUNTIME" = io.containerd.palisade.v2 ] || [ -e /sys/fs/cgroup/cgroup.controllers ] ||
        bad "runc shows a container its cgroup v2 files on a cgroup v2 host only, and this one is not: run this test in the test host (tests/e2e/in-kvm.sh does)"
    for typ in cgroup cgroup2; do
        out=$(run_ --rm --memory-limit 67108864 --cpus 0.5 \
            --mount "type=$typ,src=cgroup,dst=/sys/fs/cgroup,options=ro:nosuid:noexec:nodev" \
            "$BUSYBOX_IMAGE" "$id" sh -c "$_CGROUP_VIEW" 2>&1)
        [[ $out == "dir /sys/fs/cgroup"* ]] && [ "$(tail -n +2 <<<"$out")" = 'memory.max 67108864
cpu.max 50000 100000
pids.max max
cgroup.procs has pid 1' ] || bad "the container's view of its cgroup, mounted as $typ: ${out@Q}"
        dirs+=("$typ: $(head -n 1 <<<"$out" | cut -d' ' -f2)")
    done
    note "the container's cgroup directory: $(_one_line "${dirs[@]}")"
}

all_tests="run-echo run-exit-code run-rm run-stdout-stderr env cwd user tty-run stdin stdin-10mb \
    stdout-10mb exec exec-tty kill-term kill-sigkill kill-all kill-exec pause-resume ps metrics \
    update-memory events-order cgroup-view status-default seccomp-default seccomp-custom privileged cri-config"
ctr_suite_select "$@" -- $all_tests
ctr_suite_setup ctr-run
for t in $E2E_SELECTED; do
    run_test "$t"
done
ctr_suite_finish
