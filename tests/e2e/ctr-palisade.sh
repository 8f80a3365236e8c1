#!/usr/bin/env bash
# palisade-specific ctr end-to-end tests: what only a VM runtime has. Needs
# hardware-style KVM, so it runs through the nested test host here:
#
#   tests/lib/with-kvm -- tests/e2e/ctr-palisade.sh [TEST...]
#
# The runtime is io.containerd.palisade.v2 (RUNTIME=another runs a dry run
# of the script's own mechanics: the palisade checks then fail). The shim
# comes from target/release (or PATH), the guest kernel and initramfs from
# target/palisade, with a configuration written for them (or
# PALISADE_CONFIG_FILE). Same output and leftover checks as ctr-run.sh
# (tests/e2e/ctr-lib.sh); E2E_CYCLES sets the create/delete cycles (20).
#
# How a pod is made with ctr 1.6.20: `ctr run --annotation K=V` sets OCI
# annotations, and the shim groups containers by
# io.kubernetes.cri.sandbox-id, as CRI sets it: the sandbox container's id
# is the sandbox id (container-type "sandbox"), the others name it.
set -u
RUNTIME=${RUNTIME:-io.containerd.palisade.v2}
. "$(dirname "$0")/ctr-lib.sh"

SANDBOX_ID_KEY=io.kubernetes.cri.sandbox-id
CONTAINER_TYPE_KEY=io.kubernetes.cri.container-type

# The VMM processes under the shims of our containerd.
our_vmm_pids() {
    local pids tree p
    pids=$(containerd_shim_pids)
    [ -n "$pids" ] || return 0
    tree=" $(_ctd_tree $pids | tr '\n' ' ') "
    for p in $(vmm_pids); do
        [[ $tree == *" $p "* ]] && echo "$p"
    done
}
_count() { [ -z "$1" ] && echo 0 || wc -l <<<"$1"; }
# Sets VMM to the one VMM process of the test's single pod (fails if there
# is not exactly one); not in a $(...), where `bad` could not end the test.
_the_pods_vmm() {
    VMM=$(our_vmm_pids)
    [ "$(_count "$VMM")" -eq 1 ] || bad "want 1 VMM process for the pod, found: $(echo $VMM)"
}

# The guest runs palisade's own kernel, not the host's.
t_guest_kernel() {
    local id out want
    id=$(tid 1)
    want=$(cat "$E2E_OUT/vmlinux.release" 2>/dev/null) || bad "no $E2E_OUT/vmlinux.release: build the guest kernel (guest-kernel/build.sh)"
    out=$(run_ --rm "$BUSYBOX_IMAGE" "$id" uname -r 2>"$E2E_TMP/$TEST.err") ||
        bad "ctr run failed: $(tail -n 3 "$E2E_TMP/$TEST.err")"
    [ "$out" != "$(uname -r)" ] || bad "the container runs the host's kernel $out: not in a VM"
    [ "$out" = "$want" ] || bad "the guest kernel is '$out', the built one is '$want'"
}

# Starts a detached container in pod POD (empty: its own pod). The sandbox
# container of a pod has id == POD.
_run_in_pod() {  # id pod cmd...
    local id=$1 pod=$2 ann=()
    shift 2
    if [ -n "$pod" ]; then
        reg_id "$pod"
        if [ "$id" = "$pod" ]; then
            ann=(--annotation "$CONTAINER_TYPE_KEY=sandbox" --annotation "$SANDBOX_ID_KEY=$pod")
        else
            ann=(--annotation "$CONTAINER_TYPE_KEY=container" --annotation "$SANDBOX_ID_KEY=$pod")
        fi
    fi
    run_ -d "${ann[@]}" "$BUSYBOX_IMAGE" "$id" "$@" >"$E2E_TMP/$TEST.$id.out" 2>&1 ||
        bad "ctr run -d $id failed: $(tail -n 3 "$E2E_TMP/$TEST.$id.out")"
    wait_status "$id" RUNNING
}
_boot_id() { exec_ --exec-id "b$RANDOM" "$1" cat /proc/sys/kernel/random/boot_id; }

