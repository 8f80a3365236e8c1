# A private containerd for one test run (sourced by bash test scripts).
#
#   . tests/lib/containerd.sh
#   containerd_start DIR [BINDIR...]   # BINDIRs go first on containerd's PATH
#   $CTR images import ...             # CTR="ctr --address SOCK --namespace NS"
#   containerd_stop                    # also run by the EXIT trap it sets
#
# containerd_start writes DIR/config.toml (version 2: root DIR/root, state
# DIR/state, socket under /run/palisade-ctd-XXXXXX/, the CRI plugin
# disabled unless CTD_CRI=1), starts containerd with its log in
# DIR/containerd.log, waits until `ctr version` answers and exports:
#   CTD_DIR CTD_SOCK CTD_NS CTD_PID CTD_LOG CTR
#   CONTAINERD_ADDRESS CONTAINERD_NAMESPACE (so a plain `ctr` also talks to it,
#   e.g. inside `script -c "ctr run -t ..."`)
# containerd finds runtime shims (containerd-shim-palisade-v2) on its PATH:
# pass the directory holding the freshly built one as BINDIR.
#
# containerd_stop removes the tasks, containers and snapshots it can through
# containerd, stops containerd, kills every shim whose -address is our socket
# (and the shims' descendants: container processes, VMMs; thawed first if
# paused), removes runc's state and the cgroups of our namespace, unmounts
# what is left under DIR (children first, lazily if busy), and removes DIR
# and the socket directory. It is safe to call twice and leaves nothing behind even
# when a test died midway. containerd_start installs an EXIT trap that calls
# it (keeping an EXIT trap you set before); INT/TERM/HUP exit so the trap runs.
# CTD_NO_TRAP=1: set no traps, call containerd_stop yourself.
#
# Works on the project's machines (cgroup v1 hybrid) and in the nested test
# host (cgroup v2, / read-only: nothing is written outside DIR, the socket
# directory and containerd's fixed /run/containerd).
#
# Knobs: CTD_NAMESPACE (default CTD_NAMESPACE_PREFIX-XXXXXX, unique per
# run; the prefix defaults to palisade-e2e), CTD_START_TIMEOUT (seconds,
# default 60), CTD_LOG_LEVEL (default info), CTD_CRI=1, CTD_CRI_CONFIG_PATH
# (the palisade runtime entry's ConfigPath, default
# /etc/palisade/configuration.toml), CTD_KEEP_LOG=DIR (containerd's log,
# with every shim's and VMM's lines, is copied there when it stops; in the
# test host, use a directory under PALISADE_TESTHOST_OUT).
#
# Must be called from the test script itself, not in a $(...) subshell:
# containerd dies with the shell that started it.

_ctd_err() { echo "containerd.sh: $*" >&2; }

# Prints a containerd config.toml (version 2) for a private instance: root
# and state under DIR, the gRPC socket SOCK (its ttrpc twin is SOCK.ttrpc).
# With CRI (third argument "cri"), the CRI plugin is on and has runtimes
# `runc` (the default) and `palisade`.
containerd_config() {  # DIR SOCK [cri]
    local dir=$1 sock=$2 cri=${3:-}
    cat <<EOF
# Written by tests/lib/containerd.sh for a private test containerd.
version = 2
root = "$dir/root"
state = "$dir/state"
EOF
    if [ "$cri" = cri ]; then
        echo 'disabled_plugins = []'
    else
        echo '# ctr tests need no CRI; it is slow to start and listens on a port.'
        echo 'disabled_plugins = ["io.containerd.grpc.v1.cri"]'
    fi
    cat <<EOF

[grpc]
  address = "$sock"

[ttrpc]
  address = "$sock.ttrpc"

[debug]
  level = "${CTD_LOG_LEVEL:-info}"

[plugins]
  # The default is /opt/containerd, read-only in the nested test host.
  [plugins."io.containerd.internal.v1.opt"]
    path = "$dir/opt"
EOF
    if [ "$cri" = cri ]; then
        containerd_cri_plugin_config "${CTD_CRI_CONFIG_PATH:-/etc/palisade/configuration.toml}"
    fi
}

# The CRI plugin section with a `palisade` runtime (what the README shows for
# Kubernetes: a RuntimeClass with handler "palisade" selects it). ConfigPath
# becomes runtimeoptions.v1.Options.config_path, which the shim reads.
containerd_cri_plugin_config() {  # [CONFIG_PATH]
    cat <<EOF
  [plugins."io.containerd.grpc.v1.cri"]
    # No port clash with another containerd on the same machine.
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.palisade]
        runtime_type = "io.containerd.palisade.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.palisade.options]
          ConfigPath = "${1:-/etc/palisade/configuration.toml}"
