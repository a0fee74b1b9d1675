#!/bin/sh
# vm-timeout: 600
# Installation: the dm_snap_rs.ko that DKMS built on the host (scripts/check's
# DKMS round trip: dkms add/build/install against the test kernel's tree) in
# the guest's module tree where DKMS puts it (lib/modules/<release>/
# updates/dkms, depmod) and dist/dm-snap-rs.conf in /etc/modprobe.d (as
# DKMS and make install put it), with the C dm-snapshot.ko installed too. Nothing is loaded by hand: device-mapper's
# request_module("dm-<target>") and lvm2's "modprobe dm-snapshot" must load
# dm_snap_rs by themselves, and never dm_snapshot; and with the module gone
# for the running kernel (the conf still installed), dm_snapshot. The guest's modprobe is
# the distribution's (kmod), as on a real system.
. "$(dirname "$0")/lib.sh"
ktap_begin install 17
REL=$(uname -r)
KMOD=/usr/bin/kmod
loaded() { grep -q "^$1 " /proc/modules && echo yes || echo no; }
must "no snapshot module loaded" unload_drivers
must "kmod present" test -x $KMOD
# kmod picks its tool by the name it runs under.
for t in modprobe depmod modinfo; do ln -sf $KMOD /sbin/$t; done
echo /sbin/modprobe >/proc/sys/kernel/modprobe
must "dm-snapshot.ko is installed" sh -c "ls /lib/modules/$REL/kernel/drivers/md/dm-snapshot.ko*"
DKO=/payload/files/dkms/dm_snap_rs.ko
mkdir -p /lib/modules/$REL/updates/dkms /etc/modprobe.d
must "install: the module DKMS built on the host (missing if the DKMS round trip failed)" cp $DKO /lib/modules/$REL/updates/dkms/dm_snap_rs.ko
must "install: modprobe.d" cp /payload/files/dm-snap-rs.conf /etc/modprobe.d/dm-snap-rs.conf
must "install: depmod" /sbin/depmod -a

expect_eq "modinfo: the three aliases of upstream's module" "dm-snapshot dm-snapshot-origin dm-snapshot-merge" \
	"$(/sbin/modinfo -F alias dm_snap_rs | tr '\n' ' ' | sed 's/ $//')"
# Each name leads to dm_snapshot, whose install rule loads dm_snap_rs.
for name in dm-snapshot dm-snapshot-origin dm-snapshot-merge; do
	/sbin/modprobe $name
	expect_eq "modprobe $name loads dm_snap_rs, not dm_snapshot" "dm_snap_rs=yes dm_snapshot=no" \
		"dm_snap_rs=$(loaded dm_snap_rs) dm_snapshot=$(loaded dm_snapshot)"
	unload_drivers
done

# Upstream's module options reach dm_snap_rs: an "options dm_snapshot" line
# (kmod passes it, and dm_snapshot.<param>= from the kernel command line, as
# $CMDLINE_OPTS to the install rule).
echo "options dm_snapshot snapshot_cow_threshold=77 snapshot_copy_throttle=55" >/etc/modprobe.d/zz-options.conf
/sbin/modprobe dm-snapshot
expect_eq "options dm_snapshot ... apply to dm_snap_rs" "dm_snap_rs=yes 77 55" \
	"dm_snap_rs=$(loaded dm_snap_rs) $(cat /sys/module/dm_snap_rs/parameters/snapshot_cow_threshold 2>&1) $(cat /sys/module/dm_snap_rs/parameters/snapshot_copy_throttle 2>&1)"
rm /etc/modprobe.d/zz-options.conf
unload_drivers

# device-mapper's own request_module: a table naming a target no module
# has registered yet.
O=$(nullb_create in_o 16); C=$(nullb_create in_c 8)
need_blk "null_blk disks created" "$C"
S=$(blockdev --getsz $O)
check "dmsetup create of a snapshot-origin table loads a module by itself" origin_create in-origin $O
check "... and of a snapshot table" snap_create in-origin in-snap "0 $S snapshot $O $C P 8"
expect_eq "the module device-mapper loaded is dm_snap_rs, not dm_snapshot" "dm_snap_rs=yes dm_snapshot=no" \
	"dm_snap_rs=$(loaded dm_snap_rs) dm_snapshot=$(loaded dm_snapshot)"
