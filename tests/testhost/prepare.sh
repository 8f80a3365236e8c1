#!/bin/bash
# Build (once) the assets of the nested KVM test host and print their directory.
#
#   tests/testhost/prepare.sh [--force]
#
# The assets live outside the repo, in
#   ${PALISADE_CACHE:-/var/cache/palisade}/testhost/<key>/
#     vmlinuz          the test host kernel: Debian's generic amd64 flavour of
#                      the chosen series (see PALISADE_TESTHOST_KERNEL)
#     vmlinux          its uncompressed ELF, booted through the PVH entry
#     initrd.img       busybox-static + /init + the modules the test host needs
#     modules/lib/modules/<kver>/   the kernel's whole module tree (with
#                      modules.dep), bind-mounted on /lib/modules/<kver> inside
#                      the test host so `modprobe` works there
#     qemu/            only for a QEMU other than this machine's own (see
#                      PALISADE_TESTHOST_QEMU): the Debian packages of QEMU and
#                      of every library it loads, unpacked, and
#                      qemu/qemu-system-x86_64, which runs it with its own
#                      dynamic loader and libraries (so a newer Debian's QEMU
#                      runs on this one)
#     info             what was built from what
# <key> hashes the kernel package and version chosen, the QEMU chosen (and
# its version when it is downloaded), busybox's version, this script and
# tests/testhost/init; a directory is only (re)built when the key changes.
# Builds run under a flock and are atomic (build in a temp dir, rename).
# Progress goes to stderr; stdout gets the asset dir only.
#
# Packages of another Debian release (trixie) come from a private apt
# directory, ${PALISADE_CACHE}/testhost/.apt/<release>/ (its own sources
# list and package lists): this machine's apt configuration is never changed.
#
# Environment:
#   PALISADE_CACHE                  cache root (default /var/cache/palisade)
#   PALISADE_TESTHOST_KERNEL        the kernel series: 6.1 (Debian 12's,
#                                   linux-image-6.1.0-N-amd64) or 6.12
#                                   (Debian 13's, linux-image-6.12.N+deb13-amd64);
#                                   default: see DEFAULT_KERNEL below
#   PALISADE_TESTHOST_QEMU          7.2 (this machine's qemu-system-x86, Debian
#                                   12's) or 10 (Debian 13's, downloaded into
#                                   the asset dir); default: DEFAULT_QEMU below
#   PALISADE_TESTHOST_KERNEL_PKG    force a kernel package of the series (e.g.
#                                   linux-image-6.12.115+deb13-amd64-unsigned;
#                                   a 6.1 one needs PALISADE_TESTHOST_KERNEL=6.1)
#   PALISADE_TESTHOST_QUIET=1       no progress messages
#
# tests/testhost/README.md has the measurements behind the defaults.
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
# an error. (fscache is not listed: 6.12 folded it into netfs; on 6.1, 9p
# depends on it, so modules.dep brings it in.)
REQUIRED_MODULES=(
    virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
    netfs 9pnet 9pnet_virtio 9p
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

# The defaults: Debian 13's kernel and QEMU. tests/testhost/README.md has
# the side-by-side measurements (none of the combinations failed there;
# this one was the fastest, and 6.1 + QEMU 7.2 is the one CI saw panic).
DEFAULT_KERNEL=6.12
DEFAULT_QEMU=10
kseries=${PALISADE_TESTHOST_KERNEL:-$DEFAULT_KERNEL}
qseries=${PALISADE_TESTHOST_QEMU:-$DEFAULT_QEMU}
case "$kseries" in
    6.1)  krelease=bookworm ;;   # this machine's apt sources
    6.12) krelease=trixie ;;
    *) die "PALISADE_TESTHOST_KERNEL must be 6.1 or 6.12, not '$kseries'" ;;
esac
case "$qseries" in
    7.2|10) ;;
    *) die "PALISADE_TESTHOST_QEMU must be 7.2 or 10, not '$qseries'" ;;
esac

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

