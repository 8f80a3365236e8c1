#!/bin/bash
# Build (once) the assets of the nested KVM test host and print their directory.
#
#   tests/testhost/prepare.sh [--force]
#
# The assets live outside the repo, in
#   ${PALISADE_CACHE:-/var/cache/palisade}/testhost/<key>/
#     vmlinuz          Debian's generic 6.1 kernel (linux-image-6.1.0-N-amd64)
#     initrd.img       busybox-static + /init + the modules the test host needs
#     modules/lib/modules/<kver>/   the kernel's whole module tree (with
#                      modules.dep), bind-mounted on /lib/modules/<kver> inside
#                      the test host so `modprobe` works there
#     info             what was built from what
# <key> hashes the kernel package and version chosen, busybox's version, this
# script and tests/testhost/init; a directory is only (re)built when the key
# changes. Builds run under a flock and are atomic (build in a temp dir,
# rename). Progress goes to stderr; stdout gets the asset dir only.
#
# Environment:
#   PALISADE_CACHE                  cache root (default /var/cache/palisade)
#   PALISADE_TESTHOST_KERNEL_PKG    force a kernel package (e.g.
#                                   linux-image-6.1.0-56-amd64-unsigned)
#   PALISADE_TESTHOST_QUIET=1       no progress messages
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root="${PALISADE_CACHE:-/var/cache/palisade}/testhost"
force=0
case "${1:-}" in
    --force) force=1 ;;
    "") ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

log() { [ -n "${PALISADE_TESTHOST_QUIET:-}" ] || echo "testhost-prepare: $*" >&2; }
die() { echo "testhost-prepare: error: $*" >&2; exit 1; }

# Modules the test host must have, in the order testing.md lists them. Their
# dependencies (from modules.dep) are added and everything is loaded in
# dependency order. A required module that is neither a .ko nor built in is
# an error.
REQUIRED_MODULES=(
    virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
    netfs fscache 9pnet 9pnet_virtio 9p
    ccp irqbypass kvm kvm-amd
    overlay
)
# The test host's /init loads these (and their dependencies) first, as it
# needs them to mount its root; the rest load in the background meanwhile.
EARLY_MODULES=(virtio_pci 9pnet_virtio 9p overlay)
# Loaded when the kernel has them: vhost-vsock (a benchmark peer for QEMU in
# the test host) and networking.
OPTIONAL_MODULES=(
    vhost_iotlb vhost vsock vmw_vsock_virtio_transport_common vhost_vsock
    vhost_net tun veth
    sch_ingress cls_u32 cls_flower act_mirred
)

apt_quiet() {
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q "$@" >&2
}

# Install Debian packages that are missing (CI machines start fresh).
ensure_pkgs() {
    local p missing=()
    for p in "$@"; do
        dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed \
            || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    if ! apt_quiet install -y --no-install-recommends "${missing[@]}"; then
        apt_quiet update
        apt_quiet install -y --no-install-recommends "${missing[@]}" \
            || die "cannot install ${missing[*]}"
    fi
}

# The newest linux-image-6.1.0-N-amd64[-unsigned] apt knows (the generic
# flavour: -cloud- lacks 9p). Ties go to the signed package.
list_kernels() {
    apt-cache pkgnames linux-image-6.1.0- 2>/dev/null \
        | grep -E '^linux-image-6\.1\.0-[0-9]+-amd64(-unsigned)?$' \
        | awk -F- '{ abi = $5; uns = ($NF == "unsigned") ? 1 : 0; print abi, uns, $0 }' \
        | sort -k1,1n -k2,2nr | tail -n 1 | cut -d' ' -f3
}

pick_kernel() {
    local pkg
    if [ -n "${PALISADE_TESTHOST_KERNEL_PKG:-}" ]; then
        pkg=$PALISADE_TESTHOST_KERNEL_PKG
    else
        pkg=$(list_kernels)
        if [ -z "$pkg" ]; then
            log "apt knows no linux-image-6.1.0-*-amd64: running apt-get update"
            apt_quiet update || true
            pkg=$(list_kernels)
        fi
        [ -n "$pkg" ] || die "apt offers no linux-image-6.1.0-*-amd64 package"
    fi
    local ver
    ver=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | sed -n 's/^Version: //p' | head -n 1)
    [ -n "$ver" ] || die "apt has no candidate version of $pkg"
    printf '%s %s\n' "$pkg" "$ver"
}