dmsetup remove in-snap
# Upstream's log prefixes: a persistent COW reloaded with another chunk
# size logs "device-mapper: persistent snapshot: chunk size 8 in device
# metadata overrides ..." (dm-snap-persistent.c), and a snapshot that
# overflows "device-mapper: snapshots: Invalidating snapshot: ..."-type
# lines under "device-mapper: snapshots:" (dm-snap.c).
dmesg -c >/dev/null
check "a snapshot reloaded with chunk size 16 on a chunk-8 COW" snap_create in-origin in-snap "0 $S snapshot $O $C P 16"
expect_eq "its warning carries upstream's prefix" \
	"device-mapper: persistent snapshot: chunk size 8 in device metadata overrides table chunk size of 16." \
	"$(dmesg | grep -o 'device-mapper: persistent snapshot: chunk size.*' | head -1)"
dmsetup remove in-snap
T=$(nullb_create in_t 1)
check "a snapshot whose 1 MiB COW overflows" snap_create in-origin in-snap "0 $S snapshot $O $T N 8"
dd if=/dev/urandom of=/dev/mapper/in-origin bs=1M count=4 oflag=direct 2>/dev/null
expect_eq "its overflow is logged under upstream's prefix, and nothing under the module's name" \
	"device-mapper: snapshots: Invalidating snapshot: Unable to allocate exception. 0" \
	"$(dmesg | grep -o 'device-mapper: snapshots: Invalidating snapshot: Unable to allocate exception.' | head -1) $(dmesg | grep -c 'dm_snap_rs: ')"
dmsetup remove in-snap; dmsetup remove in-origin
nullb_remove in_o; nullb_remove in_c; nullb_remove in_t
unload_drivers

# lvm2's target probe: lvcreate -s runs "modprobe dm-snapshot" first.
P=$(nullb_create in_pv 64)
# lvm2 knows no null_blk devices (not in its list of block device types).
LVC='devices { types = [ "nullb", 16 ] }'
VG=vgin
vg() {
	pvcreate -q -y --config "$LVC" $P && vgcreate -q --config "$LVC" $VG $P &&
		lvcreate -q -y --config "$LVC" -L 16M -n lo $VG &&
		lvcreate -q -y --config "$LVC" -s -L 8M -n ls $VG/lo
}
check "lvcreate -s on a VG (lvm2 probes and loads the snapshot target)" vg
expect_eq "lvm2's snapshot runs on dm_snap_rs: target, modules" "snapshot dm_snap_rs=yes dm_snapshot=no" \
	"$(dmsetup table vgin-ls 2>&1 | cut -d' ' -f3) dm_snap_rs=$(loaded dm_snap_rs) dm_snapshot=$(loaded dm_snapshot)"
for c in "lvremove -q -y vgin" "vgremove -q -y vgin" "pvremove -q -y $P"; do $c --config "$LVC" >/dev/null 2>&1; done
dmsetup remove_all 2>/dev/null
nullb_remove in_pv
unload_drivers

# The fallback: the conf installed, but no dm_snap_rs for the running
# kernel (a kernel DKMS has not built for, a rescue kernel): lvm2 must
# still get a snapshot target, the C module's.
must "uninstall the module only (the conf stays)" rm /lib/modules/$REL/updates/dkms/dm_snap_rs.ko
must "depmod" /sbin/depmod -a
# A disk and a VG of their own (the first VG's teardown is not checked).
P=$(nullb_create in_pv2 64) VG=vgfb
check "without dm_snap_rs, lvcreate -s still works" vg
expect_eq "... on the C module" "snapshot dm_snap_rs=no dm_snapshot=yes" \
	"$(dmsetup table vgfb-ls 2>&1 | cut -d' ' -f3) dm_snap_rs=$(loaded dm_snap_rs) dm_snapshot=$(loaded dm_snapshot)"
for c in "lvremove -q -y vgfb" "vgremove -q -y vgfb" "pvremove -q -y $P"; do $c --config "$LVC" >/dev/null 2>&1; done
nullb_remove in_pv2
unload_drivers
summary
