# Shared by the ctr end-to-end suites (tests/e2e/ctr-run.sh, ctr-palisade.sh):
# a private containerd with the busybox image, the runtime under test, a
# runner that gives every test a timeout and checks that it left nothing
# behind. Sourced by bash scripts that use `set -u`.
#
#   ctr_suite_setup SUITE       # after sourcing; exits 1 (with a FAIL line) if
#                               # the runtime cannot be tested here
#   run_test NAME               # runs the function t_NAME (dashes -> _)
#   ctr_suite_finish            # the final cleanup check and the count; exits
#
# In a test (it runs in its own subshell, stdin /dev/null):
#   id=$(tid 1)                 # container ids e2e-<test>-<n>, removed after it
#   reg_id ID                   # another id to check the shim socket of (a pod)
#   bad "why"                   # fail the test (exits the subshell)
#   note "text"                 # an extra line printed under PASS/FAIL
#   ctr_ ARGS                   # $CTR ARGS with a timeout
#   run_ ARGS                   # ctr run --runtime $RUNTIME ... with a timeout
#   exec_ ARGS                  # ctr task exec ... with a timeout
#   wait_status ID STATUS       # until `ctr task ls` says STATUS (or fail)
#   wait_until SECS CMD...      # until CMD succeeds (or return 1)
#
# Environment: RUNTIME (default io.containerd.runc.v2), E2E_CMD_TIMEOUT
# (seconds for one ctr command, default 60), E2E_TEST_TIMEOUT (one test,
# default 240), E2E_TIMES=1 (print each test's duration),
# PALISADE_CONFIG_FILE (palisade's configuration; default: one written for
# the freshly built kernel and initramfs in target/palisade).

_ctr_lib_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$_ctr_lib_dir/lib.sh"
. "$_ctr_lib_dir/../lib/containerd.sh"
. "$_ctr_lib_dir/../lib/images.sh"

RUNTIME=${RUNTIME:-io.containerd.runc.v2}
CT=${E2E_CMD_TIMEOUT:-60}
TEST_TIMEOUT=${E2E_TEST_TIMEOUT:-240}
CTR_TASK_UPDATE=$E2E_REPO/tests/lib/ctr-task-update
_suite=ctr
_passed=0
_failed=0
_t_start=$SECONDS

# Prints a FAIL line for the suite's set-up and exits: nothing can run.
_setup_fail() {
    fail "$_suite-setup" "$1"
    echo "$_suite: 0 passed, 1 failed"
    exit 1
}

