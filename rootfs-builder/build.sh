#!/usr/bin/env bash
# Build palisade's guest initramfs: a reproducible gzip-compressed newc cpio
# holding the agent as /init plus the directory skeleton it needs.
#
# Usage: rootfs-builder/build.sh [AGENT_BINARY]
#   AGENT_BINARY defaults to <repo>/target/x86_64-unknown-linux-gnu/agent/palisade-agent,
#   which cargo (re)builds statically linked, with the size-optimised `agent` profile. The binary must be static.
#   Progress goes to stderr; stdout is only the path of the initramfs.
#
# Output: <repo>/target/palisade/initramfs.cpio.gz, with its input key in
#   initramfs.cpio.gz.key; rebuilt only when the agent or these scripts change.
#   Same agent binary => byte-identical output.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
out_dir=$repo/target/palisade
out=$out_dir/initramfs.cpio.gz
target=x86_64-unknown-linux-gnu
default_agent=$repo/target/$target/agent/palisade-agent

log() { printf '[rootfs-builder] %s\n' "$*" >&2; }
die() { printf '[rootfs-builder] ERROR: %s\n' "$*" >&2; exit 1; }

ensure_tool() { # ensure_tool COMMAND DEBIAN_PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    log "installing $2 (for $1)"
    [ "$(id -u)" -eq 0 ] || die "$1 not found and not root: run 'apt-get install $2' as root"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "$2" >&2 ||
        { apt-get update >&2 && apt-get install -y --no-install-recommends "$2" >&2; } ||
        die "apt-get install $2 failed"
}
ensure_tool python3 python3
ensure_tool gzip gzip
ensure_tool readelf binutils
ensure_tool sha256sum coreutils

# ---------------------------------------------------------------- agent
if [ $# -gt 1 ]; then
    die "usage: $0 [AGENT_BINARY]"
elif [ $# -eq 1 ]; then
    agent=$1
    [ -f "$agent" ] || die "agent binary $agent does not exist"
else
    agent=$default_agent
    # Always ask cargo: it rebuilds only what changed, so the initramfs can
    # never hold a stale agent.
    command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust (rustup) to build palisade-agent"
    # An explicit --target keeps +crt-static off build scripts and proc-macros.
    (cd "$repo" && RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
        cargo build --locked --profile agent -p palisade-agent --target "$target" --target-dir "$repo/target" >&2) ||
        die "cargo build of palisade-agent failed"
    [ -f "$agent" ] || die "cargo build succeeded but $agent is not there"
fi
agent=$(cd "$(dirname "$agent")" && pwd)/$(basename "$agent")

# PID 1 runs before anything could provide a dynamic loader: it must be a
# static x86-64 ELF executable (no PT_INTERP program header).
hdr=$(readelf -hW "$agent" 2>/dev/null) || die "$agent is not an ELF file"
grep -qE 'Machine:\s+Advanced Micro Devices X86-64' <<<"$hdr" || die "$agent is not an x86-64 ELF binary"
grep -qE 'Type:\s+(EXEC|DYN)' <<<"$hdr" || die "$agent is not an ELF executable"
phdrs=$(readelf -lW "$agent")
if grep -qE '^\s*INTERP\s' <<<"$phdrs"; then
    interp=$(sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p' <<<"$phdrs")
    die "$agent is dynamically linked (INTERP program header: ${interp:-?}); build it with RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target $target"
fi
needed=$(readelf -dW "$agent" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')
[ -z "$needed" ] || die "$agent needs shared libraries ($needed): it must be linked statically"

# ---------------------------------------------------------------- cache
key=$(
    {
        printf 'agent '; sha256sum <"$agent"
        printf 'build.sh '; sha256sum <"${BASH_SOURCE[0]}"
        printf 'mkcpio.py '; sha256sum <"$here/mkcpio.py"
    } | sha256sum | cut -d' ' -f1
)
mkdir -p "$out_dir"
exec 9>"$out_dir/.initramfs.lock"
flock 9
if [ -f "$out" ] && [ "$(cat "$out.key" 2>/dev/null)" = "$key" ]; then
    log "up to date: $out ($(stat -c %s "$out") bytes, key ${key:0:16})"
    printf '%s\n' "$out"
    exit 0
fi

# ---------------------------------------------------------------- build
# Everything is root-owned; timestamps come from SOURCE_DATE_EPOCH (0).
tmp=$(mktemp "$out_dir/.initramfs.XXXXXX")
# The spec is whitespace-separated: reach the agent through a symlink whose
# path has no spaces.
tmpd=$(mktemp -d /tmp/palisade-rootfs.XXXXXX)
trap 'rm -rf "$tmp" "$tmpd"' EXIT
ln -s "$agent" "$tmpd/agent"
spec="
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
dir /proc 0555 0 0
dir /sys 0555 0 0
dir /run 0755 0 0
dir /run/palisade 0755 0 0
dir /tmp 1777 0 0
dir /etc 0755 0 0
dir /root 0700 0 0
file /init $tmpd/agent 0755 0 0
"
log "packing $agent as /init"
printf '%s' "$spec" | SOURCE_DATE_EPOCH=0 python3 "$here/mkcpio.py" - | gzip -n -9 >"$tmp" ||
    die "creating the initramfs failed"
chmod 0644 "$tmp"
mv -f "$tmp" "$out"
printf '%s\n' "$key" >"$out.key.tmp"
mv -f "$out.key.tmp" "$out.key"
log "built $out ($(stat -c %s "$out") bytes, key ${key:0:16})"
printf '%s\n' "$out"
