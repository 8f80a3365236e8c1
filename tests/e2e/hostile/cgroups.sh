# What a pod's VM uses on the host is charged to the pod (sourced by
# tests/e2e/hostile-guest.sh): the pod's shim and VMM (every thread of it)
# run in the pod's host cgroup, the sandbox container's cgroupsPath; guest
# RAM the guest touches shows in that cgroup's memory use; a pod started
# without CRI is limited to its guest RAM plus the shim's measured
# overhead; CRI-style cgroupfs and systemd paths work below the kubelet's
# pod cgroup, which is left alone; nothing of the pod's cgroups is left
# after delete, nor after the shim is killed and containerd cleans up.
# Works on cgroup v2 (the nested test host) and v1 hosts.

HOSTILE_TESTS+=(cgroup-ctr-pod cgroup-charges-guest-memory cgroup-full-guest-within-limit
    cgroup-cri-cgroupfs-path cgroup-cri-systemd-path cgroup-bad-paths cgroup-after-shim-crash)

CGROUPS_ROOT=/sys/fs/cgroup
# The limit's overhead is the shim's constant; read, not copied, so the
# check follows the measured figure.
cgroups_overhead_mib() {
    sed -n 's/^pub const OVERHEAD_MIB: u64 = \([0-9]*\);.*/\1/p' "$E2E_REPO/shim/src/host_cgroup/mod.rs"
}
cgroups_v2() { [ "$(stat -f -c %T "$CGROUPS_ROOT")" = cgroup2fs ]; }
# The memory hierarchy's directory of cgroup PATH (/a/b).
cgroups_mem_dir() {  # PATH
    if cgroups_v2; then echo "$CGROUPS_ROOT$1"; else echo "$CGROUPS_ROOT/memory$1"; fi
}
cgroups_mem_current() {  # PATH -> bytes
    local d; d=$(cgroups_mem_dir "$1")
    if cgroups_v2; then cat "$d/memory.current"; else cat "$d/memory.usage_in_bytes"; fi
}
cgroups_mem_limit() {  # PATH -> bytes, or max
    local d v; d=$(cgroups_mem_dir "$1")
    if cgroups_v2; then cat "$d/memory.max"; return; fi
    v=$(cat "$d/memory.limit_in_bytes")
    # v1's "no limit" is the largest page-aligned value.
    if [ "${#v}" -ge 19 ]; then echo max; else echo "$v"; fi
}
# Where PID is in the memory hierarchy (v1) or the one hierarchy (v2).
cgroups_of() {  # PID
    local line
    if cgroups_v2; then
        line=$(grep '^0::' "/proc/$1/cgroup") || return 1
    else
        line=$(grep -E '^[0-9]+:([^:]*,)?memory(,[^:]*)?:' "/proc/$1/cgroup") || return 1
    fi
    echo "${line#*:*:}"
}
cgroups_shim_of() {  # VMM_PID -> its parent, the pod's shim
    local stat rest
    read -r stat <"/proc/$1/stat" || return 1
    rest=${stat##*) }
    rest=${rest#* }
    echo "${rest%% *}"
}
# The pod's shim and every thread of its VMM are in cgroup PATH.
cgroups_pod_in() {  # POD PATH
    local pod=$1 path=$2 vmm shim t at n=0
    vmm=$(pod_vmm_pid "$pod") || bad "no VMM found for pod $pod"
    shim=$(cgroups_shim_of "$vmm") || bad "no parent (shim) of the VMM $vmm"
    at=$(cgroups_of "$shim")
    [ "$at" = "$path" ] || bad "the shim (pid $shim) is in cgroup '$at', not $path: $(tr '\n' ' ' <"/proc/$shim/cgroup")"
    for t in /proc/"$vmm"/task/*; do
        at=$(cgroups_of "${t#/proc/"$vmm"/task/}") || continue
        [ "$at" = "$path" ] || bad "VMM thread ${t##*/} is in cgroup '$at', not $path"
        n=$((n + 1))
    done
    [ "$n" -gt 1 ] || bad "the VMM $vmm has $n threads: expected its vCPU and device threads"
    note "shim $shim and the VMM's $n threads in $path"
}
# cgroup PATH is gone from every hierarchy (v1) or the one (v2).
cgroups_gone() {  # PATH
    local d
    for d in "$CGROUPS_ROOT$1" "$CGROUPS_ROOT"/*"$1"; do
        [ ! -d "$d" ] || return 1
    done
    return 0
}
cgroups_no_record() {  # POD
    [ ! -e "/run/palisade/.cgroups/$1" ] || bad "the pod's cgroup record /run/palisade/.cgroups/$1 is still there: $(cat "/run/palisade/.cgroups/$1")"
}
# Makes cgroup PATH as the kubelet does, with memory and pids handed down
# to its children (v2); in every hierarchy on v1.
cgroups_make_as_kubelet() {  # PATH
    local path=$1 d sub part
    if cgroups_v2; then
        d=$CGROUPS_ROOT
        for part in $(tr '/' ' ' <<<"$path"); do
            echo "+memory +pids" >"$d/cgroup.subtree_control" || bad "cannot enable memory and pids in $d"
            d=$d/$part
            mkdir -p "$d" || bad "cannot make $d"
        done
        echo "+memory +pids" >"$d/cgroup.subtree_control" || bad "cannot enable memory and pids in $d"
    else
        for sub in "$CGROUPS_ROOT"/*/; do
            [ -e "$sub/cgroup.procs" ] || continue
            mkdir -p "$sub${path#/}" || bad "cannot make $sub${path#/}"
            if [ -e "$sub/cpuset.cpus" ]; then
                d=${sub%/}
                for part in $(tr '/' ' ' <<<"$path"); do
                    d=$d/$part
                    cat "${d%/*}/cpuset.cpus" >"$d/cpuset.cpus"
                    cat "${d%/*}/cpuset.mems" >"$d/cpuset.mems"
                done
            fi
        done
    fi
}
# Removes what cgroups_make_as_kubelet made (TOP is its first component).
cgroups_remove_tree() {  # TOP
    local d
    for d in "$CGROUPS_ROOT/$1" "$CGROUPS_ROOT"/*/"$1"; do
        [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    return 0
}
cgroups_mib() { echo $(($1 / 1048576)); }

# ctr's default cgroupsPath is /<namespace>/<id>: the pod's shim and VMM
# run there, limited to guest RAM + overhead; after delete it is gone.
t_cgroup_ctr_pod() {
    local id path limit guest_mib overhead want
    id=$(tid 1)
    path=/$CTD_NS/$id
    run_ -d "$BUSYBOX_IMAGE" "$id" sleep 1000 >"$E2E_TMP/$TEST.out" 2>&1 ||
        bad "ctr run -d failed: $(tail -n 3 "$E2E_TMP/$TEST.out")"
    wait_status "$id" RUNNING
    cgroups_pod_in "$id" "$path"
    guest_mib=$(sed -n 's/^memory_mib = \([0-9]*\)/\1/p' "$E2E_TMP/configuration.toml")
    overhead=$(cgroups_overhead_mib)
    [ -n "$guest_mib" ] && [ -n "$overhead" ] || bad "cannot tell the guest RAM ('$guest_mib') or the overhead ('$overhead')"
    want=$(((guest_mib + overhead) * 1048576))
    limit=$(cgroups_mem_limit "$path")
    [ "$limit" = "$want" ] || bad "the pod's memory limit is '$limit', want guest RAM + overhead = $guest_mib + $overhead MiB = $want"
    note "memory limit $(cgroups_mib "$limit") MiB = $guest_mib MiB guest RAM + $overhead MiB; memory.current of the running pod $(cgroups_mib "$(cgroups_mem_current "$path")") MiB"
    [ -e "/run/palisade/.cgroups/$id" ] || bad "no record of the pod's cgroups in /run/palisade/.cgroups/$id"
    remove_container "$id"
    wait_until 20 cgroups_gone "$path" || bad "cgroup $path is still there after the pod was deleted"
    cgroups_no_record "$id"
}

# Guest root touches 64 MiB more of guest RAM (a tmpfs it fills): the
# pod's cgroup is charged for it.
t_cgroup_charges_guest_memory() {
    local id path before after vmm rss0 rss1 grew
    id=$(tid 1)
    path=/$CTD_NS/$id
    run_ -d --privileged "$BUSYBOX_IMAGE" "$id" sleep 1000 >"$E2E_TMP/$TEST.out" 2>&1 ||
        bad "ctr run -d failed: $(tail -n 3 "$E2E_TMP/$TEST.out")"
    wait_status "$id" RUNNING
    cgroups_pod_in "$id" "$path"
    vmm=$(pod_vmm_pid "$id") || bad "no VMM for $id"
    exec_ --exec-id mount "$id" sh -c 'mkdir -p /fill && mount -t tmpfs -o size=160m fill /fill' \
        >"$E2E_TMP/$TEST.mount" 2>&1 || bad "cannot mount a tmpfs in the guest: $(tail -n 2 "$E2E_TMP/$TEST.mount")"
    before=$(cgroups_mem_current "$path")
    rss0=$(awk '/^VmRSS:/ { print $2 }' "/proc/$vmm/status")
    exec_ --exec-id fill "$id" dd if=/dev/zero of=/fill/zeros bs=1048576 count=64 >"$E2E_TMP/$TEST.dd" 2>&1 ||
        bad "filling the guest tmpfs failed: $(tail -n 2 "$E2E_TMP/$TEST.dd")"
    after=$(cgroups_mem_current "$path")
    rss1=$(awk '/^VmRSS:/ { print $2 }' "/proc/$vmm/status")
    grew=$(((after - before) / 1048576))
    note "memory.current $(cgroups_mib "$before") -> $(cgroups_mib "$after") MiB (+$grew); VMM RSS +$(((rss1 - rss0) / 1024)) MiB"
    # The guest may reuse a few pages it touched at boot; most of the 64
    # MiB are new to the host.
    [ "$grew" -ge 48 ] || bad "the pod's cgroup grew by $grew MiB when the guest touched 64 MiB more"
    remove_container "$id"
    wait_until 20 cgroups_gone "$path" || bad "cgroup $path is still there after the pod was deleted"
}

# Guest root fills a tmpfs with most of the guest's RAM: the VMM stays
# within the ctr pod's limit (guest RAM + overhead) and is not killed by
# it. The figures (peak, breakdown) are what the overhead was sized by.
t_cgroup_full_guest_within_limit() {
    local id path dir limit peak ooms out stat
    id=$(tid 1)
    path=/$CTD_NS/$id
    run_ -d --privileged "$BUSYBOX_IMAGE" "$id" sleep 1000 >"$E2E_TMP/$TEST.out" 2>&1 ||
        bad "ctr run -d failed: $(tail -n 3 "$E2E_TMP/$TEST.out")"
    wait_status "$id" RUNNING
    cgroups_pod_in "$id" "$path"
    limit=$(cgroups_mem_limit "$path")
    [ "$limit" != max ] || bad "the ctr pod's cgroup $path has no memory limit"
    # dd stops at ENOSPC: the tmpfs is smaller than what the guest has free.
    out=$(exec_ --exec-id fill "$id" sh -c 'mkdir -p /fill && mount -t tmpfs -o size=200m fill /fill &&
        { dd if=/dev/zero of=/fill/zeros bs=1048576 2>&1; cat /proc/meminfo | head -3; }' 2>&1)
    [[ $out == *"No space left"* ]] || bad "the guest did not fill its tmpfs: ${out:0:300}"
    [ "$(task_status "$id")" = RUNNING ] || bad "the pod is '$(task_status "$id")' after the guest filled its RAM"
    pod_vmm_pid "$id" >/dev/null || bad "the VMM is gone after the guest filled its RAM"
    exec_ --exec-id alive "$id" true || bad "the pod does not answer after the guest filled its RAM"
    dir=$(cgroups_mem_dir "$path")
    if cgroups_v2; then
        ooms=$(awk '$1 == "oom_kill" { print $2 }' "$dir/memory.events")
        peak=$(cat "$dir/memory.peak" 2>/dev/null || cat "$dir/memory.current")
        stat=$(awk '$1 ~ /^(anon|file|kernel|pagetables|sec_pagetables|slab|sock)$/ { printf "%s %d MiB, ", $1, $2 / 1048576 }' "$dir/memory.stat")
    else
        ooms=$(cat "$dir/memory.failcnt")
        peak=$(cat "$dir/memory.max_usage_in_bytes")
        stat=$(awk '$1 ~ /^(rss|cache)$/ { printf "%s %d MiB, ", $1, $2 / 1048576 }' "$dir/memory.stat")
    fi
    [ -n "$ooms" ] || bad "cannot read the OOM count of $dir"
    [ "$ooms" -eq 0 ] || bad "the pod's cgroup (limit $(cgroups_mib "$limit") MiB) OOM-killed or hit its limit $ooms times"
    note "guest: $(grep -o 'MemFree: *[0-9]* kB' <<<"$out"); pod cgroup: peak $(cgroups_mib "$peak") MiB of $(cgroups_mib "$limit") MiB; now $(cgroups_mib "$(cgroups_mem_current "$path")") MiB: ${stat%, }"
    remove_container "$id"
    wait_until 20 cgroups_gone "$path" || bad "cgroup $path is still there after the pod was deleted"
}

# CRI with the cgroupfs driver: the sandbox container's cgroup below the
# kubelet's pod cgroup, which the kubelet made (here: the test, as it
# would). The pod gets no limit of its own; its second container's
# cgroupsPath is the guest's business; the kubelet's cgroups stay.
t_cgroup_cri_cgroupfs_path() {
    local pod c2 top kube path limit
    pod=$(tid 1)
    c2=$(tid 2)
    top=e2e-kubepods-${CTD_NS##*-}
    kube=/$top/burstable/pod0a1b2c3d-e4f5
    path=$kube/$pod
    cgroups_make_as_kubelet "$kube"
    trap '_remove_test_containers; wait_until 20 cgroups_gone "'"$path"'"; cgroups_remove_tree "'"$top"'"' EXIT
    RUN_OPTS=(--cgroup "$path")
    start_in_pod "$pod" "$pod" sleep 1000
    RUN_OPTS=(--cgroup "$kube/$c2")
    start_in_pod "$c2" "$pod" sleep 1000
    RUN_OPTS=()
    cgroups_pod_in "$pod" "$path"
    limit=$(cgroups_mem_limit "$path")
    [ "$limit" = max ] || bad "a CRI pod's cgroup got the limit $limit: the kubelet's pod cgroup carries the pod's limits"
    [ ! -d "$(cgroups_mem_dir "$kube/$c2")" ] || bad "the shim made a host cgroup for the pod's second container"
    remove_container "$c2"
    remove_container "$pod"
    wait_until 20 cgroups_gone "$path" || bad "cgroup $path is still there after the pod was deleted"
    [ -d "$(cgroups_mem_dir "$kube")" ] || bad "the kubelet's pod cgroup $kube was removed"
    cgroups_no_record "$pod"
}

# CRI with the systemd driver: slice:prefix:name expands to the slices'
# cgroup path and a scope; the slices the shim had to make go with it.
t_cgroup_cri_systemd_path() {
    local pod top slice path
    pod=$(tid 1)
    top=kp${CTD_NS##*-}
    slice=$top-burstable-pod0a1b2c3d_e4f5.slice
    path=/$top.slice/$top-burstable.slice/$slice/cri-containerd-$pod.scope
    trap '_remove_test_containers; wait_until 20 cgroups_gone "'"$path"'"; cgroups_remove_tree "'"$top.slice"'"' EXIT
    RUN_OPTS=(--cgroup "$slice:cri-containerd:$pod")
    start_in_pod "$pod" "$pod" sleep 1000
    RUN_OPTS=()
    cgroups_pod_in "$pod" "$path"
    remove_container "$pod"
    wait_until 20 cgroups_gone "/$top.slice" || bad "cgroups below /$top.slice are still there after the pod was deleted: $(find "$(cgroups_mem_dir "/$top.slice")" -type d | head -5)"
    cgroups_no_record "$pod"
}

# Bad cgroupsPaths fail the Create with an error that names the path and
# the problem, and leave nothing (the runner's leftover check).
t_cgroup_bad_paths() {
    local id out bad_path why n=0
    for bad_path in "relative/pod:is relative" "/$CTD_NS/../../escape:has the component \"..\"" \
        "/$(printf 'x%.0s' $(seq 300)):bytes"; do
        why=${bad_path#*:}
        bad_path=${bad_path%%:*}
        n=$((n + 1))
        id=$(tid "$n")
        if out=$(run_ --rm --cgroup "$bad_path" "$BUSYBOX_IMAGE" "$id" true 2>&1); then
            bad "ctr run with cgroupsPath ${bad_path:0:40} succeeded"
        fi
        [[ $out == *"$why"* ]] || bad "the error for cgroupsPath ${bad_path:0:40} does not say '$why': $out"
        [[ $out == *cgroupsPath* ]] || bad "the error for ${bad_path:0:40} does not name cgroupsPath: $out"
        note "${bad_path:0:40}: ${out:0:160}"
        remove_container "$id"
    done
    cgroups_gone /escape || bad "a cgroup /escape was made"
}

# The shim is killed (its VMM dies with it): containerd runs the shim's
# delete, which removes the pod's cgroups from the record the shim left.
t_cgroup_after_shim_crash() {
    local id path vmm shim fifos f
    id=$(tid 1)
    path=/$CTD_NS/$id
    fifos=" $(_entries "$FIFO" | tr '\n' ' ') "
    run_ -d "$BUSYBOX_IMAGE" "$id" sleep 1000 >"$E2E_TMP/$TEST.out" 2>&1 ||
        bad "ctr run -d failed: $(tail -n 3 "$E2E_TMP/$TEST.out")"
    wait_status "$id" RUNNING
    vmm=$(pod_vmm_pid "$id") || bad "no VMM for $id"
    shim=$(cgroups_shim_of "$vmm")
    [ -d "$(cgroups_mem_dir "$path")" ] || bad "no cgroup $path for the running pod"
    kill -KILL "$shim"
    _vmm_gone() { [ ! -e "/proc/$vmm" ]; }
    wait_until 30 _vmm_gone || bad "the VMM $vmm outlived its shim by 30 s"
    # containerd sees the shim go and runs `containerd-shim-palisade-v2 delete`.
    wait_until 60 cgroups_gone "$path" || bad "cgroup $path is still there 60 s after the shim was killed"
    cgroups_no_record "$id"
    remove_container "$id"
    # containerd deleted the task itself when its shim died, so ctr never
    # removes its own end of the task's stdio FIFOs: the test does.
    for f in $(_entries "$FIFO"); do
        [[ $fifos == *" $f "* ]] || rm -rf "${FIFO:?}/$f"
    done
}