# Is the runtime's shim where containerd will look (its PATH: ours with
# target/release first)?
_shim_binary() {  # runtime -> prints the binary name
    local r=${1#io.containerd.}
    r=${r%.v*}
    echo "containerd-shim-$r-${1##*.}"
}

ctr_suite_setup() {  # SUITE
    _suite=$1
    echo "$_suite: runtime $RUNTIME"
    local shim bindirs=()
    shim=$(_shim_binary "$RUNTIME")
    [ -d "$E2E_BIN" ] && bindirs+=("$E2E_BIN")
    if [ -x "$E2E_BIN/$shim" ]; then
        SHIM_PATH=$E2E_BIN/$shim
    elif SHIM_PATH=$(command -v "$shim"); then
        :
    else
        _setup_fail "runtime $RUNTIME needs the binary $shim, found neither in $E2E_BIN nor on PATH (build it: cargo build --release -p containerd-shim-palisade-v2)"
    fi
    [ "$(id -u)" -eq 0 ] || _setup_fail "containerd needs root: run as root (sudo)"
    RUNTIME_OPTS=()
    if [ "$RUNTIME" = io.containerd.palisade.v2 ]; then
        local kind
        kind=$("$E2E_REPO/tests/lib/kvm-kind")
        [ "$kind" = hardware ] ||
            _setup_fail "this machine's /dev/kvm is '$kind', palisade guests cannot boot here: run it through tests/lib/with-kvm -- $0"
        if [ -z "${PALISADE_CONFIG_FILE:-}" ]; then
            [ -f "$E2E_OUT/vmlinux" ] && [ -f "$E2E_OUT/initramfs.cpio.gz" ] ||
                _setup_fail "no guest kernel/initramfs in $E2E_OUT: run guest-kernel/build.sh and rootfs-builder/build.sh"
        fi
    fi
    command -v jq >/dev/null || _setup_fail "jq is missing: apt-get install jq"
    command -v script >/dev/null || _setup_fail "script (util-linux) is missing"

    E2E_TMP=$(mktemp -d /tmp/palisade-$_suite.XXXXXX) || _setup_fail "mktemp failed"
    # After containerd_stop (which containerd_start chains before it).
    trap 'rm -rf "$E2E_TMP"' EXIT
    if [ "$RUNTIME" = io.containerd.palisade.v2 ]; then
        if [ -n "${PALISADE_CONFIG_FILE:-}" ]; then
            cp "$PALISADE_CONFIG_FILE" "$E2E_TMP/configuration.toml"
        else
            write_test_config "$E2E_TMP/configuration.toml" quiet 1
        fi
        RUNTIME_OPTS=(--runtime-config-path "$E2E_TMP/configuration.toml")
    fi
    IDS=$E2E_TMP/ids
    : >"$IDS"
    _before_palisade=$(_palisade_state)
    local image
    image=$(busybox_image_tar) || _setup_fail "cannot build the busybox image (tests/images/build-busybox-image)"
    containerd_start "$E2E_TMP/ctd" "${bindirs[@]}" || _setup_fail "cannot start containerd (see above)"
    FIFO=$CTD_DIR/fifo
    mkdir -p "$FIFO"
    local t0=$SECONDS
    containerd_import "$image" || _setup_fail "cannot import $image"
    echo "  containerd up, image imported in $((SECONDS - t0))s; shim $SHIM_PATH"
}

# --- helpers for tests ------------------------------------------------------------
bad() { echo "FAILREASON: $*"; exit 1; }
note() { echo "NOTE: $*"; }
tid() { echo "$TEST e2e-$TEST-$1" >>"$IDS"; echo "e2e-$TEST-$1"; }
reg_id() { echo "$TEST $1" >>"$IDS"; }
ctr_() { timeout -k 5 "$CT" $CTR "$@"; }
run_() { timeout -k 5 "$CT" $CTR run --runtime "$RUNTIME" "${RUNTIME_OPTS[@]}" --fifo-dir "$FIFO" "$@"; }
exec_() { timeout -k 5 "$CT" $CTR task exec --fifo-dir "$FIFO" "$@"; }
task_status() { local a b c; while read -r a b c; do [ "$a" != "$1" ] || echo "$c"; done < <(ctr_ task ls 2>/dev/null); }
task_pid() { local a b c; while read -r a b c; do [ "$a" != "$1" ] || echo "$b"; done < <(ctr_ task ls 2>/dev/null); }
wait_until() {  # SECS CMD...
    local end=$((SECONDS + $1))
    shift
    until "$@"; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.1
    done
}
_status_is() { [ "$(task_status "$1")" = "$2" ]; }
wait_status() {  # ID STATUS [SECS]
    wait_until "${3:-$CT}" _status_is "$1" "$2" ||
        bad "task $1 is '$(task_status "$1")', not $2 after ${3:-$CT}s"
}
# Removes a test's containers: kill, delete the task, delete the container
# (and with it its snapshot).
remove_container() {  # ID
    if [ -n "$(task_status "$1")" ]; then
        ctr_ task kill -s SIGKILL --all "$1" >/dev/null 2>&1
        ctr_ task delete --force "$1" >/dev/null 2>&1
    fi
    ctr_ containers ls -q 2>/dev/null | grep -qx -- "$1" && ctr_ containers delete "$1" >/dev/null 2>&1
    return 0
}
_remove_test_containers() {
    local id
    for id in $(ctr_ containers ls -q 2>/dev/null | grep -E "^e2e-$TEST-[0-9]+\$"); do
        remove_container "$id"
    done
}

# --- what a test may leave behind ---------------------------------------------------
# (Plain bash where it can: it runs after every test, and in the nested
# test host each program started costs a few hundred milliseconds.)

# VMM processes: argv0 palisade-vmm (or the shim binary's __vmm mode).
VMM_RE='(^|/)palisade-vmm( |$)|^[^ ]*containerd-shim-palisade-v2 __vmm( |$)'
vmm_pids() { ctd_pids_matching "$VMM_RE"; }
_entries() {  # DIR -> its entries' names, one a line
    local f
    for f in "$1"/* "$1"/.[!.]*; do [ -e "$f" ] || [ -L "$f" ] && echo "${f##*/}"; done
    return 0
}
_palisade_state() {
    local e
    for e in $(_entries /run/palisade); do echo "/run/palisade/$e"; done
    vmm_pids
}
# Shim sockets are /run/containerd/s/sha256(<address>/<namespace>/<id>),
# where id is the container's or its group's (sandbox-id annotation).
_shim_socket_leftovers() {  # [TEST]: only that test's ids
    local t id h
    [ -n "$(_entries /run/containerd/s)" ] || return 0
    while read -r t id; do
        [ -z "${1:-}" ] || [ "$t" = "$1" ] || continue
        h=$(printf '%s' "$CTD_SOCK/$CTD_NS/$id" | sha256sum)
        h=${h%% *}
        [ ! -e "/run/containerd/s/$h" ] || echo "shim socket of $id (/run/containerd/s/$h)"
    done < <(sort -u "$IDS")
}
_one_line() { local IFS=' '; echo "$*"; }
_leftovers_now() {  # [TEST]
    local x
    x=$(ctr_ containers ls -q 2>&1); [ -z "$x" ] || echo "containers: $(_one_line $x)"
    x=$(ctr_ task ls -q 2>&1); [ -z "$x" ] || echo "tasks: $(_one_line $x)"
    x=$(ctr_ snapshots ls 2>&1 | awk 'NR > 1 && $NF != "Committed" { print $1 }'); [ -z "$x" ] || echo "snapshots: $(_one_line $x)"
    x=$(containerd_mounts_under "$CTD_DIR"); [ -z "$x" ] || echo "mounts: $(_one_line $x)"
    x=$(containerd_shim_pids); [ -z "$x" ] || echo "shim processes: $(for p in $x; do tr '\0' ' ' <"/proc/$p/cmdline"; echo ";"; done)"
    x=$(_entries "$CTD_DIR/state/io.containerd.runtime.v2.task/$CTD_NS"); [ -z "$x" ] || echo "bundles: $(_one_line $x)"
    x=$(_entries "$FIFO"); [ -z "$x" ] || echo "fifo dirs: $(_one_line $x)"
    # Container cgroups (ctr puts them at /NS/ID): one hierarchy is enough.
    x=$(ctd_cgroup_dirs "$CTD_NS" | head -n 1)
    [ -z "$x" ] || x=$(cd "$x" && for d in */; do [ -d "$d" ] && echo "${d%/}"; done)
    [ -z "$x" ] || echo "cgroups under /$CTD_NS: $(_one_line $x)"
    x=$(_shim_socket_leftovers "${1:-}"); [ -z "$x" ] || echo "$x"
    x=$(_palisade_state)
    if [ "$x" != "$_before_palisade" ]; then
        x=$(comm -13 <(sort <<<"$_before_palisade") <(sort <<<"$x"))
        [ -z "$x" ] || echo "palisade state/VMMs: $(_one_line $x)"
    fi
}
_clean() { [ -z "$(_leftovers_now "${1:-}")" ]; }
# For a failed leftover check: what each shim still alive is doing (its
# threads and the kernel function each waits in, its VMM's) and what
# containerd logged of the test's containers, shown with the test's output.
_shim_diagnosis() {  # TEST
    local p t
    for p in $(containerd_shim_pids) $(vmm_pids); do
        echo "NOTE: pid $p ($(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-80)), state $(awk '{print $3}' "/proc/$p/stat" 2>/dev/null):"
        for t in /proc/"$p"/task/*; do
            echo "NOTE:   $(cat "$t/comm" 2>/dev/null) waits in $(cat "$t/wchan" 2>/dev/null)"
        done
    done
    grep -a "e2e-$1-" "$CTD_LOG" 2>/dev/null | tail -n 12 | cut -c1-300 | sed 's/^/NOTE: containerd: /'
}
# Waits a little (shims exit asynchronously after the last delete), then
# prints what is still there. A palisade shim may take the guest's 5 s to
# power off plus the VMM's 2 s kill grace, and in the nested test host
# containerd's own steps take seconds more: 30 s.
leftovers_after_test() {  # TEST
    wait_until 30 _clean "$1" || _leftovers_now "$1"
}
# Removes whatever a failed test left, so that the next test starts clean.
_force_clean() {
    local id pids
    for id in $(ctr_ task ls -q 2>/dev/null); do ctr_ task delete --force "$id" >/dev/null 2>&1; done
    for id in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$id" >/dev/null 2>&1; done
    for id in $(ctr_ snapshots ls 2>/dev/null | awk 'NR > 1 && $NF != "Committed" { print $1 }'); do
        ctr_ snapshots rm "$id" >/dev/null 2>&1
    done
    sleep 1
    pids=$(containerd_shim_pids)
    [ -z "$pids" ] || kill -KILL $(_ctd_tree $pids) 2>/dev/null
    containerd_mounts_under "$CTD_DIR" | while IFS= read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m"
    done
    rm -rf "${FIFO:?}"/* 2>/dev/null
}

# --- the runner ------------------------------------------------------------------------
# Runs CMD (a function or a program) in a subshell with a time limit; when
# it is up, kills it and everything it started, sets _BOUNDED_EXPIRED and
# returns 124. Bounds everything the runner does, cleanup included: a
# runtime that wedges containerd must not hang the suite.
_bounded() {  # SECS CMD...
    local secs=$1 which rc bp sp
    shift
    _BOUNDED_EXPIRED=
    ("$@") &
    bp=$!
    sleep "$secs" &
    sp=$!
    wait -n -p which "$bp" "$sp"
    rc=$?
    if [ "$which" = "$sp" ]; then
        kill -KILL $(_ctd_tree "$bp") 2>/dev/null
        wait "$bp" 2>/dev/null
        _BOUNDED_EXPIRED=1
        return 124
    fi
    kill "$sp" 2>/dev/null
    wait "$sp" 2>/dev/null
    return $rc
}
_test_body() {  # NAME FN
    TEST=$1
    trap _remove_test_containers EXIT
    "$2"
}
_cleanup_test() {  # NAME
    TEST=$1
    CT=${E2E_CLEAN_TIMEOUT:-20}
    _remove_test_containers
}
_containerd_answers() {
    kill -0 "$CTD_PID" 2>/dev/null && timeout -k 2 15 ctr --address "$CTD_SOCK" version >/dev/null 2>&1
}
_ctd_wedged=

run_test() {  # NAME [TIMEOUT]
    local name=$1 limit=${2:-$TEST_TIMEOUT} fn=t_${1//-/_} out=$E2E_TMP/$1.out t0=$SECONDS rc reason='' left=''
    declare -F "$fn" >/dev/null || { fail "$name" "no such test (function $fn)"; _failed=$((_failed + 1)); return; }
    if [ -n "$_ctd_wedged" ]; then
        fail "$name" "not run: $_ctd_wedged"
        _failed=$((_failed + 1))
        return
    fi
    _bounded "$limit" _test_body "$name" "$fn" </dev/null >"$out" 2>&1
    rc=$?
    if [ -n "$_BOUNDED_EXPIRED" ]; then
        reason="timed out after ${limit}s (E2E_TEST_TIMEOUT)"
        _bounded 120 _cleanup_test "$name" </dev/null >/dev/null 2>&1
    elif [ $rc -ne 0 ]; then
        reason=$(sed -n 's/^FAILREASON: //p' "$out" | tail -n 1)
        [ -n "$reason" ] || reason="exited $rc without saying why"
    fi
    # (cleanup checks the same itself.)
    if [ "$name" != cleanup ]; then
        left=$(_bounded 90 leftovers_after_test "$name" </dev/null)
        [ -z "$_BOUNDED_EXPIRED" ] || left+=" (the leftover check itself timed out)"
    fi
    if [ -n "$left" ]; then
        reason="${reason:+$reason; }left behind: $(_one_line $left)"
        _shim_diagnosis "$name" >>"$out" 2>&1
        _bounded 120 _force_clean </dev/null >/dev/null 2>&1
    fi
    if ! _containerd_answers; then
        _ctd_wedged="containerd stopped answering during $name (log: $CTD_LOG)"
        reason="${reason:+$reason; }$_ctd_wedged"
    fi
    if [ -n "${reason:-}" ]; then
        fail "$name" "$reason"
        _failed=$((_failed + 1))
        # The test's own output, for diagnosis.
        grep -v '^FAILREASON: ' "$out" | tail -n 40 | sed 's/^NOTE: //; s/^/    /'
        if [ -n "$_ctd_wedged" ]; then
            echo "    the end of containerd's log:"
            tail -n 10 "$CTD_LOG" | sed 's/^/    /'
        fi
    else
        pass "$name"
        _passed=$((_passed + 1))
        local line
        while IFS= read -r line; do
            [[ $line != "NOTE: "* ]] || echo "    ${line#NOTE: }"
        done <"$out"
    fi
    [ -z "${E2E_TIMES:-}" ] || echo "    ($((SECONDS - t0))s)"
}

# The last test: the whole run left nothing behind.
t_cleanup() {
    local left
    left=$(_leftovers_now)
    [ -z "$left" ] || bad "left behind: $(_one_line $left)"
    # rootfs mounts would be under the state dir; any mount under the root
    # (snapshots) is as wrong.
    left=$(containerd_mounts_under "$CTD_DIR")
    [ -z "$left" ] || bad "mounts under $CTD_DIR: $left"
}

# Picks the tests to run: the names given (checked), or all of them.
ctr_suite_select() {  # [--list | NAME...] -- ALL...
    local want=() all=() t seen_sep=
    for t in "$@"; do
        if [ -n "$seen_sep" ]; then all+=("$t"); elif [ "$t" = -- ]; then seen_sep=1; else want+=("$t"); fi
    done
    if [ "${want[0]:-}" = --list ]; then printf '%s\n' "${all[@]}"; exit 0; fi
    for t in "${want[@]}"; do
        [[ " ${all[*]} " == *" $t "* ]] || { echo "unknown test '$t'; the tests: ${all[*]}" >&2; exit 2; }
    done
    if [ ${#want[@]} -gt 0 ]; then E2E_SELECTED="${want[*]}"; else E2E_SELECTED="${all[*]}"; fi
}

ctr_suite_finish() {
    run_test cleanup
    echo "$_suite: total $((SECONDS - _t_start))s"
    echo "$_suite: $_passed passed, $_failed failed"
    [ "$_failed" -eq 0 ]
    exit
}