EOF
}

containerd_start() {  # DIR [BINDIR...]
    local dir=${1:-} d fstype
    [ -n "$dir" ] || { _ctd_err "usage: containerd_start DIR [BINDIR...]"; return 2; }
    shift
    if [ -n "${CTD_PID:-}" ] && kill -0 "$CTD_PID" 2>/dev/null; then
        _ctd_err "a containerd from this shell is already running (pid $CTD_PID): containerd_stop it first"
        return 1
    fi
    command -v containerd >/dev/null && command -v ctr >/dev/null ||
        { _ctd_err "containerd or ctr not found: apt-get install containerd"; return 1; }
    mkdir -p "$dir" || { _ctd_err "cannot create $dir"; return 1; }
    dir=$(cd "$dir" && pwd -P)
    # The overlayfs snapshotter cannot put its upper directories on overlayfs.
    fstype=$(stat -f -c %T "$dir")
    if [ "$fstype" = overlayfs ]; then
        _ctd_err "$dir is on overlayfs, where the overlayfs snapshotter cannot work: pick a directory on ext4/xfs/tmpfs (e.g. under /tmp or /var/lib/containerd)"
        return 1
    fi
    # The BINDIRs, in the order given, before our PATH.
    local path=$PATH bindirs="" bindir
    for bindir in "$@"; do
        [ -d "$bindir" ] || { _ctd_err "BINDIR $bindir is not a directory"; return 1; }
        bindirs+=$(cd "$bindir" && pwd -P):
    done
    path=$bindirs$path
    # Unix socket paths are limited to 107 bytes: keep ours short and fixed,
    # whatever DIR is. (Shim sockets are /run/containerd/s/<sha256>, fixed by
    # containerd 1.6 itself.)
    local sockdir
    sockdir=$(mktemp -d /run/palisade-ctd-XXXXXX) ||
        { _ctd_err "cannot create a socket directory under /run (are you root?)"; return 1; }
    CTD_DIR=$dir
    CTD_SOCKDIR=$sockdir
    CTD_SOCK=$sockdir/c.sock
    # A namespace of our own: runc keys its state (/run/containerd/runc/NS)
    # and ctr its default cgroups (/NS/ID) by it, so two test runs at once
    # must not share one.
    CTD_NS=${CTD_NAMESPACE:-${CTD_NAMESPACE_PREFIX:-palisade-e2e}-${sockdir##*-}}
    CTD_LOG=$dir/containerd.log
    CTR="ctr --address $CTD_SOCK --namespace $CTD_NS"
    CONTAINERD_ADDRESS=$CTD_SOCK
    CONTAINERD_NAMESPACE=$CTD_NS
    export CTD_DIR CTD_SOCKDIR CTD_SOCK CTD_NS CTD_LOG CTR CONTAINERD_ADDRESS CONTAINERD_NAMESPACE

    if [ -z "${CTD_NO_TRAP:-}" ]; then
        # Keep an EXIT trap the caller set before (`trap -p` quotes it).
        local prev
        prev=$(trap -p EXIT)
        if [ -n "$prev" ]; then
            eval "set -- $prev"
            prev=$3
        fi
        # shellcheck disable=SC2064  # expand prev now
        trap "containerd_stop; $prev" EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
        trap 'exit 129' HUP
    fi

    containerd_config "$dir" "$CTD_SOCK" ${CTD_CRI:+cri} >"$dir/config.toml"
    # --pdeathsig: containerd dies with this shell even if it is SIGKILLed
    # (the shims do not: containerd_stop finds them by their -address).
    PATH=$path setpriv --pdeathsig KILL -- containerd --config "$dir/config.toml" \
        </dev/null >>"$CTD_LOG" 2>&1 &
    CTD_PID=$!
    export CTD_PID

    local timeout=${CTD_START_TIMEOUT:-60} start=$SECONDS
    while :; do
        if timeout 10 ctr --address "$CTD_SOCK" version >/dev/null 2>&1; then
            break
        fi
        if ! kill -0 "$CTD_PID" 2>/dev/null; then
            _ctd_err "containerd exited during start-up; the end of $CTD_LOG:"
            tail -n 20 "$CTD_LOG" >&2
            return 1
        fi
        if [ $((SECONDS - start)) -ge "$timeout" ]; then
            _ctd_err "containerd did not answer on $CTD_SOCK within ${timeout}s (CTD_START_TIMEOUT); the end of $CTD_LOG:"
            tail -n 20 "$CTD_LOG" >&2
            return 1
        fi
        sleep 0.2
    done
}

# Imports an image archive into our namespace (and unpacks it for the
# default snapshotter).
containerd_import() {  # TAR
    local out
    out=$(timeout 300 $CTR images import "$1" 2>&1) ||
        { _ctd_err "ctr images import $1 failed: $out"; return 1; }
}

# Process helpers in plain bash: no pgrep/ps/awk. In the nested test host
# every program started costs a few hundred milliseconds (emulated page
# faults, libraries over 9p), and these run after every test.

# Pids whose command line (arguments joined by spaces) matches the ERE.
ctd_pids_matching() {  # regex
    local d line IFS=' '
    local -a args
    for d in /proc/[0-9]*; do
        mapfile -d '' -t args 2>/dev/null <"$d/cmdline" || continue
        [ ${#args[@]} -gt 0 ] || continue
        line="${args[*]}"
        [[ $line =~ $1 ]] && echo "${d#/proc/}"
    done
    return 0
}

# Pids of the shims this containerd started: containerd runs them as
# `containerd-shim-<name> -namespace NS -id ID -address SOCK ...`.
containerd_shim_pids() {
    [ -n "${CTD_SOCK:-}" ] || return 0
    local sock_re=${CTD_SOCK//./\\.}
    ctd_pids_matching "^[^ ]*containerd-shim-[^ ]* .*-{1,2}address[ =]$sock_re( |\$)"
}

# The pids of PIDs and all their descendants.
_ctd_tree() {  # PID...
    [ $# -gt 0 ] || return 0
    local -A keep=() parent=()
    local d p stat rest grew=1
    for p in "$@"; do keep[$p]=1; done
    for d in /proc/[0-9]*; do
        read -r stat 2>/dev/null <"$d/stat" || continue
        rest=${stat##*) }          # after "pid (comm) ": "state ppid ..."
        rest=${rest#* }
        parent[${d#/proc/}]=${rest%% *}
    done
    while [ -n "$grew" ]; do
        grew=
        for p in "${!parent[@]}"; do
            if [ -z "${keep[$p]:-}" ] && [ -n "${keep[${parent[$p]}]:-}" ]; then
                keep[$p]=1
                grew=1
            fi
        done
    done
    printf '%s\n' "${!keep[@]}"
}

# Mount points at or under DIR, children before their parents (reverse
# mount order), for unmounting.
containerd_mounts_under() {  # DIR
    local dir=$1 mp i
    local -a all=()
    while read -r _ _ _ _ mp _; do
        [[ $mp == "$dir" || $mp == "$dir"/* ]] && all+=("$mp")
    done </proc/self/mountinfo
    for ((i = ${#all[@]} - 1; i >= 0; i--)); do echo "${all[i]}"; done
}

# The cgroup directories of namespace NS: /sys/fs/cgroup/NS (v2) or
# /sys/fs/cgroup/<controller>/NS (v1), each listed once.
ctd_cgroup_dirs() {  # NS
    local d
    for d in /sys/fs/cgroup/"$1" /sys/fs/cgroup/*/"$1"; do
        [ -d "$d" ] && echo "$d"
    done
    return 0
}

# Thaws the cgroups PIDs are in (v1 freezer, v2 cgroup.freeze).
_ctd_thaw() {  # PID...
    local p h ctrl path
    for p in "$@"; do
        while IFS=: read -r h ctrl path; do
            if [ "$ctrl" = freezer ] && [ -w "/sys/fs/cgroup/freezer$path/freezer.state" ]; then
                echo THAWED >"/sys/fs/cgroup/freezer$path/freezer.state" 2>/dev/null
            elif [ -z "$ctrl" ]; then
                for h in /sys/fs/cgroup /sys/fs/cgroup/unified; do
                    [ ! -w "$h$path/cgroup.freeze" ] || echo 0 >"$h$path/cgroup.freeze" 2>/dev/null
                done
            fi
        done 2>/dev/null <"/proc/$p/cgroup"
    done
}

# Removes the (process-free) cgroups of namespace NS, children first.
_ctd_remove_cgroups() {  # NS
    local d left=''
    [ -n "$1" ] || return 0
    for d in $(ctd_cgroup_dirs "$1"); do
        find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
        [ ! -d "$d" ] || left+=" $d"
    done
    [ -z "$left" ] || { _ctd_err "cannot remove cgroups (processes left in them?):$left"; return 1; }
}

# Sockets (unix, listening) held by PIDs under /run/containerd/s: a shim
# that is killed leaves its socket behind.
_ctd_shim_sockets() {  # PID...
    local p inodes=""
    for p in "$@"; do
        inodes+=" $(ls -l "/proc/$p/fd" 2>/dev/null | sed -n 's/.*socket:\[\([0-9]*\)\].*/\1/p' | tr '\n' ' ')"
    done
    [ -n "${inodes// /}" ] || return 0
    awk -v list="$inodes" 'BEGIN { n = split(list, l, " "); for (i = 1; i <= n; i++) want[l[i]] = 1 }
        NR > 1 && ($7 in want) && $8 ~ "^/run/containerd/s/" { print $8 }' /proc/net/unix | sort -u
}

containerd_stop() {
    [ -n "${CTD_DIR:-}" ] || return 0
    local rc=0 ns id pids left socks m i p
    # 1. Through containerd, while it runs: kills container processes
    #    properly (runc thaws paused ones), unmounts rootfs, lets shims exit.
    if [ -n "${CTD_PID:-}" ] && kill -0 "$CTD_PID" 2>/dev/null; then
        local c="ctr --address $CTD_SOCK"
        for ns in $(timeout 10 $c namespaces ls -q 2>/dev/null); do
            for id in $(timeout 10 $c -n "$ns" tasks ls -q 2>/dev/null); do
                timeout 20 $c -n "$ns" tasks delete --force "$id" >/dev/null 2>&1
            done
            for id in $(timeout 10 $c -n "$ns" containers ls -q 2>/dev/null); do
                timeout 20 $c -n "$ns" containers delete "$id" >/dev/null 2>&1
            done
        done
        # Shims exit by themselves once their last task is deleted.
        for i in $(seq 50); do
            [ -n "$(containerd_shim_pids)" ] || break
            sleep 0.1
        done
        kill -TERM "$CTD_PID" 2>/dev/null
        for i in $(seq 50); do
            kill -0 "$CTD_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$CTD_PID" 2>/dev/null
    fi
    [ -n "${CTD_PID:-}" ] && wait "$CTD_PID" 2>/dev/null
    if [ -n "${CTD_KEEP_LOG:-}" ]; then
        mkdir -p "$CTD_KEEP_LOG" && cp "$CTD_LOG" "$CTD_KEEP_LOG/containerd-$CTD_NS.log" ||
            _ctd_err "cannot keep the log in $CTD_KEEP_LOG (CTD_KEEP_LOG)"
    fi
    # 2. Whatever survived: shims and everything under them.
    pids=$(containerd_shim_pids)
    if [ -n "$pids" ]; then
        socks=$(_ctd_shim_sockets $pids)
        left=$(_ctd_tree $pids)
        _ctd_err "killing leftover shims and their processes: $(echo $left)"
        # A frozen (paused) process does not die until it is thawed.
        _ctd_thaw $left
        kill -KILL $left 2>/dev/null
        for i in $(seq 50); do
            local alive=
            for p in $left; do [ ! -e "/proc/$p" ] || alive=1; done
            [ -n "$alive" ] || break
            sleep 0.1
        done
        # shellcheck disable=SC2086
        [ -z "$socks" ] || rm -f $socks
    fi
    # 3. What runc keeps per namespace, outside our directories: its state
    #    (/run/containerd/runc/NS; an empty dir even after a clean run) and
    #    the cgroups ctr made (/NS/ID in every hierarchy). The namespace is
    #    ours alone (see containerd_start), so all of it goes.
    rm -rf --one-file-system "/run/containerd/runc/$CTD_NS"
    _ctd_remove_cgroups "$CTD_NS" || rc=1
    # 4. Mounts under DIR and the socket dir, children first; lazily if busy.
    for i in 1 2 3; do
        left=$(containerd_mounts_under "$CTD_DIR"; containerd_mounts_under "$CTD_SOCKDIR")
        [ -n "$left" ] || break
        while IFS= read -r m; do
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
        done <<<"$left"
    done
    left=$(containerd_mounts_under "$CTD_DIR"; containerd_mounts_under "$CTD_SOCKDIR")
    # 5. The directories. Never rm through a mount that is still there.
    if [ -n "$left" ]; then
        _ctd_err "cannot unmount, leaving $CTD_DIR in place: $(echo $left)"
        rc=1
    else
        rm -rf --one-file-system "$CTD_DIR" || rc=1
    fi
    rm -rf --one-file-system "$CTD_SOCKDIR" || rc=1
    CTD_DIR='' CTD_PID='' CTD_SOCK='' CTD_SOCKDIR=''
    return $rc
}
