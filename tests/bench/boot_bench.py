#!/usr/bin/env python3
"""Boot benchmark: palisade's VMM against QEMU's microvm machine.

Runs where /dev/kvm is real KVM (directly, or inside the nested test host
via tests/bench/boot-bench). Boots the same kernel and initramfs N times
with each VMM, in alternation so both see the same machine load, to the
same point (the agent is ready), and prints the median of each phase and
the host memory each VMM uses, with ratios. Absolute times under nested
emulation are 10-100x real hardware; the ratios are the result.
"""

import argparse
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(REPO, "target", "palisade")
PALISADE = os.path.join(REPO, "target", "release", "palisade")
READY_LINE = b"palisade-agent: ready"
# What palisade's VMM adds before the configured kernel_params (see
# vmm/src/vmm.rs BASE_CMDLINE), so both VMMs boot the same command line.
BASE_CMDLINE = "console=ttyS0 8250.nr_uarts=1 reboot=k panic=-1 pci=off nomodule no_timer_check rdinit=/init"


def smaps_split(pid, guest_mib):
    """(total RSS KiB, RSS of the guest RAM mapping KiB) for a VMM process:
    guest RAM is the one anonymous mapping of exactly guest_mib MiB."""
    total = guest = 0
    size = None
    is_guest = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                size = hi - lo
                is_guest = size == guest_mib << 20
            elif line.startswith("Rss:"):
                kib = int(line.split()[1])
                total += kib
                if is_guest:
                    guest += kib
    return total, guest


def palisade_boot(config, timeout_s):
    proc = subprocess.run([PALISADE, "check", "--json", "--config", config],
                          capture_output=True, timeout=timeout_s)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        sys.exit(f"palisade check printed no JSON (exit {proc.returncode}):\n"
                 f"{proc.stdout.decode(errors='replace')}\n{proc.stderr.decode(errors='replace')}")
    if proc.returncode != 0 or not report.get("ok"):
        sys.exit(f"palisade check failed: {report.get('error')}\n{report.get('console_tail') or ''}")
    return report


def qemu_boot(args, kernel_params, timeout_s):
    """Boots QEMU microvm to the agent's ready line; returns ms and RSS."""
    cmd = [
        "qemu-system-x86_64", "-M", "microvm,x-option-roms=off,rtc=off", "-enable-kvm", "-cpu", "host",
        "-m", str(args.memory_mib), "-smp", str(args.vcpus),
        "-kernel", os.path.join(OUT, "vmlinux"), "-initrd", os.path.join(OUT, "initramfs.cpio.gz"),
        "-append", f"{BASE_CMDLINE} {kernel_params}".strip(),
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio",
    ]
    if os.path.exists("/dev/vhost-vsock"):
        cmd += ["-device", "vhost-vsock-device,guest-cid=3"]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    buf = b""
    ready_ms = None
    try:
        while ready_ms is None:
            left = timeout_s - (time.monotonic() - start)
            if left <= 0:
                raise RuntimeError(f"QEMU: no ready line within {timeout_s}s; console:\n{buf[-2000:].decode(errors='replace')}")
            r, _, _ = select.select([proc.stdout], [], [], left)
            if not r:
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"QEMU exited ({proc.wait()}): {proc.stderr.read().decode(errors='replace')}"
                                   f"\nconsole:\n{buf[-2000:].decode(errors='replace')}")
            buf += chunk
            if READY_LINE in buf:
                ready_ms = (time.monotonic() - start) * 1000
        rss, guest = smaps_split(proc.pid, args.memory_mib)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {"agent_ready_ms": ready_ms, "vmm_rss_kib": rss, "guest_memory_touched_kib": guest,
            "vmm_rss_excluding_guest_kib": rss - guest}


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, unit):
    if v is None:
        return "-"
    return f"{v / 1024:.1f} MiB" if unit == "kib" else f"{v:.0f} ms"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--memory-mib", type=int, default=256)
    p.add_argument("--vcpus", type=int, default=1)
    p.add_argument("--kernel-params", default="quiet")
    p.add_argument("--timeout", type=float, default=120.0, help="per boot, seconds")
    args = p.parse_args()
    for f in (PALISADE, os.path.join(OUT, "vmlinux"), os.path.join(OUT, "initramfs.cpio.gz")):
        if not os.path.exists(f):
            sys.exit(f"boot-bench: {f} is missing: run `make build guest` first")

    with tempfile.TemporaryDirectory(prefix="palisade-bench-") as tmp:
        config = os.path.join(tmp, "configuration.toml")
        with open(config, "w") as f:
            f.write(f"""[hypervisor]
kernel = "{OUT}/vmlinux"
initrd = "{OUT}/initramfs.cpio.gz"
kernel_params = "{args.kernel_params}"
vcpus = {args.vcpus}
memory_mib = {args.memory_mib}

[agent]
dial_timeout_ms = {int(args.timeout * 1000)}
""")
        pal, qemu = [], []
        for i in range(args.runs):
            pal.append(palisade_boot(config, args.timeout + 30))
            qemu.append(qemu_boot(args, args.kernel_params, args.timeout))
            print(f"run {i + 1}/{args.runs}: palisade agent ready {pal[-1]['agent_ready_ms']:.0f} ms, "
                  f"QEMU microvm {qemu[-1]['agent_ready_ms']:.0f} ms", file=sys.stderr)

    rows = [
        ("VMM process started", "vmm_started_ms", "ms"),
        ("guest kernel entered", "guest_entered_ms", "ms"),
        ("agent started", "agent_started_ms", "ms"),
        ("agent ready", "agent_ready_ms", "ms"),
        ("first answer", "first_answer_ms", "ms"),
        ("VMM RSS excluding guest RAM", "vmm_rss_excluding_guest_kib", "kib"),
        ("guest RAM touched", "guest_memory_touched_kib", "kib"),
        ("VMM RSS total", "vmm_rss_kib", "kib"),
    ]
    print(f"\nboot benchmark: median of {args.runs} boots, {args.vcpus} vCPU, {args.memory_mib} MiB, "
          f"same kernel and initramfs; kvm: {os.environ.get('PALISADE_KVM_KIND', 'hardware')}")
    print(f"{'phase':30} {'palisade':>12} {'QEMU microvm':>14} {'ratio':>7}")
    for label, key, unit in rows:
        a = median(r.get(key) for r in pal)
        b = median(r.get(key) for r in qemu)
        ratio = f"{a / b:.2f}" if a and b else "-"
        print(f"{label:30} {fmt(a, unit):>12} {fmt(b, unit):>14} {ratio:>7}")
    print("(ratio = palisade / QEMU; below 1 means palisade is faster or smaller)")


if __name__ == "__main__":
    main()
