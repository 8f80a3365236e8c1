#!/usr/bin/env python3
"""Container benchmark: palisade's containers inside one booted VM against
runc on the same machine (or the native file system), same busybox rootfs,
same run.

Runs where /dev/kvm is real KVM (directly, or inside the nested test host
via tests/bench/container-bench). Boots one sandbox (`palisade sandbox
run`), puts a busybox rootfs in its shared directory, and measures, each
workload N times in alternation with its peer:

- create+start+first output: `palisade agent run ... -- echo` against
  `runc run` with a bundle over the same rootfs, from the command's start
  to the first byte on its stdout (and to its exit, removal included);
- stdout throughput: `dd if=/dev/zero bs=1M` in the container, to this
  script through the command's stdout (a pipe), first byte to end of file;
- virtio-fs sequential write and read, with dd inside a palisade container
  on the shared directory, against the same dd run on the test host over
  the same directory;
- small-file metadata: create, stat and unlink of many files (one busybox
  process per phase), in the container against the test host.

Absolute figures under nested emulation are 10-100x off real hardware;
the ratios, measured in the same place at the same time, are the result.
"""

import argparse
import fcntl
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(REPO, "target", "palisade")
PALISADE = os.path.join(REPO, "target", "release", "palisade")
BUSYBOX = "/bin/busybox"
GUEST_SHARE = "/run/palisade/shared"
F_SETPIPE_SZ = 1031
MIB = 1 << 20


def die(msg):
    sys.exit(f"container-bench: {msg}")