# Two containers of one pod share one VM (one shim, one VMM, one guest
# boot); a container without the annotation gets its own.
t_pod_shares_vm() {
    local pod c2 solo b1 b2 b3 n
    pod=$(tid 1)
    c2=$(tid 2)
    solo=$(tid 3)
    _run_in_pod "$pod" "$pod" sleep 1000
    _run_in_pod "$c2" "$pod" sleep 1000
    n=$(_count "$(containerd_shim_pids)")
    [ "$n" -eq 1 ] || bad "$n shims for one pod, want 1"
    n=$(_count "$(our_vmm_pids)")
    [ "$n" -eq 1 ] || bad "$n VMM processes for one pod, want 1"
    [ -d "/run/palisade/$pod" ] || bad "no sandbox state in /run/palisade/$pod"
    b1=$(_boot_id "$pod") && b2=$(_boot_id "$c2") || bad "exec into the pod's containers failed"
    [ -n "$b1" ] && [ "$b1" = "$b2" ] || bad "the pod's containers run in different kernels (boot ids $b1, $b2)"
    [ "$b1" != "$(cat /proc/sys/kernel/random/boot_id)" ] || bad "the pod shares the host's kernel (boot id)"
    _run_in_pod "$solo" "" sleep 1000
    b3=$(_boot_id "$solo") || bad "exec into $solo failed"
    [ "$b3" != "$b1" ] || bad "a container without $SANDBOX_ID_KEY runs in the pod's VM"
    n=$(_count "$(our_vmm_pids)")
    [ "$n" -eq 2 ] || bad "$n VMM processes for two pods, want 2"
    # Deleting one container keeps the pod's VM for the other.
    remove_container "$c2"
    [ "$(_boot_id "$pod")" = "$b1" ] || bad "the sandbox container lost its VM when $c2 was deleted"
    remove_container "$pod"
    wait_until 20 test ! -e "/run/palisade/$pod" || bad "/run/palisade/$pod is still there after the pod's last container was deleted"
    n=$(_count "$(our_vmm_pids)")
    [ "$n" -eq 1 ] || bad "$n VMM processes after the pod was deleted, want 1 (the other pod's)"
}

# Every task reports the pod's VMM as its pid on the host, execs too: a
# guest pid would name an unrelated host process to host tools. `ctr task
# ps` lists the guest's pids.
t_task_pids_are_the_vmm() {
    local pod c2 vmm p1 p2 ps n
    pod=$(tid 1)
    c2=$(tid 2)
    _run_in_pod "$pod" "$pod" sleep 1000
    _run_in_pod "$c2" "$pod" sleep 1000
    _the_pods_vmm
    vmm=$VMM
    p1=$(task_pid "$pod")
    p2=$(task_pid "$c2")
    [ "$p1" = "$vmm" ] && [ "$p2" = "$vmm" ] || bad "task pids are $p1 and $p2; the pod's VMM is $vmm"
    # Attached, in the background: a `ctr task exec --detach` leaves its
    # FIFO directory behind for good (only an attached ctr removes it).
    exec_ --exec-id e1 "$pod" sleep 1000 >/dev/null 2>&1 &
    _two_listed() {
        ps=$(ctr_ task ps "$pod" | awk 'NR > 1 { print $1 }')
        [ "$(_count "$ps")" -ge 2 ]
    }
    wait_until "$CT" _two_listed ||
        bad "ctr task ps lists $(_count "$ps") processes ${CT}s after the exec, want the init and the exec: $(echo $ps)"
    ! grep -qx "$vmm" <<<"$ps" || bad "ctr task ps lists the VMM's host pid $vmm, not guest pids: $(echo $ps)"
    note "task pid $vmm (the VMM); guest pids $(echo $ps)"
}

# The VMM dies: the pod's tasks end (reported as exited), and deleting
# them cleans up.
t_vmm_kill_ends_tasks() {
    local pod c2 vmm rc fg
    pod=$(tid 1)
    c2=$(tid 2)
    _run_in_pod "$pod" "$pod" sleep 1000
    reg_id "$pod"
    run_ --annotation "$CONTAINER_TYPE_KEY=container" --annotation "$SANDBOX_ID_KEY=$pod" \
        "$BUSYBOX_IMAGE" "$c2" sleep 1000 >"$E2E_TMP/$TEST.fg" 2>&1 &
    fg=$!
    wait_status "$c2" RUNNING
    _the_pods_vmm
    vmm=$VMM
    kill -KILL "$vmm"
    wait_until "$CT" _status_is "$pod" STOPPED || bad "the sandbox container is '$(task_status "$pod")' ${CT}s after its VMM was killed"
    # The foreground ctr run returns when its task exits (and deletes the
    # task itself: ctr run always does, --rm or not).
    _gone() { ! kill -0 "$1" 2>/dev/null; }
    wait_until "$CT" _gone "$fg" || bad "ctr run of the second container still runs ${CT}s after the VMM was killed (task '$(task_status "$c2")')"
    wait "$fg"; rc=$?
    [ $rc -ne 0 ] || bad "ctr run of a container whose VM was killed exited 0"
    [ -n "$(containerd_shim_pids)" ] || note "the shim exited with its VMM (it may: containerd still deletes the tasks)"
    remove_container "$c2"
    remove_container "$pod"
    note "ctr run exited $rc when the VMM was killed"
}

