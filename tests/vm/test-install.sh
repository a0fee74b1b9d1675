#!/bin/sh
# vm-timeout: 600
# Installation: dm_snap_rs in the guest's module tree the way `make
# install` puts it (lib/modules/<release>/updates, depmod, and
# dist/dm-snap-rs.conf in /etc/modprobe.d), with the C dm-snapshot.ko
# installed too. Nothing is loaded by hand: device-mapper's
# request_module("dm-<target>") and lvm2's "modprobe dm-snapshot" must load
# dm_snap_rs by themselves, and never dm_snapshot; and with the module gone
# for the running kernel (the conf still installed), dm_snapshot. The guest's modprobe is
# the distribution's (kmod), as on a real system.
. "$(dirname "$0")/lib.sh"
ktap_begin install 12
REL=$(uname -r)
KMOD=/usr/bin/kmod
loaded() { grep -q "^$1 " /proc/modules && echo yes || echo no; }
must "no snapshot module loaded" unload_drivers
must "kmod present" test -x $KMOD
# kmod picks its tool by the name it runs under.
for t in modprobe depmod modinfo; do ln -sf $KMOD /sbin/$t; done
echo /sbin/modprobe >/proc/sys/kernel/modprobe
must "dm-snapshot.ko is installed" sh -c "ls /lib/modules/$REL/kernel/drivers/md/dm-snapshot.ko*"
mkdir -p /lib/modules/$REL/updates /etc/modprobe.d
must "install: module" cp "$KO" /lib/modules/$REL/updates/dm_snap_rs.ko
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

# device-mapper's own request_module: a table naming a target no module
# has registered yet.
O=$(nullb_create in_o 16); C=$(nullb_create in_c 8)
need_blk "null_blk disks created" "$C"
S=$(blockdev --getsz $O)
check "dmsetup create of a snapshot-origin table loads a module by itself" origin_create in-origin $O
check "... and of a snapshot table" snap_create in-origin in-snap "0 $S snapshot $O $C P 8"
expect_eq "the module device-mapper loaded is dm_snap_rs, not dm_snapshot" "dm_snap_rs=yes dm_snapshot=no" \
	"dm_snap_rs=$(loaded dm_snap_rs) dm_snapshot=$(loaded dm_snapshot)"
dmsetup remove in-snap; dmsetup remove in-origin
nullb_remove in_o; nullb_remove in_c
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
must "uninstall the module only (the conf stays)" rm /lib/modules/$REL/updates/dm_snap_rs.ko
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
