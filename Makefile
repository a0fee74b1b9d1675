# SPDX-License-Identifier: GPL-2.0
#
# dm-snap-rs: out-of-tree Rust device-mapper snapshot targets.
#
#   make                 build dm_snap_rs.ko (against KDIR, or the cached test kernel)
#   make check           the quick tier (what CI runs, <= 35 min): every kind of
#                        check, smaller sets; ends "N passed, N failed"
#   make check-full      everything there is (all seeds, full scale, more crash
#                        kills); Documentation/testing.rst says which tier holds what
#   make demo            boot the VM and show snapshots on null_blk
#   make bench           fio: dm_snap_rs vs the C driver vs null_blk (perf kernel)
#   make bench-scale     millions of exceptions: memory, activation, lookups,
#                        many snapshots (perf kernel); the index in userspace
#   make KDIR=<tree>     build against any Rust-enabled 6.12 build tree
#   make rust-analyzer   write rust-project.json for editors
#   make clippy | fmt    lint with CLIPPY=1 / format with rustfmt
#   make install         the module into /lib/modules/<release>/updates for the
#                        release of KDIR (said first), depmod, dist/dm-snap-rs.conf
#                        into /etc/modprobe.d (so that "dm-snapshot" and its
#                        aliases load dm_snap_rs, or the C module on a kernel
#                        without dm_snap_rs), and dm-snap-cow into
#                        $(SBINDIR); INSTALL_MOD_PATH=<dir> stages it all
#                        below <dir>. Without KDIR (the cached test kernel) it
#                        refuses unless that is the running kernel or the
#                        install is staged.
#   make uninstall       undoes make install

# Kbuild reads ./Kbuild, never this file: this is the user's entry point
# only (DKMS runs it with KERNELRELEASE set).
ROOT := $(CURDIR)
# Without KDIR, use (and if needed build) the cached debug test kernel.
ifeq ($(KDIR),)
KDIR_AUTO := 1
KDIR = $(shell $(ROOT)/scripts/build-kernel --print-kdir debug)
endif
export PATH := /usr/lib/llvm-19/bin:$(HOME)/.cargo/bin:$(PATH)
KMAKE = $(MAKE) -C $(KDIR) M=$(ROOT) LLVM=1 RUSTC=/usr/bin/rustc BINDGEN=bindgen CLIPPY_DRIVER=/usr/bin/clippy-driver

.PHONY: all module kernel clean check check-full fuzz demo bench bench-scale rust-analyzer clippy fmt unit install uninstall tool install-check

all: module

kernel:
ifdef KDIR_AUTO
	@$(ROOT)/scripts/setup >/dev/null
	@$(ROOT)/scripts/build-kernel debug >/dev/null
endif

module: kernel
	+$(KMAKE) modules

KRELEASE = $(shell cat $(KDIR)/include/config/kernel.release 2>/dev/null)
MODPROBE_CONF = $(INSTALL_MOD_PATH)/etc/modprobe.d/dm-snap-rs.conf
DEPMOD = depmod $(if $(INSTALL_MOD_PATH),-b $(INSTALL_MOD_PATH)) $(KRELEASE)

SBINDIR ?= /usr/local/sbin
TOOL = $(INSTALL_MOD_PATH)$(SBINDIR)/dm-snap-cow

# A module built against the cached test kernel (no KDIR) loads only into
# that kernel: installing it on this machine would put it under a release
# nothing here boots, next to a modprobe.d file that then claims the
# machine's snapshot targets. So say which kernel, and refuse that case.
install-check: module
ifdef KDIR_AUTO
ifeq ($(INSTALL_MOD_PATH),)
	@if [ "$(KRELEASE)" != "$$(uname -r)" ]; then \
		echo "make install: no KDIR given, so dm_snap_rs.ko was built for the cached test kernel $(KRELEASE)," >&2; \
		echo "  not for the running kernel $$(uname -r). Build and install for this machine's kernel with" >&2; \
		echo "  make install KDIR=/lib/modules/$$(uname -r)/build   (a Rust-enabled kernel: see Documentation/admin-guide.rst)" >&2; \
		echo "  or stage the test kernel's install with INSTALL_MOD_PATH=<dir>." >&2; \
		exit 1; \
	fi
endif
endif
	@echo "make install: dm_snap_rs for kernel $(KRELEASE) (KDIR=$(KDIR))$(if $(INSTALL_MOD_PATH), staged below $(INSTALL_MOD_PATH))"

tool:
	cargo build --release --quiet --bin dm-snap-cow

install: install-check tool
	+$(KMAKE) INSTALL_MOD_DIR=updates INSTALL_MOD_PATH=$(INSTALL_MOD_PATH) DEPMOD=true modules_install
	install -D -m 0644 $(ROOT)/dist/dm-snap-rs.conf $(MODPROBE_CONF)
	install -D -m 0755 $(ROOT)/target/release/dm-snap-cow $(TOOL)
	$(DEPMOD)

uninstall:
	rm -f $(INSTALL_MOD_PATH)/lib/modules/$(KRELEASE)/updates/dm_snap_rs.ko*
	rm -f $(MODPROBE_CONF) $(TOOL)
	$(DEPMOD)

clippy: kernel
	$(ROOT)/scripts/layer-check
	+$(KMAKE) CLIPPY=1 modules

# The files scripts/check holds to rustfmt, and the benches.
fmt:
	rustfmt --edition 2021 --config-path $(ROOT)/.rustfmt.toml rust/dm_snap.rs \
		rust/logic/mod.rs tests/unit/*.rs tools/*.rs benches/*.rs

unit:
	cargo test --quiet

check:
	$(ROOT)/scripts/check

check-full:
	$(ROOT)/scripts/check --full

# Each fuzz target for FUZZ_SECONDS (default 600); see scripts/fuzz.
fuzz:
	$(ROOT)/scripts/fuzz $(FUZZ_SECONDS)

demo:
	$(ROOT)/scripts/demo

bench:
	$(ROOT)/scripts/bench

bench-scale:
	$(ROOT)/scripts/bench-scale

rust-analyzer: kernel
	$(ROOT)/scripts/rust-analyzer $(KDIR) > $(ROOT)/rust-project.json

clean:
	-[ -d "$(KDIR)" ] && $(KMAKE) clean
	rm -f rust/bindings_generated.rs rust-project.json
