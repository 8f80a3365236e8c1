#!/usr/bin/env bash
# The hostile-guest suite: attacks a pod's guest makes on the host, each
# against a real containerd and a real pod, the attacker being guest root
# (a privileged container, which can mount the pod's `palisade` virtio-fs
# tag itself and reach the whole share). Needs hardware-style KVM, so it
# runs through the nested test host here:
#
#   tests/lib/with-kvm -- tests/e2e/hostile-guest.sh [TEST...]
#
# The cases live in tests/e2e/hostile/*.sh, one file a topic. Each appends
# its test names to HOSTILE_TESTS and defines t_NAME (dashes become
# underscores), using the helpers of tests/e2e/ctr-lib.sh (a private
# containerd, run_test's time limit and leftover check) and those below.
set -u
RUNTIME=${RUNTIME:-io.containerd.palisade.v2}
. "$(dirname "$0")/ctr-lib.sh"

SANDBOX_ID_KEY=io.kubernetes.cri.sandbox-id
CONTAINER_TYPE_KEY=io.kubernetes.cri.container-type

# --- helpers for the cases -------------------------------------------------

# The annotations that put container ID in pod POD (the sandbox container
# of a pod has id == POD), as CRI sets them.
pod_annotations() {  # ID POD
    reg_id "$2"
    if [ "$1" = "$2" ]; then
        echo --annotation "$CONTAINER_TYPE_KEY=sandbox" --annotation "$SANDBOX_ID_KEY=$2"
    else
        echo --annotation "$CONTAINER_TYPE_KEY=container" --annotation "$SANDBOX_ID_KEY=$2"
    fi
}

# Starts a detached container ID in pod POD (extra ctr run options before
# the image go in RUN_OPTS, an array) and waits until it runs.
start_in_pod() {  # ID POD CMD...
    local id=$1 pod=$2
    shift 2
    # shellcheck disable=SC2046
    run_ -d $(pod_annotations "$id" "$pod") "${RUN_OPTS[@]}" "$BUSYBOX_IMAGE" "$id" "$@" \
        >"$E2E_TMP/$TEST.$id.out" 2>&1 ||
        bad "ctr run -d $id failed: $(tail -n 3 "$E2E_TMP/$TEST.$id.out")"
    wait_status "$id" RUNNING
}
RUN_OPTS=()

# Guest root with the whole share at /mnt: a privileged container of pod
# POD that mounts the pod's virtio-fs tag, then runs SCRIPT (sh) with its
# output in the container's /attack.log (read it with attack_log).
start_attacker() {  # ID POD SCRIPT
    local id=$1 pod=$2 script=$3
    RUN_OPTS=(--privileged)
    start_in_pod "$id" "$pod" sh -c "mkdir -p /mnt; mount -t virtiofs palisade /mnt >/attack.log 2>&1 || { echo MOUNT-FAILED >>/attack.log; sleep 100000; }
echo MOUNTED >>/attack.log
( $script ) >>/attack.log 2>&1
echo ATTACK-DONE >>/attack.log
sleep 100000"
    RUN_OPTS=()
    wait_until 60 grep_attack_log "$id" MOUNTED ||
        bad "the attacker could not mount the share: $(attack_log "$id" | tail -n 3)"
}
attack_log() { exec_ --exec-id "log$RANDOM" "$1" cat /attack.log 2>&1; }
grep_attack_log() { attack_log "$1" | grep -q -- "$2"; }

# The pod's VMM: the palisade-vmm process whose cwd is its sandbox dir.
pod_vmm_pid() {  # POD
    local p
    for p in $(vmm_pids); do
        [ "$(readlink "/proc/$p/cwd" 2>/dev/null)" = "/run/palisade/$1" ] && { echo "$p"; return 0; }
    done
    return 1
}

# Mount points on the host that lie outside what a pod may mount on: its
# own sandbox directory and containerd's directories.
host_mounts_outside() {  # POD
    awk -v sb="/run/palisade/$1" -v ctd="$CTD_DIR" '
        { p = $5; gsub(/\\040/, " ", p) }
        index(p, sb "/") == 1 || p == sb || index(p, ctd "/") == 1 { next }
        { print p }' /proc/self/mountinfo | sort
}

# --- the cases ---------------------------------------------------------------
HOSTILE_TESTS=()
for case_file in "$(dirname "$0")"/hostile/*.sh; do
    # shellcheck disable=SC1090
    . "$case_file"
done

ctr_suite_select "$@" -- "${HOSTILE_TESTS[@]}"
[ "$RUNTIME" = io.containerd.palisade.v2 ] ||
    echo "NOTE: a dry run with RUNTIME=$RUNTIME: the palisade checks are expected to fail"
ctr_suite_setup hostile-guest
for t in $E2E_SELECTED; do
    limit_var=LIMIT_${t//-/_}
    run_test "$t" "${!limit_var:-$TEST_TIMEOUT}"
done
ctr_suite_finish