# --- what we need on this machine --------------------------------------------
ensure_pkgs busybox-static cpio kmod qemu-system-x86 xz-utils zstd
busybox_bin=$(dpkg -L busybox-static | grep -E '/bin/busybox$' | head -n 1)
[ -x "$busybox_bin" ] || die "busybox-static installed but no busybox binary found"
busybox_ver=$(dpkg-query -W -f='${Version}' busybox-static)

# apt-cache takes seconds here (no pkgcache.bin), so the choice is memoized
# until apt's package lists change.
apt_stamp() {
    stat -c '%Y %s %n' /var/lib/apt/lists/*_Packages* 2>/dev/null | sha256sum | cut -c1-16
}
mkdir -p "$cache_root"
memo="$cache_root/.kernel-choice"
kpkg='' kver_pkg=''
if [ -z "${PALISADE_TESTHOST_KERNEL_PKG:-}" ] && [ -f "$memo" ]; then
    read -r m_stamp m_pkg m_ver < "$memo" || true
    if [ "${m_stamp:-}" = "$(apt_stamp)" ] && [ -n "${m_ver:-}" ]; then
        kpkg=$m_pkg kver_pkg=$m_ver
    fi
fi
if [ -z "$kpkg" ]; then
    read -r kpkg kver_pkg < <(pick_kernel)
    [ -n "$kver_pkg" ] || exit 1
    if [ -z "${PALISADE_TESTHOST_KERNEL_PKG:-}" ]; then
        echo "$(apt_stamp) $kpkg $kver_pkg" > "$memo.$$" && mv -f "$memo.$$" "$memo"
    fi
fi
# linux-image-6.1.0-56-amd64[-unsigned] -> kernel release 6.1.0-56-amd64
krel=${kpkg#linux-image-}
krel=${krel%-unsigned}

key=$( {
    printf 'kernel=%s=%s\nbusybox=%s\n' "$kpkg" "$kver_pkg" "$busybox_ver"
    cat "$here/prepare.sh" "$here/init"
} | sha256sum | cut -c1-16)
dest="$cache_root/$key"

complete() { [ -f "$1/vmlinuz" ] && [ -f "$1/initrd.img" ] && [ -f "$1/info" ] && [ -f "$1/.inuse" ]; }

if [ "$force" = 0 ] && complete "$dest"; then
    echo "$dest"
    exit 0
fi

exec 9>"$cache_root/.lock"
flock 9
if [ "$force" = 0 ] && complete "$dest"; then   # built while we waited
    echo "$dest"
    exit 0
fi

start=$(date +%s)
work=$(mktemp -d "$cache_root/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "building $dest ($kpkg $kver_pkg)"

# --- the kernel ----------------------------------------------------------------
dl="$work/dl"
mkdir -p "$dl"
chmod 0755 "$work" "$dl"
download() {
    (cd "$dl" && apt-get -q download "$kpkg=$kver_pkg" 2>&1 \
        | grep -v 'Download is performed unsandboxed' >&2; exit "${PIPESTATUS[0]}")
}
if ! download; then
    log "download failed: running apt-get update and retrying"
    apt_quiet update || true
    download || die "apt-get download $kpkg=$kver_pkg failed"
fi
deb=$(ls "$dl"/*.deb 2>/dev/null | head -n 1)
[ -n "$deb" ] || die "apt-get download produced no .deb"
log "unpacking $(basename "$deb")"
dpkg-deb -x "$deb" "$work/kpkg"
rm -rf "$dl"

[ -f "$work/kpkg/boot/vmlinuz-$krel" ] || die "no boot/vmlinuz-$krel in $kpkg"
mkdir -p "$work/out/modules/lib/modules"
moddir_src="$work/kpkg/lib/modules/$krel"
[ -d "$moddir_src" ] || moddir_src="$work/kpkg/usr/lib/modules/$krel"
[ -d "$moddir_src" ] || die "no lib/modules/$krel in $kpkg"
mv "$moddir_src" "$work/out/modules/lib/modules/$krel"
mv "$work/kpkg/boot/vmlinuz-$krel" "$work/out/vmlinuz"
cp "$work/kpkg/boot/config-$krel" "$work/out/config" 2>/dev/null || true

# The uncompressed ELF vmlinux, booted through its PVH entry (CONFIG_PVH=y):
# QEMU loads it directly, which saves the ~7 s the bzImage's decompressor
# (xz) takes under TCG. The payload is located from the bzImage header
# (setup_sects at 0x1f1, payload_offset/length at 0x248/0x24c).
extract_vmlinux() {  # bzImage out
    local ss po pl
    ss=$(od -An -tu1 -j $((0x1f1)) -N1 "$1" | tr -d ' ')
    po=$(od -An -tu4 -j $((0x248)) -N4 "$1" | tr -d ' ')
    pl=$(od -An -tu4 -j $((0x24c)) -N4 "$1" | tr -d ' ')
    [ -n "$ss" ] && [ -n "$po" ] && [ -n "$pl" ] || return 1
    [ "$ss" = 0 ] && ss=4
    tail -c +$(( (ss + 1) * 512 + po + 1 )) "$1" | head -c "$pl" > "$2.payload"
    case "$(od -An -tx1 -N6 "$2.payload" | tr -d ' ')" in
        fd377a585a00) xz -dc --single-stream < "$2.payload" > "$2" ;;
        28b52ffd*)    zstd -qdc < "$2.payload" > "$2" ;;
        1f8b*)        gzip -dc < "$2.payload" > "$2" 2>/dev/null; [ -s "$2" ] ;;
        *) false ;;
    esac || { rm -f "$2.payload" "$2"; return 1; }
    rm -f "$2.payload"
    [ "$(od -An -tx1 -N4 "$2" | tr -d ' ')" = 7f454c46 ] || { rm -f "$2"; return 1; }
}
if grep -qx 'CONFIG_PVH=y' "$work/out/config" 2>/dev/null && extract_vmlinux "$work/out/vmlinuz" "$work/out/vmlinux"; then
    log "extracted the PVH vmlinux"
else
    log "warning: no PVH vmlinux; the test host boots the (slower) bzImage"
fi
rm -rf "$work/kpkg"
depmod -b "$work/out/modules" "$krel" || die "depmod failed"
moddir="$work/out/modules/lib/modules/$krel"

# --- module dependency resolution --------------------------------------------------
declare -A dep_of=()      # relative path -> its dependencies (relative paths)
declare -A path_of=()     # normalized module name -> relative path
norm() { local n=${1##*/}; n=${n%%.ko*}; echo "${n//-/_}"; }
while IFS= read -r line; do
    rel=${line%%:*}
    dep_of[$rel]=${line#*:}
    path_of[$(norm "$rel")]=$rel
done < "$moddir/modules.dep"
declare -A builtin=()
if [ -f "$moddir/modules.builtin" ]; then
    while IFS= read -r line; do builtin[$(norm "$line")]=1; done < "$moddir/modules.builtin"
fi

declare -A visited=() required=()
order=()
visit() {   # $1 = relative path, $2 = R|O
    local rel=$1 kind=$2 d
    if [ "$kind" = R ]; then required[$rel]=1; fi
    # Required modules are visited first, so a module (and its dependencies)
    # reached again from an optional one is already marked.
    [ -z "${visited[$rel]:-}" ] || return 0
    visited[$rel]=1
    for d in ${dep_of[$rel]}; do visit "$d" "$kind"; done
    order+=("$rel")
}
notes=()
for m in "${REQUIRED_MODULES[@]}"; do
    n=$(norm "$m")
    if [ -n "${path_of[$n]:-}" ]; then visit "${path_of[$n]}" R
    elif [ -n "${builtin[$n]:-}" ]; then notes+=("$m: built in")
    else die "required module '$m' is missing from $kpkg (not in modules.dep nor modules.builtin)"
    fi
done
for m in "${OPTIONAL_MODULES[@]}"; do
    n=$(norm "$m")
    if [ -n "${path_of[$n]:-}" ]; then visit "${path_of[$n]}" O
    elif [ -n "${builtin[$n]:-}" ]; then notes+=("$m: built in")
    else notes+=("$m: absent (optional, skipped)"); log "optional module $m absent, skipped"
    fi
done

declare -A early=()
mark_early() { local d; early[$1]=1; for d in ${dep_of[$1]}; do mark_early "$d"; done; }
for m in "${EARLY_MODULES[@]}"; do
    n=$(norm "$m")
    [ -z "${path_of[$n]:-}" ] || mark_early "${path_of[$n]}"
done

# --- the initramfs ---------------------------------------------------------------------
ird="$work/initramfs"
mkdir -p "$ird"/{bin,dev,proc,sys,newroot,tmp,run,etc/testhost,"lib/modules/$krel"}
cp "$busybox_bin" "$ird/bin/busybox"
ln -s busybox "$ird/bin/sh"
mkdir -p "$ird/sbin"
ln -s ../bin/busybox "$ird/sbin/modprobe"   # the kernel's request_module helper
install -m 0755 "$here/init" "$ird/init"
mknod -m 0600 "$ird/dev/console" c 5 1
mknod -m 0666 "$ird/dev/null" c 1 3
: > "$ird/etc/testhost/modules"
for rel in "${order[@]}"; do
    src="$moddir/$rel"
    dst_rel=${rel%.xz}; dst_rel=${dst_rel%.zst}; dst_rel=${dst_rel%.gz}
    mkdir -p "$ird/lib/modules/$krel/$(dirname "$dst_rel")"
    case "$rel" in
        *.ko)     cp "$src" "$ird/lib/modules/$krel/$dst_rel" ;;
        *.ko.xz)  xz -dc "$src" > "$ird/lib/modules/$krel/$dst_rel" ;;
        *.ko.zst) zstd -qdc "$src" > "$ird/lib/modules/$krel/$dst_rel" ;;
        *.ko.gz)  gzip -dc "$src" > "$ird/lib/modules/$krel/$dst_rel" ;;
        *) die "unknown module file type: $rel" ;;
    esac
    if [ -n "${required[$rel]:-}" ]; then k=R; else k=O; fi
    if [ -n "${early[$rel]:-}" ]; then g=F; else g=B; fi
    echo "$k $g $dst_rel" >> "$ird/etc/testhost/modules"
