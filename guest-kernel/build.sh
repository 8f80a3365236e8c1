#!/usr/bin/env bash
# Build palisade's guest kernel: an uncompressed, PVH-bootable ELF vmlinux made
# from Debian's linux-source-6.12 with `make tinyconfig` + fragments/*.conf.
#
# Usage: guest-kernel/build.sh
#   Progress goes to stderr; stdout is only the path of the published vmlinux.
#
# Outputs:
#   <repo>/target/palisade/vmlinux           stripped ELF vmlinux (PVH note kept)
#   <repo>/target/palisade/vmlinux.release   kernel release, e.g. 6.12.117-palisade
# Cache (outside the clone, shared by every checkout on the machine):
#   ${PALISADE_CACHE:-/var/cache/palisade}/kernel/<key>/{vmlinux,vmlinux.full,config,release}
#   key = sha256(source package version + fragments + this script)[:16]
set -euo pipefail

SRC_PKG=linux-source-6.12
SRC_TARBALL=/usr/src/linux-source-6.12.tar.xz
# Packages needed to build (installed with apt-get when missing; CI starts from
# a fresh Debian 12).
BUILD_PKGS=(build-essential flex bison bc libelf-dev libssl-dev xz-utils binutils)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
fragments_dir=$here/fragments
out_dir=$repo/target/palisade
cache_root=${PALISADE_CACHE:-/var/cache/palisade}/kernel