# The guest stops answering (its VMM frozen with SIGSTOP: no vCPU runs,
# no vsock byte moves, as with a wedged or hostile guest): `ctr task kill
# -s SIGKILL` still ends both containers of the pod (the shim kills the VM
# once its agent call goes unanswered), and deleting them leaves nothing.
t_sigkill_unresponsive_guest() {
    local pod c2 vmm t0 took
    pod=$(tid 1)
    c2=$(tid 2)
    _run_in_pod "$pod" "$pod" sleep 1000
    _run_in_pod "$c2" "$pod" sleep 1000
    _the_pods_vmm
    vmm=$VMM
    kill -STOP "$vmm"
    t0=$SECONDS
    ctr_ task kill -s SIGKILL "$c2" >"$E2E_TMP/$TEST.kill" 2>&1 ||
        bad "ctr task kill -s SIGKILL of a container in an unresponsive guest failed: $(tail -n 2 "$E2E_TMP/$TEST.kill")"
    wait_until 60 _status_is "$c2" STOPPED || bad "the container is '$(task_status "$c2")' 60s after SIGKILL"
    took=$((SECONDS - t0))
    wait_until "$CT" _status_is "$pod" STOPPED || bad "the other container of the pod is '$(task_status "$pod")' once its VM was killed"
    _gone() { [ ! -e "/proc/$1" ]; }
    wait_until "$CT" _gone "$vmm" || bad "the frozen VMM $vmm still exists after SIGKILL"
    ctr_ task delete "$c2" >/dev/null 2>&1 || bad "ctr task delete $c2 failed after the VM was killed"
    ctr_ task delete "$pod" >/dev/null 2>&1 || bad "ctr task delete $pod failed after the VM was killed"
    remove_container "$c2"
    remove_container "$pod"
    note "SIGKILL ended the pod ${took}s after it was sent (the agent call's timeout, then the VM killed)"
}

# The VMM dies while containerd's Start is in flight: ctr run fails, the
# task is stopped at once (containerd's client refuses to delete a task
# still "created", and the pod's shim would wait for that delete for
# ever), and the shim exits leaving nothing (the leftover check after
# every test). ctr is frozen while the VM boots, so its Start waits until
# the task is created and the VMM frozen in turn; the VMM is killed while
# that Start waits for the guest. With enable_debug the shim logs at debug.
t_vmm_dies_during_start() {
    local id cfg vmm ctr_pid fg rc
    id=$(tid 1)
    cfg=$E2E_TMP/config-debug.toml
    write_test_config "$cfg" quiet 1
    printf '\n[runtime]\nenable_debug = true\n' >>"$cfg"
    timeout -k 5 "$CT" $CTR run --runtime "$RUNTIME" --runtime-config-path "$cfg" --fifo-dir "$FIFO" \
        --rm "$BUSYBOX_IMAGE" "$id" sleep 1000 >"$E2E_TMP/$TEST.fg" 2>&1 &
    fg=$!
    _has_vmm() { [ -n "$(our_vmm_pids)" ]; }
    wait_until "$CT" _has_vmm || bad "no VMM started for $id: $(tail -n 2 "$E2E_TMP/$TEST.fg")"
    ctr_pid=$(pgrep -P "$fg" -x ctr) || bad "ctr run is not running under its timeout"
    kill -STOP "$ctr_pid"
    wait_until "$CT" _status_is "$id" CREATED || bad "the task is '$(task_status "$id")', not created"
    vmm=$(our_vmm_pids)
    kill -STOP "$vmm"
    kill -CONT "$ctr_pid"
    # Start reaches the shim and waits for the frozen guest.
    sleep 2
    kill -KILL "$vmm"
    wait "$fg"; rc=$?
    [ $rc -ne 0 ] || bad "ctr run of a container whose VM was killed exited 0"
    grep -q "could not start the container" "$E2E_TMP/$TEST.fg" ||
        bad "ctr run did not fail in Start: $(tail -n 2 "$E2E_TMP/$TEST.fg")"
    grep -aq "container $id: built in the guest" "$CTD_LOG" ||
        bad "no debug log from the shim with enable_debug = true"

    # Unfrozen: the VMM dies the moment the container is built, so Start
    # fails while the monitor has not yet seen the VM go. The task must
    # still be stopped at once: ctr refuses to delete a "created" task with
    # a pid, and would leave it (and the pod's shim) behind. Twice: the
    # kill can also land just after Start.
    local round
    for round in 2 3; do
        id=$(tid $round)
        timeout -k 5 "$CT" $CTR run --runtime "$RUNTIME" --runtime-config-path "$cfg" --fifo-dir "$FIFO" \
            --rm "$BUSYBOX_IMAGE" "$id" sleep 1000 >"$E2E_TMP/$TEST.fg" 2>&1 &
        fg=$!
        # Polled every 10 ms: Start follows the build within about 50 ms.
        local end=$((SECONDS + CT))
        until grep -aq "container $id: built in the guest" "$CTD_LOG"; do
            [ $SECONDS -lt $end ] || bad "container $id was not built within ${CT}s: $(tail -n 2 "$E2E_TMP/$TEST.fg")"
            sleep 0.01
        done
        vmm=$(our_vmm_pids)
        kill -KILL $vmm
        wait "$fg"; rc=$?
        [ $rc -ne 0 ] || bad "ctr run of a container whose VM was killed exited 0"
        [ -z "$(task_status "$id")" ] ||
            bad "ctr run --rm left task $id behind ('$(task_status "$id")'): $(tail -n 2 "$E2E_TMP/$TEST.fg")"
    done
}

