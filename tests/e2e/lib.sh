# Shared by the end-to-end test scripts: results and assertions.
# Each test prints `PASS name` or `FAIL name: why`; the runner counts them.

E2E_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
E2E_BIN=$E2E_REPO/target/release
E2E_OUT=$E2E_REPO/target/palisade

pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }

# Writes a configuration for the freshly built kernel and initramfs to $1.
write_test_config() {
    cat >"$1" <<CONF
[hypervisor]
kernel = "$E2E_OUT/vmlinux"
initrd = "$E2E_OUT/initramfs.cpio.gz"
kernel_params = "${2:-}"
vcpus = ${3:-1}
memory_mib = 256
seccomp = "${PALISADE_E2E_SECCOMP:-enforce}"

[agent]
dial_timeout_ms = 120000
CONF
}

# What a palisade VM may leave behind: VMM processes and sandbox dirs.
leftovers() {
    pgrep -af -- '__vmm' | grep -v pgrep || true
    find /run/palisade -mindepth 1 -maxdepth 1 2>/dev/null || true
}

# Reads one top-level string or number field of palisade's compact JSON
# on stdin (no Python: it starts slowly over 9p in the nested test host).
json_field() {
    sed -n "s/.*\"$1\":\(\"\([^\"]*\)\"\|\([-0-9.e+]*\)\).*/\2\3/p" | head -1
}

# The kernel's recent complaints about KVM, for a guest that died or hung:
# in the nested test host these are the emulated host's side of the story.
kvm_kernel_notes() {
    dmesg 2>/dev/null | grep -iE 'kvm|svm|bug|oops|rcu|hung|watchdog' | tail -8 | sed 's/^/  kernel: /'
}
