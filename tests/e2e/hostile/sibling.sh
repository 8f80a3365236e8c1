# Attacks of one container of a pod on a sibling container or the agent,
# inside the guest (sourced by tests/e2e/hostile-guest.sh): the runc CVE
# classes the agent's container setup defends against. The attacker is a
# privileged container of the pod sharing a volume (a host directory
# bound into both, as an emptyDir) with its victims; each victim must
# either be refused with the defence's error or come up exactly as its
# spec says, never with the attacker's choice in it.

HOSTILE_TESTS+=(sibling-mount-symlink sibling-dev-null-swap sibling-proc-exe)
LIMIT_sibling_mount_symlink=400
LIMIT_sibling_dev_null_swap=400
LIMIT_sibling_proc_exe=300
SIBLING_VICTIMS=${E2E_SIBLING_VICTIMS:-6}

# Starts the attacker ID in POD with the shared volume VOL at /data,
# running SCRIPT in the background (log in /attack.log).
sibling_attacker() {  # ID POD VOL SCRIPT
    RUN_OPTS=(--privileged --mount "type=bind,src=$3,dst=/data,options=rbind:rw")
    start_in_pod "$1" "$2" sh -c "( $4 ) >>/attack.log 2>&1 & echo STARTED >>/attack.log; sleep 100000"
    RUN_OPTS=()
    wait_until 60 grep_attack_log "$1" STARTED || bad "the attacker did not start: $(attack_log "$1" | tail -n 3)"
}

# Runs victim ID in POD to completion with OPTS... then CMD; prints its
# output, "REFUSED: <error>" if the runtime refused it, "EXITED: <output>"
# if its command failed.
sibling_victim() {  # ID POD CMD -- OPTS...
    local id=$1 pod=$2 cmd=$3 out
    shift 4
    # shellcheck disable=SC2046
    if out=$(run_ --rm $(pod_annotations "$id" "$pod") "$@" "$BUSYBOX_IMAGE" "$id" sh -c "$cmd" 2>&1); then
        echo "$out"
    else
        case $out in
            ctr:*) echo "REFUSED: ${out:0:300}" ;;
            *) echo "EXITED: ${out:0:300}" ;;
        esac
        remove_container "$id" >/dev/null 2>&1
    fi
}

# CVE-2021-30465: the victim mounts the shared volume at /data and a
# second volume nested in it at /data/sub/x. The attacker first leaves a
# link /data/sub -> /etc (the victim's own /etc, had the agent followed
# it), then swaps /data/sub between a directory and that link as fast as
# it can while victims are created. No victim may ever find the nested
# volume at /etc/x; each either refuses or has it at /data/sub/x.
t_sibling_mount_symlink() {
    local pod vol inner i out landed=0 refused=0 ok=0 other=0
    pod=$(tid 0)
    vol=$E2E_TMP/$TEST-vol
    inner=$E2E_TMP/$TEST-inner
    mkdir -p "$vol" "$inner"
    echo inner-volume >"$inner/marker"
    ln -s /etc "$vol/sub"
    sibling_attacker "$pod" "$pod" "$vol" "true"
    local check='if [ -e /etc/x/marker ]; then echo LANDED-IN-ETC; else cat /data/sub/x/marker; fi'
    out=$(sibling_victim "$(tid 1)" "$pod" "$check" -- \
        --mount "type=bind,src=$vol,dst=/data,options=rbind:rw" \
        --mount "type=bind,src=$inner,dst=/data/sub/x,options=rbind:ro")
    note "with the link in place: $out"
    case $out in
        *LANDED-IN-ETC*) bad "the nested mount followed the sibling's link into the victim's /etc" ;;
        REFUSED:*symlink*not\ followed*) ;;
        *) bad "the victim was neither refused for the link nor fine: $out" ;;
    esac
    rm -f "$vol/sub"
    exec_ --exec-id "race$RANDOM" "$pod" sh -c \
        "while [ ! -e /data/stop ]; do rm -rf /data/sub; ln -s /etc /data/sub; rm -f /data/sub; mkdir /data/sub; done >/dev/null 2>&1 &" ||
        bad "could not start the attacker's race"
    for i in $(seq 2 $((SIBLING_VICTIMS + 1))); do
        out=$(sibling_victim "$(tid "$i")" "$pod" "$check" -- \
            --mount "type=bind,src=$vol,dst=/data,options=rbind:rw" \
            --mount "type=bind,src=$inner,dst=/data/sub/x,options=rbind:ro")
        case $out in
            *LANDED-IN-ETC*) landed=$((landed + 1)) ;;
            REFUSED:*) refused=$((refused + 1)); note "victim $i refused: ${out:0:200}" ;;
            *inner-volume*) ok=$((ok + 1)) ;;
            # The attacker removed the victim's mount point under it.
            *) other=$((other + 1)); note "victim $i: ${out:0:200}" ;;
        esac
    done
    touch "$vol/stop"
    note "under the race: $ok correct, $refused refused, $other lost their mount point, $landed landed in /etc"
    [ "$landed" -eq 0 ] || bad "$landed victims had the nested mount in their /etc"
}