done
echo "$krel" > "$ird/etc/testhost/kver"
(cd "$ird" && find . -mindepth 1 | LC_ALL=C sort \
    | cpio --quiet -o -H newc -R 0:0 --reproducible > "$work/out/initrd.img")
rm -rf "$ird"

{
    echo "key=$key"
    echo "kernel_package=$kpkg"
    echo "kernel_version=$kver_pkg"
    echo "kernel_release=$krel"
    echo "busybox_version=$busybox_ver"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "build_seconds=$(( $(date +%s) - start ))"
    echo "modules (load order):"
    for rel in "${order[@]}"; do
        if [ -n "${required[$rel]:-}" ]; then k=""; else k=" (optional)"; fi
        if [ -n "${early[$rel]:-}" ]; then g=" (early)"; else g=""; fi
        echo "  $rel$k$g"
    done
    for n in "${notes[@]}"; do echo "note: $n"; done
} > "$work/out/info"

: > "$work/out/.inuse"          # `run` holds a shared flock on it
: > "$work/out/.last-used"      # and touches this
chmod -R a+rX "$work/out"
if [ -d "$dest" ]; then         # --force: out of the way first, atomically
    mv -T "$dest" "$work/old" && rm -rf "$work/old"
fi
mv -T "$work/out" "$dest"
log "built $dest in $(( $(date +%s) - start )) s"

# Prune asset dirs of other keys that nobody used for 2 days and nobody uses
# now (a running test host keeps a shared lock on .inuse).
for d in "$cache_root"/*; do
    [ "$d" != "$dest" ] && [ -d "$d" ] || continue
    [[ ${d##*/} =~ ^[0-9a-f]{16}$ ]] || continue
    [ -z "$(find "$d/.last-used" "$d/info" -maxdepth 0 -mtime -2 2>/dev/null)" ] || continue
    if (flock -xn 8 && rm -rf "$d") 8>>"$d/.inuse" 2>/dev/null; then log "pruned old assets $d"; fi
done
echo "$dest"