# --- apt, for this machine's release or a private one ------------------------
# `apt_for RELEASE` sets apt_opts: nothing for this machine's own release
# (bookworm), else options that point apt-get/apt-cache at a private
# directory with that release's sources and lists (never this machine's).
apt_opts=()
apt_lists=/var/lib/apt/lists
apt_for() {
    apt_opts=() apt_lists=/var/lib/apt/lists
    [ "$1" != bookworm ] || return 0
    local d=$cache_root/.apt/$1
    mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
    local kr=/usr/share/keyrings/debian-archive-keyring.gpg
    printf '%s\n' \
        "deb [signed-by=$kr] http://deb.debian.org/debian $1 main" \
        "deb [signed-by=$kr] http://deb.debian.org/debian $1-updates main" \
        "deb [signed-by=$kr] http://deb.debian.org/debian-security $1-security main" \
        > "$d/sources.list.new"
    cmp -s "$d/sources.list.new" "$d/sources.list" 2>/dev/null || mv -f "$d/sources.list.new" "$d/sources.list"
    rm -f "$d/sources.list.new"
    apt_opts=(
        -o "Dir::Etc::sourcelist=$d/sources.list" -o Dir::Etc::sourceparts=-
        -o "Dir::State::Lists=$d/lists" -o "Dir::Cache=$d/cache"
        -o Acquire::Languages=none
        -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
        -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false
        -o Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false
    )
    apt_lists=$d/lists
}
apt_update() {
    if [ ${#apt_opts[@]} -eq 0 ]; then apt_quiet update
    else (flock 7; apt_quiet "${apt_opts[@]}" update) 7>"$apt_lists/../.update.lock"
    fi
}
have_lists() { compgen -G "$apt_lists/*_Packages*" >/dev/null; }
# apt-cache takes seconds here (no pkgcache.bin), so choices are memoized
# until apt's package lists change.
apt_stamp() {
    stat -c '%Y %s %n' "$apt_lists"/*_Packages* 2>/dev/null | sha256sum | cut -c1-16
}
pkg_version() {  # package -> its candidate version
    apt-cache "${apt_opts[@]}" show --no-all-versions "$1" 2>/dev/null | sed -n 's/^Version: //p' | head -n 1
}

# The newest generic-flavour amd64 kernel of the series apt knows (-cloud-
# lacks 9p). Ties go to the signed package.
#   6.1:  linux-image-6.1.0-<abi>-amd64[-unsigned]
#   6.12: linux-image-6.12.<n>+deb13[.<m>]-amd64[-unsigned]
list_kernels() {
    apt-cache "${apt_opts[@]}" pkgnames "linux-image-$kseries." 2>/dev/null \
        | grep -E "^linux-image-${kseries//./\\.}\.[0-9]+(\+deb[0-9.]+)?-([0-9]+-)?amd64(-unsigned)?\$" \
        | awk '{ r = $0; sub(/^linux-image-/, "", r); uns = sub(/-unsigned$/, "", r) ? 1 : 0; print r, uns, $0 }' \
        | sort -k1,1V -k2,2nr | tail -n 1 | cut -d' ' -f3
}

pick_kernel() {
    local pkg
    if [ -n "${PALISADE_TESTHOST_KERNEL_PKG:-}" ]; then
        pkg=$PALISADE_TESTHOST_KERNEL_PKG
    else
        pkg=$(list_kernels)
        if [ -z "$pkg" ]; then
            log "apt ($krelease) knows no linux-image-$kseries.*-amd64: running apt-get update"
            apt_update || true
            pkg=$(list_kernels)
        fi
        [ -n "$pkg" ] || die "apt ($krelease) offers no linux-image-$kseries.*-amd64 package"
    fi
    local ver
    ver=$(pkg_version "$pkg")
    [ -n "$ver" ] || die "apt ($krelease) has no candidate version of $pkg"
    printf '%s %s\n' "$pkg" "$ver"
}

# --- what we need on this machine --------------------------------------------
# qemu-system-x86 also when QEMU 10 is chosen: its firmware (qboot) and
# `run`'s fallbacks; the downloaded QEMU brings its own copy.
ensure_pkgs busybox-static cpio kmod qemu-system-x86 xz-utils zstd
busybox_bin=$(dpkg -L busybox-static | grep -E '/bin/busybox$' | head -n 1)
[ -x "$busybox_bin" ] || die "busybox-static installed but no busybox binary found"
busybox_ver=$(dpkg-query -W -f='${Version}' busybox-static)

mkdir -p "$cache_root"
apt_for "$krelease"
if [ "$krelease" != bookworm ] && ! have_lists; then
    log "fetching the $krelease package lists into $apt_lists"
    apt_update || die "apt-get update of the private $krelease lists failed"
fi
memo="$cache_root/.kernel-choice-$kseries"
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

# QEMU 10: Debian 13's qemu-system-x86 (its version keys the assets).
qver_pkg=system
if [ "$qseries" = 10 ]; then
    apt_for trixie
    have_lists || { log "fetching the trixie package lists into $apt_lists"; apt_update || die "apt-get update of the private trixie lists failed"; }
    qmemo=$cache_root/.qemu-choice-$qseries
    qver_pkg=
    if [ -f "$qmemo" ]; then
        read -r m_stamp m_ver < "$qmemo" || true
        [ "${m_stamp:-}" != "$(apt_stamp)" ] || qver_pkg=${m_ver:-}
    fi
    if [ -z "$qver_pkg" ]; then
        qver_pkg=$(pkg_version qemu-system-x86)
        case "$qver_pkg" in
            1:10.*) ;;
            *) die "trixie's qemu-system-x86 is '$qver_pkg', not QEMU 10" ;;
        esac
        echo "$(apt_stamp) $qver_pkg" > "$qmemo.$$" && mv -f "$qmemo.$$" "$qmemo"
    fi
fi

key=$( {
    printf 'kernel=%s=%s\nqemu=%s=%s\nbusybox=%s\n' "$kpkg" "$kver_pkg" "$qseries" "$qver_pkg" "$busybox_ver"
    cat "$here/prepare.sh" "$here/init"
} | sha256sum | cut -c1-16)
dest="$cache_root/$key"

complete() {
    [ -f "$1/vmlinuz" ] && [ -f "$1/initrd.img" ] && [ -f "$1/info" ] && [ -f "$1/.inuse" ] &&
        { [ "$qseries" = 7.2 ] || [ -x "$1/qemu/qemu-system-x86_64" ]; }
}

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
download() {  # package=version... (apt_for chose the release)
    (cd "$dl" && apt-get "${apt_opts[@]}" -qq download "$@" 2>&1 \
        | grep -v 'Download is performed unsandboxed' >&2; exit "${PIPESTATUS[0]}")
}
# A package list older than the archive names versions it no longer has:
# update the lists, and if the chosen version is gone, choose again (once).
download_or_repick() {
    download "$@" && return 0
    log "download failed: running apt-get update and retrying"
    apt_update || true
    download "$@" && return 0
    if [ -z "${PALISADE_TESTHOST_REPICKED:-}" ]; then
        log "choosing the packages again from the updated lists"
        rm -rf "$work"
        exec 9>&-
        if [ "$force" = 1 ]; then set -- --force; else set --; fi
        PALISADE_TESTHOST_REPICKED=1 exec "$here/prepare.sh" "$@"
    fi
    die "apt-get download $* failed"
}
apt_for "$krelease"
download_or_repick "$kpkg=$kver_pkg"
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
        # The kernel appends the 4-byte uncompressed size, which zstd
        # (unlike xz --single-stream) takes for a second, broken frame.
        28b52ffd*)    head -c $((pl - 4)) "$2.payload" | zstd -qdc > "$2" ;;
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

# --- QEMU 10 (Debian 13's), with its own libraries ------------------------------
# Debian 13's qemu-system-x86 needs a newer glibc (and library ABIs) than
# Debian 12 has, so it runs with all of its own: the library packages of its
# dependency closure are unpacked next to it and qemu/qemu-system-x86_64
# starts it with their dynamic loader (--library-path: nothing comes from
# this machine's /lib, which the check below makes sure of) and its own
# data (-L: qboot, pvh.bin, linuxboot_dma.bin) and modules directories.
if [ "$qseries" = 10 ]; then
    apt_for trixie
    qroot=$work/out/qemu/root
    mkdir -p "$dl" "$qroot"
    mapfile -t qlibs < <(apt-cache "${apt_opts[@]}" depends --recurse --no-recommends --no-suggests \
            --no-conflicts --no-breaks --no-replaces --no-enhances qemu-system-x86 2>/dev/null \
        | grep -E '^(lib[a-z0-9.+-]+|zlib1g)$' | sort -u)
    [ ${#qlibs[@]} -gt 0 ] || die "apt-cache lists no library dependencies of trixie's qemu-system-x86"
    log "downloading QEMU $qver_pkg and ${#qlibs[@]} library packages (trixie)"
    download_or_repick "qemu-system-x86=$qver_pkg" "qemu-system-data=$qver_pkg" "${qlibs[@]}"
    for deb in "$dl"/*.deb; do dpkg-deb -x "$deb" "$qroot" || die "cannot unpack $deb"; done
    ls "$dl" | sed 's/\.deb$//' > "$work/out/qemu/packages"
    rm -rf "$dl" "$qroot"/usr/share/{doc,man,locale,lintian,bug} "$qroot"/etc
    # An empty modules directory of its own: by default it would load this
    # machine's QEMU 7.2 modules, which refuse (or crash) in another build.
    mkdir -p "$qroot/usr/lib/x86_64-linux-gnu/qemu"
    ld_so=$qroot/usr/lib64/ld-linux-x86-64.so.2
    libdirs=$qroot/usr/lib/x86_64-linux-gnu:$qroot/lib/x86_64-linux-gnu
    [ -x "$qroot/usr/bin/qemu-system-x86_64" ] || die "trixie's qemu-system-x86 has no usr/bin/qemu-system-x86_64"
    [ -x "$ld_so" ] || die "no dynamic loader in trixie's libc6 ($ld_so)"
    # Every library must resolve inside the bundle.
    if ! list=$("$ld_so" --library-path "$libdirs" --list "$qroot/usr/bin/qemu-system-x86_64" 2>&1); then
        die "QEMU 10's libraries do not resolve: $list"
    fi
    outside=$(grep -v -e 'linux-vdso' -e "=> $qroot/" -e "^[[:space:]]*$qroot/" <<<"$list" || true)
    [ -z "$outside" ] || die "QEMU 10 needs libraries the trixie packages did not bring: $outside"
    cat > "$work/out/qemu/qemu-system-x86_64" <<'WRAP'
#!/bin/sh
# Debian 13's QEMU with its own loader, libraries, data and modules
# (written by tests/testhost/prepare.sh).
r=$(dirname "$(readlink -f "$0")")/root
QEMU_MODULE_DIR=$r/usr/lib/x86_64-linux-gnu/qemu
export QEMU_MODULE_DIR
exec "$r/usr/lib64/ld-linux-x86-64.so.2" \
    --library-path "$r/usr/lib/x86_64-linux-gnu:$r/lib/x86_64-linux-gnu" \
    "$r/usr/bin/qemu-system-x86_64" -L "$r/usr/share/qemu" "$@"
WRAP
    chmod 0755 "$work/out/qemu/qemu-system-x86_64"
    qv=$("$work/out/qemu/qemu-system-x86_64" --version 2>&1 | head -n 1)
    case "$qv" in
        "QEMU emulator version 10."*) log "$qv (from trixie, with its own libraries)" ;;
        *) die "the downloaded QEMU does not run here: $qv" ;;
    esac
    [ -f "$qroot/usr/share/qemu/qboot.rom" ] || die "trixie's qemu-system-data has no qboot.rom"
fi

{
    echo "key=$key"
    echo "kernel_package=$kpkg"
    echo "kernel_version=$kver_pkg"
    echo "kernel_release=$krel"
    echo "qemu=$qseries"
    if [ "$qseries" = 10 ]; then echo "qemu_version=$qver_pkg (trixie, in qemu/)"
    else echo "qemu_version=$(dpkg-query -W -f='${Version}' qemu-system-x86) (this machine's)"
    fi
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