# The runtime's configuration file (ctr --runtime-config-path, CRI
# ConfigPath) is honoured: two vCPUs and 384 MiB instead of the defaults.
t_config_path() {
    local id cfg out cpus mem_kib
    id=$(tid 1)
    cfg=$E2E_TMP/config-2cpu.toml
    write_test_config "$cfg" quiet 2
    sed -i 's/^memory_mib = .*/memory_mib = 384/' "$cfg"
    out=$(timeout -k 5 "$CT" $CTR run --runtime "$RUNTIME" --runtime-config-path "$cfg" --fifo-dir "$FIFO" \
        --rm "$BUSYBOX_IMAGE" "$id" sh -c 'nproc; grep MemTotal /proc/meminfo' 2>&1) || bad "ctr run failed: $out"
    cpus=$(sed -n 1p <<<"$out")
    mem_kib=$(awk '/MemTotal/ { print $2 }' <<<"$out")
    [ "$cpus" = 2 ] || bad "the guest has '$cpus' CPUs with vcpus = 2"
    [ -n "$mem_kib" ] && [ "$mem_kib" -gt $((300 * 1024)) ] && [ "$mem_kib" -le $((384 * 1024)) ] ||
        bad "the guest has MemTotal '$mem_kib' kB with memory_mib = 384"
}

# Many pods one after the other leave nothing behind: no sandbox dirs, no
# mounts, no processes.
t_create_delete_cycles() {
    local i id n=${E2E_CYCLES:-20} t0=$SECONDS before
    before=$(_palisade_state)
    for i in $(seq "$n"); do
        id=$(tid "$i")
        run_ --rm "$BUSYBOX_IMAGE" "$id" true >"$E2E_TMP/$TEST.out" 2>&1 ||
            bad "cycle $i: ctr run failed: $(tail -n 3 "$E2E_TMP/$TEST.out")"
    done
    wait_until 20 _clean || bad "after $n cycles: $(_leftovers_now)"
    [ "$(_palisade_state | sort)" = "$(sort <<<"$before")" ] || bad "after $n cycles: palisade state $(_palisade_state)"
    [ -z "$(find /run/palisade -mindepth 1 2>/dev/null)" ] || bad "after $n cycles /run/palisade holds: $(find /run/palisade -mindepth 1 | head -5)"
    [ -z "$(our_vmm_pids)" ] || bad "after $n cycles VMMs still run: $(our_vmm_pids)"
    note "$n create/run/delete cycles in $((SECONDS - t0))s"
}

all_tests="guest-kernel pod-shares-vm task-pids-are-the-vmm vmm-kill-ends-tasks sigkill-unresponsive-guest vmm-dies-during-start config-path create-delete-cycles"
ctr_suite_select "$@" -- $all_tests
[ "$RUNTIME" = io.containerd.palisade.v2 ] ||
    echo "NOTE: a dry run with RUNTIME=$RUNTIME: the palisade checks are expected to fail"
ctr_suite_setup ctr-palisade
for t in $E2E_SELECTED; do
    if [ "$t" = create-delete-cycles ]; then
        # A pod start takes ~15 s in the nested test host: give each cycle 30.
        run_test "$t" $((${E2E_CYCLES:-20} * 30 + 120))
    else
        run_test "$t"
    fi
done
ctr_suite_finish