def make_rootfs(root):
    for d in ["bin", "usr/bin", "etc", "proc", "sys", "dev", "tmp", "root"]:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy(BUSYBOX, os.path.join(root, "bin", "busybox"))
    # busybox --install links to the path it runs from (/usr/bin/busybox
    # on a merged-/usr Debian): the rootfs gets that path too.
    os.link(os.path.join(root, "bin", "busybox"), os.path.join(root, "usr", "bin", "busybox"))
    subprocess.run([BUSYBOX, "--install", "-s", os.path.join(root, "bin")], check=True)
    with open(os.path.join(root, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    os.chmod(os.path.join(root, "tmp"), 0o1777)


def runc_bundle(path, rootfs, args):
    """runc's own default spec, changed only where palisade's `agent run`
    differs: no terminal, a writable root, no network namespace (a pod's
    containers share the VM's network), a cgroup namespace."""
    os.makedirs(path, exist_ok=True)
    subprocess.run(["runc", "spec", "--bundle", path], check=True)
    with open(os.path.join(path, "config.json")) as f:
        spec = json.load(f)
    spec["process"]["terminal"] = False
    spec["process"]["args"] = args
    spec["process"]["capabilities"].pop("ambient", None)
    spec["root"] = {"path": rootfs, "readonly": False}
    ns = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
    if not any(n["type"] == "cgroup" for n in ns):
        ns.append({"type": "cgroup"})
    spec["linux"]["namespaces"] = ns
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(spec, f)


class Sandbox:
    def __init__(self, args, tmp):
        self.id = f"bench-{os.getpid()}"
        cfg = os.path.join(tmp, "configuration.toml")
        with open(cfg, "w") as f:
            f.write(f"""[hypervisor]
kernel = "{OUT}/vmlinux"
initrd = "{OUT}/initramfs.cpio.gz"
kernel_params = "quiet"
vcpus = {args.vcpus}
memory_mib = {args.memory_mib}

[agent]
dial_timeout_ms = 120000
""")
        # The share is read-only to the guest: the rootfs goes in a volume.
        volume = os.path.join(tmp, "volume-bb")
        os.makedirs(volume, exist_ok=True)
        self.proc = subprocess.Popen([PALISADE, "sandbox", "run", "--id", self.id, "--config", cfg,
                                      "--volume", f"{volume}:bb"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.proc.stdout.readline()
        if not line:
            die(f"sandbox run failed: {self.proc.stderr.read().decode(errors='replace')}")
        self.info = json.loads(line)
        self.share = self.info["shared_dir"]

    def agent(self, *words):
        return [PALISADE, "agent", "--sandbox", self.id, *words]

    def stop(self):
        if self.proc.poll() is not None:
            # It ended by itself: its last words say why (the VMM's exit,
            # the guest console's last lines).
            err = self.proc.stderr.read().decode(errors="replace")
            print(f"container-bench: the sandbox ended during the benchmark:\n{err}", file=sys.stderr)
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def timed_first_output(cmd):
    """(ms to the first stdout byte, ms to exit, stdout bytes)."""
    start = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = None
    total = 0
    while True:
        chunk = os.read(p.stdout.fileno(), 65536)
        if not chunk:
            break
        if first is None:
            first = time.monotonic()
        total += len(chunk)
    err = p.stderr.read()
    rc = p.wait()
    end = time.monotonic()
    if rc != 0 or first is None:
        die(f"{' '.join(cmd)}: exit {rc}: {err.decode(errors='replace')}")
    return (first - start) * 1000, (end - start) * 1000, total


def stream_rate(cmd, want_bytes):
    """MB/s of a command's stdout, first byte to end of file, read in
    1 MiB pipe-sized chunks so the reader is not the bottleneck."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    fd = p.stdout.fileno()
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, MIB)
    except OSError:
        pass
    first = None
    total = 0
    while True:
        chunk = os.read(fd, MIB)
        if not chunk:
            break
        if first is None:
            first = time.monotonic()
        total += len(chunk)
    end = time.monotonic()
    err = p.stderr.read()
    rc = p.wait()
    if rc != 0 or total != want_bytes:
        die(f"{' '.join(cmd)}: exit {rc}, {total} of {want_bytes} bytes: {err.decode(errors='replace')}")
    return total / MIB / (end - first)


def shell_seconds(cmd, env=None):
    """Runs a workload that prints `T0 T1 ...` uptime stamps; returns the
    differences between consecutive stamps, in seconds."""
    p = subprocess.run(cmd, capture_output=True, timeout=1800, env=env)
    if p.returncode != 0:
        die(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr.decode(errors='replace')}")
    stamps = [float(x) for x in p.stdout.split()]
    return [b - a for a, b in zip(stamps, stamps[1:])]


# /proc/uptime has centisecond resolution: every phase below runs for
# seconds. `read` is a shell builtin, so taking a stamp forks nothing.
STAMP = "read t _ </proc/uptime; echo $t"


def fs_write_script(path, mib):
    return f"{STAMP}; dd if=/dev/zero of={path} bs=1M count={mib} conv=fsync 2>/dev/null; {STAMP}; rm -f {path}"


def fs_read_script(path):
    return f"{STAMP}; dd if={path} of=/dev/null bs=1M 2>/dev/null; {STAMP}"


# stat is repeated: from a warm cache it is too quick to time once.
STAT_ROUNDS = 3


def meta_script(dir, n):
    # Shell builtins where possible, so the phases time file system calls,
    # not fork and exec: `: > f` creates (open O_CREAT|O_TRUNC, close),
    # `[ -e f ]` stats; `rm` unlinks every file in one process.
    stats = "; ".join(["for f in $names; do [ -e $f ]; done"] * STAT_ROUNDS)
    return (f"mkdir -p {dir}; cd {dir}; i=0; names=''; "
            f"while [ $i -lt {n} ]; do names=\"$names f$i\"; i=$((i+1)); done; "
            f"{STAMP}; for f in $names; do : > $f; done; {STAMP}; {stats}; {STAMP}; rm $names; {STAMP}; "
            f"cd /; rmdir {dir}")


# The guest's own speed, for context: everything a container does runs one
# virtualization level deeper than the test host's own processes (in the
# nested test host: under nested paging emulated by TCG), file system and
# stdio transport aside. A pipe and tmpfs, in the container and on the
# test host.
def pipe_script(mib):
    return f"{STAMP}; dd if=/dev/zero bs=1M count={mib} 2>/dev/null | cat >/dev/null; {STAMP}"


def tmpfs_script(dir, mib):
    return (f"{STAMP}; dd if=/dev/zero of={dir}/bench bs=1M count={mib} 2>/dev/null; {STAMP}; "
            f"dd if={dir}/bench of=/dev/null bs=1M 2>/dev/null; {STAMP}; rm -f {dir}/bench")


def rates(n, seconds):
    """Operations per second of the three metadata phases; a phase shorter
    than the clock's 10 ms counts as 10 ms (a lower bound on the rate)."""
    rounds = [1, STAT_ROUNDS, 1]
    return [n * k / max(t, 0.01) for k, t in zip(rounds, seconds)]


def median(xs):
    return statistics.median(xs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--stdout-mib", type=int, default=128)
    ap.add_argument("--file-mib", type=int, default=128)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--memory-mib", type=int, default=1024)
    # One vCPU in the nested test host, whose emulated nested SVM loses
    # 2-vCPU guests under load (see tests/e2e/containers-in-vm.sh).
    ap.add_argument("--vcpus", type=int, default=1 if os.environ.get("PALISADE_TESTHOST") == "1" else 2)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    for f in [PALISADE, os.path.join(OUT, "vmlinux"), os.path.join(OUT, "initramfs.cpio.gz"), BUSYBOX]:
        if not os.path.exists(f):
            die(f"{f} is missing: build first (make build guest)")
    if shutil.which("runc") is None:
        die("runc not found (apt-get install runc)")

    tmp = tempfile.mkdtemp(prefix="palisade-ctr-bench.")
    runc_root = os.path.join(tmp, "runc-state")
    sandbox = None
    try:
        boot_start = time.monotonic()
        sandbox = Sandbox(args, tmp)
        boot_ms = (time.monotonic() - boot_start) * 1000
        host_rootfs = os.path.join(sandbox.share, "bb")
        guest_rootfs = f"{GUEST_SHARE}/bb"
        make_rootfs(host_rootfs)
        runc_echo = os.path.join(tmp, "runc-echo")
        runc_bundle(runc_echo, host_rootfs, ["echo", "hello"])
        stdout_bytes = args.stdout_mib * MIB
        dd_stdout = ["dd", "if=/dev/zero", "bs=1M", f"count={args.stdout_mib}"]
        runc_dd = os.path.join(tmp, "runc-dd")
        runc_bundle(runc_dd, host_rootfs, ["sh", "-c", " ".join(dd_stdout) + " 2>/dev/null"])

        def runc(bundle, n):
            return ["runc", "--root", runc_root, "run", "--bundle", bundle, f"r{n}-{os.getpid()}"]

        r = {k: [] for k in ["p_first", "p_exit", "r_first", "r_exit", "p_stdout", "r_stdout",
                             "p_write", "n_write", "p_read", "n_read", "p_meta", "n_meta",
                             "g_pipe", "h_pipe", "g_tmpfs", "h_tmpfs"]}
        # Warm both paths once (page cache for the binaries, the agent's
        # first container) before measuring.
        timed_first_output(sandbox.agent("run", "warm", "--rootfs", guest_rootfs, "--", "echo", "hello"))
        timed_first_output(runc(runc_echo, "warm"))
        for i in range(args.runs):
            f, e, _ = timed_first_output(sandbox.agent("run", f"s{i}", "--rootfs", guest_rootfs, "--", "echo", "hello"))
            r["p_first"].append(f); r["p_exit"].append(e)
            f, e, _ = timed_first_output(runc(runc_echo, f"s{i}"))
            r["r_first"].append(f); r["r_exit"].append(e)

        for i in range(args.runs):
            r["p_stdout"].append(stream_rate(
                sandbox.agent("run", f"o{i}", "--rootfs", guest_rootfs, "--", "sh", "-c",
                              " ".join(dd_stdout) + " 2>/dev/null"), stdout_bytes))
            r["r_stdout"].append(stream_rate(runc(runc_dd, f"o{i}"), stdout_bytes))

        def in_container(name, script):
            return shell_seconds(sandbox.agent("run", name, "--rootfs", guest_rootfs, "--", "sh", "-c", script))

        # The same busybox applets as in the container, not the test
        # host's coreutils.
        native_env = {"PATH": os.path.join(host_rootfs, "bin")}

        def native(script):
            return shell_seconds([BUSYBOX, "sh", "-c", script], env=native_env)

        mib = args.file_mib
        for i in range(args.runs):
            (t,) = in_container(f"w{i}", fs_write_script("/tmp/bench-w", mib))
            r["p_write"].append(mib / t)
            (t,) = native(fs_write_script(os.path.join(host_rootfs, "tmp", "bench-w"), mib))
            r["n_write"].append(mib / t)
            # A new file each run, written by the host: never in the
            # guest's page cache. The host reads it from its own (tmpfs
            # here), and so does the VMM: the comparison is the transport.
            host_file = os.path.join(host_rootfs, "tmp", f"bench-r{i}")
            with open(host_file, "wb") as f:
                block = os.urandom(MIB)
                for _ in range(mib):
                    f.write(block)
            (t,) = in_container(f"r{i}", fs_read_script(f"/tmp/bench-r{i}"))
            r["p_read"].append(mib / t)
            (t,) = native(fs_read_script(host_file))
            r["n_read"].append(mib / t)
            os.unlink(host_file)
            n = args.files
            r["p_meta"].append(rates(n, in_container(f"m{i}", meta_script("/tmp/meta", n))))
            r["n_meta"].append(rates(n, native(meta_script(os.path.join(host_rootfs, "tmp", "meta"), n))))
            (t,) = in_container(f"gp{i}", pipe_script(args.stdout_mib))
            r["g_pipe"].append(args.stdout_mib / t)
            (t,) = native(pipe_script(args.stdout_mib))
            r["h_pipe"].append(args.stdout_mib / t)
            # The container's /dev/shm holds 64 MiB.
            small = min(mib, 48)
            r["g_tmpfs"].append([small / t for t in in_container(f"gt{i}", tmpfs_script("/dev/shm", small))])
            r["h_tmpfs"].append([small / t for t in native(tmpfs_script(tmp, small))])
    finally:
        if sandbox:
            sandbox.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    meta = lambda key, k: median([x[k] for x in r[key]])
    rows = [
        ("create+start+first output (ms)", median(r["p_first"]), median(r["r_first"]), "runc", None),
        ("run to exit, removal incl. (ms)", median(r["p_exit"]), median(r["r_exit"]), "runc", None),
        ("stdout throughput (MB/s)", median(r["p_stdout"]), median(r["r_stdout"]), "runc", 0.5),
        ("seq write, virtio-fs (MB/s)", median(r["p_write"]), median(r["n_write"]), "native", None),
        ("seq read, virtio-fs (MB/s)", median(r["p_read"]), median(r["n_read"]), "native", 0.5),
        ("create small files (/s)", meta("p_meta", 0), meta("n_meta", 0), "native", None),
        ("stat small files (/s)", meta("p_meta", 1), meta("n_meta", 1), "native", None),
        ("unlink small files (/s)", meta("p_meta", 2), meta("n_meta", 2), "native", None),
        ("context: pipe, dd | cat (MB/s)", median(r["g_pipe"]), median(r["h_pipe"]), "host", None),
        ("context: tmpfs write (MB/s)", meta("g_tmpfs", 0), meta("h_tmpfs", 0), "host", None),
        ("context: tmpfs read (MB/s)", meta("g_tmpfs", 1), meta("h_tmpfs", 1), "host", None),
    ]
    where = os.environ.get("PALISADE_KVM_KIND", "hardware KVM")
    if args.json:
        print(json.dumps({
            "where": where, "runs": args.runs, "boot_ms": boot_ms,
            "results": [{"metric": m, "palisade": p, "peer": q, "peer_kind": k,
                         "ratio": p / q, "target_ratio": tgt} for m, p, q, k, tgt in rows],
            "raw": r,
        }))
        return
    print(f"container benchmark on {where}; {args.runs} runs each, medians; "
          f"sandbox booted in {boot_ms:.0f} ms ({args.vcpus} vCPU, {args.memory_mib} MiB)")
    print(f"  stdout {args.stdout_mib} MiB, files {args.file_mib} MiB, {args.files} small files")
    print(f"{'':34} {'palisade':>10} {'peer':>10}  {'ratio':>6}")
    print("  (context rows: the same commands in a palisade container and on the test host itself)")
    for m, p, q, kind, tgt in rows:
        ratio = p / q
        note = ""
        if tgt is not None:
            note = f"  target >= {tgt}: {'met' if ratio >= tgt else 'MISSED'}"
        print(f"{m:34} {p:10.1f} {q:10.1f}  {ratio:6.2f}  (palisade/{kind}){note}")


if __name__ == "__main__":
    main()