# CVE-2025-31133: the victim's /dev is the shared volume (bound over the
# /dev tmpfs of the default spec), where the agent makes its null device;
# the attacker keeps replacing /data/null with a file of its own. Masked
# paths (/proc/kcore and others in ctr's spec) must never show it.
t_sibling_dev_null_swap() {
    local pod vol i out pwned=0 refused=0 ok=0
    pod=$(tid 0)
    vol=$E2E_TMP/$TEST-vol
    mkdir -p "$vol"
    sibling_attacker "$pod" "$pod" "$vol" \
        "while [ ! -e /data/stop ]; do rm -f /data/null; echo PWNED >/data/null; done"
    for i in $(seq 1 "$SIBLING_VICTIMS"); do
        out=$(sibling_victim "$(tid "$i")" "$pod" \
            'echo kcore=$(head -c 16 /proc/kcore; stat -c %F-%t:%T /proc/kcore)' -- \
            --mount "type=bind,src=$vol,dst=/dev,options=rbind:rw")
        case $out in
            *PWNED*) pwned=$((pwned + 1)) ;;
            REFUSED:*) refused=$((refused + 1)); note "victim $i refused: ${out:0:200}" ;;
            *kcore=character\ special\ file-1:3*) ok=$((ok + 1)) ;;
            *) bad "victim $i: $out" ;;
        esac
    done
    touch "$vol/stop"
    note "$ok masked with the null device, $refused refused, $pwned showed the attacker's file"
    [ "$pwned" -eq 0 ] || bad "$pwned victims had the attacker's file bound over a masked path"
}

# CVE-2019-5736 class: every exec into the attacker's container starts an
# agent process in its pid namespace; the attacker watches for them and
# writes through their /proc/<pid>/exe. The exe is the sealed memfd copy,
# no write lands, and the agent goes on starting containers.
t_sibling_proc_exe() {
    local pod i log out after
    pod=$(tid 0)
    after=$(tid 1)
    RUN_OPTS=(--privileged)
    start_in_pod "$pod" "$pod" sh -c 'while [ ! -e /stop ]; do
        for p in /proc/[0-9]*; do
            l=$(readlink $p/exe 2>/dev/null) || continue
            case $l in *busybox*|"") continue ;; esac
            echo "FOUND $l" >>/attack.log
            { echo -n X >>$p/exe; } 2>>/errs && echo "WROTE $l" >>/attack.log
            # In a subshell: a failed redirection of exec ends the shell.
            ( exec 3<$p/exe && { echo -n X >>/proc/self/fd/3; } && echo "WROTE-VIA-FD $l" >>/attack.log ) 2>>/errs
        done
    done; sort /errs | uniq -c | sed "s/^/ERR /" >>/attack.log; echo ATTACK-DONE >>/attack.log; sleep 100000'
    RUN_OPTS=()
    for i in $(seq 1 20); do
        exec_ --exec-id "x$i" "$pod" true >/dev/null 2>&1 || note "exec $i failed"
    done
    exec_ --exec-id stop "$pod" touch /stop >/dev/null 2>&1
    wait_until 60 grep_attack_log "$pod" ATTACK-DONE || bad "the attacker did not stop: $(attack_log "$pod" | tail -n 3)"
    log=$(attack_log "$pod")
    note "attacker saw: $(grep FOUND <<<"$log" | sort | uniq -c | tr -s ' \n' ' '); errors: $(grep ERR <<<"$log" | tr -s ' \n' ' ')"
    ! grep -q WROTE <<<"$log" || bad "a write through /proc/<pid>/exe landed: $(grep WROTE <<<"$log" | head -3)"
    # /init, the agent's own file, shows up for a forked child that has
    # joined the container's pid namespace and not yet executed the sealed
    # copy: writes to it fail (Text file busy) for as long as the agent,
    # PID 1, runs from it, which is the guest's whole life.
    ! grep FOUND <<<"$log" | grep -v -q -e 'memfd:palisade-agent' -e 'FOUND /init$' ||
        bad "an agent process ran from something other than the sealed copy or the agent's own busy file: $(grep FOUND <<<"$log" | grep -v memfd | head -3)"
    grep -q FOUND <<<"$log" || bad "the attacker never saw an agent process in 20 execs: $log"
    # shellcheck disable=SC2046
    out=$(run_ --rm $(pod_annotations "$after" "$pod") "$BUSYBOX_IMAGE" "$after" echo agent-still-works 2>&1)
    grep -q agent-still-works <<<"$out" || bad "the agent could not start a container afterwards: ${out:0:200}"
}
