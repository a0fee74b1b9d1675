# Shared definitions for dm-snap-rs scripts (sourced, not run).
#
# The kernel is built once per (kernel source version, flavour, config hash,
# toolchain) into a cache outside the checkout, so fresh clones and CI reuse it.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${DM_SNAP_RS_CACHE:-/var/cache/dm-snap-rs}

# The toolchain that builds 6.12 with Rust; the module must use the same one.
export PATH="/usr/lib/llvm-19/bin:$HOME/.cargo/bin:$PATH"
KMAKE_VARS=(LLVM=1 RUSTC=/usr/bin/rustc BINDGEN=bindgen HOSTRUSTC=/usr/bin/rustc)

say() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { say "error: $*"; exit 1; }

# Debian's linux-source-6.12 tarball and its package version (the cache key,
# since the sublevel moves with every Debian update).
kernel_tarball() { ls /usr/src/linux-source-6.12.tar.xz 2>/dev/null; }
kernel_pkg_version() { dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null; }

# Source tree, extracted once per package version.
kernel_srcdir() { printf '%s/src/linux-source-6.12_%s\n' "$CACHE" "$(kernel_pkg_version)"; }

# Fragments merged over defconfig for a flavour, in order.
flavour_fragments() {
	local f=$1
	printf '%s\n' "$ROOT/.config.fragment" "$ROOT/tests/kernel-vm.config"
	case $f in
	debug) printf '%s\n' "$ROOT/tests/kernel-debug.config" ;;
	perf) printf '%s\n' "$ROOT/tests/kernel-perf.config" ;;
	lockstat) printf '%s\n' "$ROOT/tests/kernel-perf.config" "$ROOT/tests/kernel-lockstat.config" ;;
	*) die "unknown kernel flavour '$f' (debug, perf, lockstat)" ;;
	esac
}

# Build directory (KDIR) for a flavour: keyed by the kernel package version,
# the flavour, and a hash of the fragments and the toolchain.
kernel_kdir() {
	local f=$1 h
	h=$( {
		flavour_fragments "$f" | xargs cat
		/usr/bin/rustc --version; bindgen --version 2>/dev/null
		/usr/lib/llvm-19/bin/clang --version | head -1
	} | sha256sum | cut -c1-12)
	printf '%s/build/%s-%s-%s\n' "$CACHE" "$(kernel_pkg_version)" "$f" "$h"
}

kernel_ready() { [ -f "$1/.dm-snap-rs-built" ]; }

# Seconds from QEMU's start to the guest's command on the machine the
# suites' time limits were tuned on (TCG, debug kernel, a 2-core machine
# running two guests at once): vm-run --limit scales by the boot it
# measures against this.
REF_START=35

# probe_accel KDIR INITRD: "kvm" if /dev/kvm is usable and a KVM guest boots
# the base initramfs to its end (VMRUN-DONE, not just a start), else "tcg".
# Probed on every run, never cached: a host whose KVM breaks later must
# not keep claiming it.
probe_accel() {
	if [ -r /dev/kvm ] && [ -z "${DMSR_NO_KVM:-}" ] &&
		timeout 120 qemu-system-x86_64 -accel kvm -cpu host -m 512M -smp 1 -display none \
			-monitor none -serial stdio -no-reboot -kernel "$1/arch/x86/boot/bzImage" \
			-initrd "$2" -append "console=ttyS0 loglevel=1 panic=-1 kmemleak=off" </dev/null 2>/dev/null |
		grep -q '===VMRUN-DONE==='; then
		echo kvm
	else
		echo tcg
	fi
}
