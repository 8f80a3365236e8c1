# palisade: build, install, run and test. Targets that install need root.
SHELL := /bin/bash
CARGO ?= cargo
PREFIX ?= /usr/local
DATADIR ?= /usr/share/palisade
CONFDIR ?= /etc/palisade
OUT := target/palisade

.PHONY: all deps build guest install demo test bench

all: build guest

deps:
	@scripts/install-deps

# The shim (containerd-shim-palisade-v2, which is also the VMM) and the
# `palisade` CLI.
build: deps
	$(CARGO) build --release --locked -p containerd-shim-palisade-v2

# The guest kernel and the initramfs with the agent as /init (both cached).
guest: deps
	guest-kernel/build.sh >/dev/null
	rootfs-builder/build.sh >/dev/null

install: build guest
	install -D -m755 target/release/containerd-shim-palisade-v2 $(PREFIX)/bin/containerd-shim-palisade-v2
	install -D -m755 target/release/palisade $(PREFIX)/bin/palisade
	install -D -m644 $(OUT)/vmlinux $(DATADIR)/vmlinux
	install -D -m644 $(OUT)/initramfs.cpio.gz $(DATADIR)/initramfs.cpio.gz
	@if [ -e $(CONFDIR)/configuration.toml ] && ! cmp -s configuration.toml $(CONFDIR)/configuration.toml; then \
		install -D -m644 configuration.toml $(CONFDIR)/configuration.toml.new; \
		echo "kept your $(CONFDIR)/configuration.toml; the new default is $(CONFDIR)/configuration.toml.new"; \
	else \
		install -D -m644 configuration.toml $(CONFDIR)/configuration.toml; \
	fi

# palisade's main job, end to end on this machine (inside the nested KVM
# test host when /dev/kvm here is not hardware KVM): a private containerd
# runs busybox's `uname -a` in a palisade microVM.
demo: install
	scripts/demo

test:
	tests/run-all

bench: build guest
	tests/bench/boot-bench
	tests/bench/container-bench