log() { printf '[guest-kernel] %s\n' "$*" >&2; }
die() { printf '[guest-kernel] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- packages
pkg_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

ensure_packages() {
    local missing=() p
    for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing missing packages: ${missing[*]}"
    [ "$(id -u)" -eq 0 ] || die "packages missing (${missing[*]}) and not root: run 'apt-get install ${missing[*]}' as root"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
        { apt-get update >&2 && apt-get install -y --no-install-recommends "${missing[@]}" >&2; } ||
        die "apt-get install ${missing[*]} failed"
}

ensure_packages "$SRC_PKG"
[ -f "$SRC_TARBALL" ] || die "$SRC_TARBALL missing although $SRC_PKG is installed"

shopt -s nullglob
fragments=("$fragments_dir"/*.conf)
shopt -u nullglob
[ ${#fragments[@]} -gt 0 ] || die "no Kconfig fragments in $fragments_dir"

# ---------------------------------------------------------------- cache key
src_version=$(dpkg-query -W -f='${Version}' "$SRC_PKG")
key=$(
    {
        printf 'source %s %s\n' "$SRC_PKG" "$src_version"
        for f in "${fragments[@]}"; do
            printf 'fragment %s\n' "$(basename "$f")"
            cat "$f"
        done
        printf 'script\n'
        cat "${BASH_SOURCE[0]}"
    } | sha256sum | cut -c1-16
)
key_dir=$cache_root/$key
log "source $SRC_PKG $src_version, ${#fragments[@]} fragments, cache key $key"

publish() {
    mkdir -p "$out_dir"
    local tmp
    # Hard-link when the cache is on the same filesystem, copy otherwise; then
    # rename so readers never see a half-written file. (mv refuses to rename
    # onto another link of the same inode: nothing to do in that case.)
    if ! [ "$key_dir/vmlinux" -ef "$out_dir/vmlinux" ]; then
        tmp=$(mktemp "$out_dir/.vmlinux.XXXXXX")
        { ln -f "$key_dir/vmlinux" "$tmp" 2>/dev/null || cp -f "$key_dir/vmlinux" "$tmp"; } &&
            mv -f "$tmp" "$out_dir/vmlinux" || { rm -f "$tmp"; die "cannot publish $out_dir/vmlinux"; }
    fi
    tmp=$(mktemp "$out_dir/.vmlinux.release.XXXXXX")
    cp -f "$key_dir/release" "$tmp" && chmod 0644 "$tmp" &&
        mv -f "$tmp" "$out_dir/vmlinux.release" || { rm -f "$tmp"; die "cannot publish $out_dir/vmlinux.release"; }
    log "published $(cat "$key_dir/release") ($(stat -c %s "$out_dir/vmlinux") bytes)"
    printf '%s\n' "$out_dir/vmlinux"
}

cache_complete() {
    [ -s "$key_dir/vmlinux" ] && [ -s "$key_dir/release" ] && [ -s "$key_dir/config" ]
}

if cache_complete; then
    log "cached: $key_dir"
    publish
    exit 0
fi

# ---------------------------------------------------------------- build
mkdir -p "$cache_root" || die "cannot create cache directory $cache_root (set PALISADE_CACHE)"
exec 9>"$cache_root/$key.lock"
if ! flock -n 9; then
    log "another build of $key is running; waiting for its lock"
    flock 9
fi
if cache_complete; then # built by whoever held the lock
    log "cached (built concurrently): $key_dir"
    publish
    exit 0
fi

ensure_packages "${BUILD_PKGS[@]}"

work=$(mktemp -d "$cache_root/build.$key.XXXXXX")
stage=
cleanup() { rm -rf "$work" ${stage:+"$stage"}; }
trap cleanup EXIT
trap 'exit 130' INT TERM

start=$(date +%s)
log "extracting $SRC_TARBALL into $work"
tar -xf "$SRC_TARBALL" -C "$work"
src=$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -n1)
[ -n "$src" ] && [ -f "$src/Makefile" ] || die "unexpected layout of $SRC_TARBALL"

export ARCH=x86
# Predictable, host-independent build metadata (uname -v).
export KBUILD_BUILD_USER=palisade KBUILD_BUILD_HOST=palisade
export KBUILD_BUILD_TIMESTAMP="Thu Jan  1 00:00:00 UTC 1970"

cd "$src"
log "make tinyconfig + ${#fragments[@]} fragments + olddefconfig"
make -s tinyconfig >&2
scripts/kconfig/merge_config.sh -m .config "${fragments[@]}" >"$work/merge.log" 2>&1 ||
    { cat "$work/merge.log" >&2; die "merge_config.sh failed"; }
make -s olddefconfig >&2

# tinyconfig silently drops options whose dependencies are missing: every
# assignment from the fragments must have survived into the final .config.
log "verifying fragments against the final .config"
missing=()
while IFS= read -r line; do
    case "$line" in
    CONFIG_*=*)
        grep -qxF -- "$line" .config || missing+=("$line (final: $(grep -E "^(# )?${line%%=*}[= ]" .config || echo absent))")
        ;;
    "# CONFIG_"*" is not set")
        sym=${line#\# }
        sym=${sym%% *}
        if grep -q "^$sym=" .config; then missing+=("$line (final: $(grep "^$sym=" .config))"); fi
        ;;
    esac
done < <(cat "${fragments[@]}")
if [ ${#missing[@]} -gt 0 ]; then
    log "these fragment options did not stick (missing dependency, 'select' from another option, or a typo):"
    printf '    %s\n' "${missing[@]}" >&2
    die "${#missing[@]} fragment option(s) not in the final .config; fix guest-kernel/fragments"
fi
log "all fragment options present ($(grep -c '=y$' .config) options =y)"

log "make -j$(nproc) vmlinux (a cold build takes several minutes)"
make -s -j"$(nproc)" vmlinux >&2 || die "kernel build failed"
release=$(make -s kernelrelease)
[ -n "$release" ] || die "make kernelrelease printed nothing"

cp vmlinux "$work/vmlinux.full"
strip --strip-all -o "$work/vmlinux" vmlinux
# The VMM boots through XEN_ELFNOTE_PHYS32_ENTRY (type 18 = 0x12): it must
# survive stripping.
if ! readelf -n "$work/vmlinux" | grep -E '^\s*Xen\s' | grep -qiE '0x00000012|PHYS32_ENTRY'; then
    readelf -n "$work/vmlinux" >&2 || true
    die "stripped vmlinux lacks the Xen PHYS32_ENTRY ELF note (CONFIG_PVH?)"
fi

stage=$(mktemp -d "$cache_root/.stage.$key.XXXXXX")
chmod 0755 "$stage"
mv "$work/vmlinux" "$work/vmlinux.full" "$stage/"
cp .config "$stage/config"
printf '%s\n' "$release" >"$stage/release"
cd /
rm -rf "$key_dir" # a partial leftover from an interrupted run, if any
mv -T "$stage" "$key_dir"
log "built $release in $(($(date +%s) - start))s -> $key_dir"

publish
