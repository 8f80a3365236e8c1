#!/usr/bin/env python3
"""Write a reproducible "newc" (SVR4, no CRC) cpio archive from a spec.

The spec uses the line format of the kernel's usr/gen_init_cpio, restricted to
what palisade's initramfs needs:

    dir  <name> <mode> <uid> <gid>
    file <name> <source> <mode> <uid> <gid>
    nod  <name> <mode> <uid> <gid> <c|b> <major> <minor>
    slink <name> <target> <mode> <uid> <gid>

Modes are octal. Blank lines and lines starting with '#' are ignored.

Device nodes are written as archive entries only, so no real device node (and
no root) is needed on the host. Output is deterministic: entries are sorted by
name, inode numbers are assigned in that order, every mtime is
SOURCE_DATE_EPOCH (default 0), and only the content of source files is read
from the host (never their owner, mode or timestamps).

Usage: mkcpio.py [-o OUTPUT] SPEC       (SPEC '-' = stdin; default output stdout)
"""

import argparse
import os
import stat
import sys

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"
MAX32 = 0xFFFFFFFF


class SpecError(Exception):
    pass


def _octal(text, what, lineno):
    try:
        value = int(text, 8)
    except ValueError:
        raise SpecError(f"line {lineno}: {what} {text!r} is not an octal number") from None
    if value & ~0o7777:
        raise SpecError(f"line {lineno}: {what} {text!r} has bits outside 07777")
    return value


def _uint(text, what, lineno):
    try:
        value = int(text, 10)
    except ValueError:
        raise SpecError(f"line {lineno}: {what} {text!r} is not a number") from None
    if not 0 <= value <= MAX32:
        raise SpecError(f"line {lineno}: {what} {text!r} out of range")
    return value


def _name(text, lineno):
    name = text.strip("/")
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") for p in parts):
        raise SpecError(f"line {lineno}: bad entry name {text!r}")
    return name


def parse_spec(lines, base_dir="."):
    """Return a list of entry dicts sorted by name."""
    entries = {}
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        f = line.split()
        kind = f[0]
        want = {"dir": 5, "file": 6, "nod": 8, "slink": 6}.get(kind)
        if want is None:
            raise SpecError(f"line {lineno}: unknown entry type {kind!r}")
        if len(f) != want:
            raise SpecError(f"line {lineno}: '{kind}' takes {want - 1} fields, got {len(f) - 1}")
        name = _name(f[1], lineno)
        e = {"name": name, "rdev": (0, 0), "data": b""}
        if kind == "dir":
            e["mode"] = stat.S_IFDIR | _octal(f[2], "mode", lineno)
            e["uid"], e["gid"] = _uint(f[3], "uid", lineno), _uint(f[4], "gid", lineno)
        elif kind == "file":
            src = f[2] if os.path.isabs(f[2]) else os.path.join(base_dir, f[2])
            try:
                with open(src, "rb") as fh:
                    e["data"] = fh.read()
            except OSError as err:
                raise SpecError(f"line {lineno}: cannot read {src}: {err.strerror}") from None
            if len(e["data"]) > MAX32:
                raise SpecError(f"line {lineno}: {src} is too large for newc (>4 GiB)")
            e["mode"] = stat.S_IFREG | _octal(f[3], "mode", lineno)
            e["uid"], e["gid"] = _uint(f[4], "uid", lineno), _uint(f[5], "gid", lineno)
        elif kind == "nod":
            if f[5] not in ("c", "b"):
                raise SpecError(f"line {lineno}: device type must be 'c' or 'b', got {f[5]!r}")
            fmt = stat.S_IFCHR if f[5] == "c" else stat.S_IFBLK
            e["mode"] = fmt | _octal(f[2], "mode", lineno)
            e["uid"], e["gid"] = _uint(f[3], "uid", lineno), _uint(f[4], "gid", lineno)
            e["rdev"] = (_uint(f[6], "major", lineno), _uint(f[7], "minor", lineno))
        else:  # slink
            e["data"] = f[2].encode()
            e["mode"] = stat.S_IFLNK | _octal(f[3], "mode", lineno)
            e["uid"], e["gid"] = _uint(f[4], "uid", lineno), _uint(f[5], "gid", lineno)
        if name in entries:
            raise SpecError(f"line {lineno}: duplicate entry {name!r}")
        entries[name] = e

    # Every parent must be declared as a directory, so the archive unpacks
    # without relying on the unpacker creating directories implicitly.
    for name in entries:
        parent = name.rpartition("/")[0]
        if parent and (parent not in entries or not stat.S_ISDIR(entries[parent]["mode"])):
            raise SpecError(f"entry {name!r}: parent directory {parent!r} is not declared as 'dir'")
    # A byte-wise sort puts every directory before its contents.
    return [entries[n] for n in sorted(entries, key=lambda n: n.encode())]


def _pad4(n):
    return (4 - n % 4) % 4


def _header(ino, mode, uid, gid, nlink, mtime, size, rdev, namesize):
    fields = (ino, mode, uid, gid, nlink, mtime, size, 0, 0, rdev[0], rdev[1], namesize, 0)
    return NEWC_MAGIC + b"".join(b"%08X" % v for v in fields)


def write_newc(entries, out, mtime=0):
    """Write entries (from parse_spec) as a newc archive to the binary stream out."""
    if not 0 <= mtime <= MAX32:
        raise SpecError(f"mtime {mtime} does not fit newc's 32-bit field")
    subdirs = {}
    for e in entries:
        parent = e["name"].rpartition("/")[0]
        if stat.S_ISDIR(e["mode"]):
            subdirs[parent] = subdirs.get(parent, 0) + 1
    written = 0

    def emit(ino, mode, uid, gid, nlink, size, rdev, name, data):
        nonlocal written
        bname = name.encode() + b"\0"
        chunk = _header(ino, mode, uid, gid, nlink, mtime, size, rdev, len(bname))
        chunk += bname + b"\0" * _pad4(len(chunk) + len(bname))
        chunk += data + b"\0" * _pad4(len(data))
        out.write(chunk)
        written += len(chunk)

    for ino, e in enumerate(entries, 1):
        nlink = 2 + subdirs.get(e["name"], 0) if stat.S_ISDIR(e["mode"]) else 1
        emit(ino, e["mode"], e["uid"], e["gid"], nlink, len(e["data"]), e["rdev"], e["name"], e["data"])
    emit(0, 0, 0, 0, 1, 0, (0, 0), TRAILER, b"")
    # Pad to a 512-byte block like GNU cpio and gen_init_cpio do.
    out.write(b"\0" * ((512 - written % 512) % 512))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", help="spec file, or '-' for stdin")
    ap.add_argument("-o", "--output", help="output file (default: stdout)")
    args = ap.parse_args(argv)

    epoch = os.environ.get("SOURCE_DATE_EPOCH", "0")
    try:
        if not epoch.isdigit():
            raise SpecError(f"SOURCE_DATE_EPOCH={epoch!r} is not a non-negative integer")
        if args.spec == "-":
            entries = parse_spec(sys.stdin.read().splitlines())
        else:
            with open(args.spec, encoding="utf-8") as fh:
                entries = parse_spec(fh.read().splitlines(), os.path.dirname(os.path.abspath(args.spec)))
        if args.output:
            tmp = args.output + ".tmp"
            with open(tmp, "wb") as out:
                write_newc(entries, out, int(epoch))
            os.replace(tmp, args.output)
        else:
            write_newc(entries, sys.stdout.buffer, int(epoch))
            sys.stdout.buffer.flush()
    except (SpecError, OSError) as err:
        print(f"mkcpio.py: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
