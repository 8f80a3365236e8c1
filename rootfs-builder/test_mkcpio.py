#!/usr/bin/env python3
"""Quick checks for mkcpio.py: GNU cpio reads the archive back with the right
types, modes, owners, device numbers, mtimes and contents, and the output is
byte-identical across runs regardless of host file metadata.

Run: python3 rootfs-builder/test_mkcpio.py     (needs GNU cpio: apt-get install cpio)
"""

import io
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import mkcpio  # noqa: E402

MKCPIO = os.path.join(HERE, "mkcpio.py")


def run_mkcpio(spec_path, epoch="0"):
    env = dict(os.environ, SOURCE_DATE_EPOCH=epoch)
    return subprocess.run(
        [sys.executable, MKCPIO, spec_path], env=env, check=True, stdout=subprocess.PIPE
    ).stdout


def cpio_list(archive):
    # -itv with numeric owners; TZ=UTC so mtimes print predictably.
    env = dict(os.environ, TZ="UTC", LC_ALL="C")
    res = subprocess.run(
        ["cpio", "-itv", "--numeric-uid-gid", "--quiet"],
        input=archive, env=env, check=True, stdout=subprocess.PIPE,
    )
    return [line.split() for line in res.stdout.decode().splitlines()]


@unittest.skipUnless(shutil.which("cpio"), "GNU cpio not installed (apt-get install cpio)")
class MkcpioTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="test_mkcpio.")
        self.payload = os.path.join(self.dir, "payload")
        # An odd size exercises the 4-byte data padding.
        self.data = bytes(range(256)) * 40 + b"tail!"
        with open(self.payload, "wb") as f:
            f.write(self.data)
        self.spec = os.path.join(self.dir, "spec")
        with open(self.spec, "w") as f:
            # Deliberately unsorted, with comments and blank lines.
            f.write(
                "# palisade-like skeleton\n"
                f"file /init {self.payload} 0755 0 0\n"
                "dir /tmp 1777 0 0\n"
                "\n"
                "dir /dev 0755 0 0\n"
                "nod /dev/console 0600 0 0 c 5 1\n"
                "dir /run 0755 0 0\n"
                "dir /run/palisade 0755 0 0\n"
                "slink /bin/sh /init 0777 0 0\n"
                "dir /bin 0755 0 0\n"
            )

    def tearDown(self):
        shutil.rmtree(self.dir)

    def test_listing(self):
        archive = run_mkcpio(self.spec)
        self.assertEqual(len(archive) % 512, 0)
        rows = {r[-1] if r[0][0] != "l" else r[-3]: r for r in cpio_list(archive)}
        names = [n for n in rows]
        self.assertEqual(
            sorted(names),
            ["bin", "bin/sh", "dev", "dev/console", "init", "run", "run/palisade", "tmp"],
        )
        self.assertEqual(rows["dev/console"][0], "crw-------")
        self.assertEqual(rows["dev/console"][2:4], ["0", "0"])
        self.assertEqual(rows["dev/console"][4:6], ["5,", "1"])
        self.assertEqual(rows["tmp"][0], "drwxrwxrwt")
        self.assertEqual(rows["init"][0], "-rwxr-xr-x")
        self.assertEqual(rows["init"][4], str(len(self.data)))
        self.assertEqual(rows["bin/sh"][0], "lrwxrwxrwx")
        self.assertEqual(rows["bin/sh"][-1], "/init")
        # Directory nlink = 2 + number of subdirectories.
        self.assertEqual(rows["dev"][1], "2")
        self.assertEqual(rows["run"][1], "3")
        for r in rows.values():
            self.assertEqual(r[2:4], ["0", "0"], r)
            self.assertIn("Jan 1 1970", " ".join(r), r)  # mtime 0

        # Contents survive the round trip.
        res = subprocess.run(
            ["cpio", "-i", "--quiet", "--to-stdout", "init"],
            input=archive, check=True, stdout=subprocess.PIPE,
        )
        self.assertEqual(res.stdout, self.data)

    def test_reproducible(self):
        first = run_mkcpio(self.spec)
        # Host metadata of the source file must not leak into the archive.
        os.utime(self.payload, (1234567890, 1234567890))
        os.chmod(self.payload, 0o600)
        self.assertEqual(run_mkcpio(self.spec), first)
        # SOURCE_DATE_EPOCH is honoured.
        later = run_mkcpio(self.spec, epoch="86400")
        self.assertNotEqual(later, first)
        for r in cpio_list(later):
            self.assertIn("Jan 2 1970", " ".join(r), r)

    def test_errors(self):
        with self.assertRaises(mkcpio.SpecError):  # parent not declared
            mkcpio.parse_spec(["nod /dev/console 0600 0 0 c 5 1"])
        with self.assertRaises(mkcpio.SpecError):  # path escape
            mkcpio.parse_spec(["dir /../x 0755 0 0"])
        with self.assertRaises(mkcpio.SpecError):  # bad mode
            mkcpio.parse_spec(["dir /x 0789 0 0"])
        with self.assertRaises(mkcpio.SpecError):  # duplicate
            mkcpio.parse_spec(["dir /x 0755 0 0", "dir /x/ 0755 0 0"])
        with self.assertRaises(mkcpio.SpecError):  # missing source
            mkcpio.parse_spec([f"file /x {self.dir}/nope 0755 0 0"])
        buf = io.BytesIO()
        mkcpio.write_newc(mkcpio.parse_spec(["dir /x 0755 0 0"]), buf)
        self.assertTrue(buf.getvalue().startswith(b"070701"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
