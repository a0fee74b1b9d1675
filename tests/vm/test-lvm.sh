#!/bin/sh
# lvm2 end to end: the unchanged lvm tools (no lvmetad, lvmpolld, dmeventd
# or udev; a minimal configuration given with --config) on a VG whose PV
# is a dm-linear device over null_blk, so that a fault can be injected
# under a COW by reloading that device. Every workflow runs on the C
# driver, then on dm_snap_rs, in this boot: each observation (exit codes,
# lvs lines, tables, status, data) must be the same, and the data must be
# what a snapshot promises.
#   merge_now       lvcreate -s, reactivation, writes, lvconvert --merge
#                   with nothing open: merged at once, the LV gone;
#   merge_deferred  the origin held open: the merge is only recorded; the
#                   merging snapshot cannot be removed, a second merge is
#                   refused; closed and refreshed, it completes, a second
#                   snapshot of the origin keeps its data;
#   merge_fault     an error segment under the COW: "Merge failed" part way;
#                   the fault removed, a reactivation and lvpoll finish it;
#   grow            lvextend of a snapshot, then writes past the old size;
#                   lvextend --use-policies with an autoextend threshold;
#                   a small snapshot overflowing ("I" in lv_attr);
#   ext4_rollback   ext4 on the origin, snapshot, files changed, merge while
#                   mounted (deferred), umount, refresh: e2fsck -fn clean,
#                   the files as they were in the snapshot.
# vm-timeout: 1800
. "$(dirname "$0")/lib.sh"
ktap_begin lvm 21 9
suite_disks lv 4 4
pattern /tmp/base 24

# Only the PV device is scanned (null_blk holds the same signature below it).
LVC='devices { filter = [ "a|^/dev/mapper/lvpv$|", "r|.*|" ] use_devicesfile = 0 }
global { use_lvmpolld = 0 }
activation { monitoring = 0 polling_interval = 1
	snapshot_autoextend_threshold = 60 snapshot_autoextend_percent = 100 }
backup { backup = 0 archive = 0 }'
export LVM_SUPPRESS_FD_WARNINGS=1
L() { c=$1; shift; lvm "$c" --config "$LVC" "$@"; }
# lvs_line: every LV of vgl as "name attr size origin usage;", sorted.
lvs_line() {
	L lvs --noheadings --units k -o lv_name,lv_attr,lv_size,origin,data_percent vgl 2>/dev/null |
		sed 's/^ *//; s/  */ /g; s/ *$//' | sort | tr '\n' ';'
}
lvsum() { sum $DM/vgl-$1 "${2:-24}"; }

# vg_up: PV lvpv (dm-linear over null_blk lv_pv), VG vgl (1 MiB extents),
# origin LV lo (24 MiB of /tmp/base).
vg_up() {
	nullb_create lv_pv 160 >/dev/null && [ -b /dev/lv_pv ] || return 1
	PVS=$(blockdev --getsz /dev/lv_pv)
	echo "0 $PVS linear /dev/lv_pv 0" | dmsetup create lvpv || return 1
	L pvcreate -q -y $DM/lvpv >/dev/null && L vgcreate -q -s 1M vgl $DM/lvpv >/dev/null &&
		L lvcreate -q -y -L 24M -n lo vgl >/dev/null || return 1
	dd if=/tmp/base of=$DM/vgl-lo bs=1M count=24 oflag=direct 2>/dev/null
}
# vg_with_snap NAME SIZE: vg_up and a snapshot LV NAME of lo.
vg_with_snap() {
	vg_up || { echo "SETUP FAILED: VG"; return 1; }
	L lvcreate -q -y -s -L "$2" -n "$1" vgl/lo >/dev/null || echo "SETUP FAILED: snapshot LV $1"
}
# vg_down: everything vg_up and a workflow made goes, whatever state it is
# in (a background poller stopped first, removal of the origin stops a
# merge; what lvm leaves is removed by dmsetup).
vg_down() {
	killall lvm 2>/dev/null; sleep 0.2
	L lvremove -q -y -f vgl >/dev/null 2>&1
	L vgremove -q -y -f vgl >/dev/null 2>&1
	for d in $(dmsetup ls | awk '$1 ~ /^vgl-/ {print $1}'); do dmsetup remove -f "$d" >/dev/null 2>&1; done
	L pvremove -q -y -ff $DM/lvpv >/dev/null 2>&1
	dmsetup remove lvpv 2>/dev/null
	nullb_remove lv_pv
}
# wait_gone LV: waits (at most 120 s) for lvm to finish a merge of
# snapshot LV (the LV removed); prints whether it did.
wait_gone() {
	local i=0
	while [ $i -lt $(scaled 240) ]; do
		L lvs vgl/$1 >/dev/null 2>&1 || { echo "merge finished: $1 gone"; return; }
		sleep 0.5; i=$((i + 1))
	done
	echo "merge NOT finished: $(lvs_line) $(dmsetup status vgl-lo)"
}
# error_under LV FIRST COUNT: reloads the PV device with an error segment
# over sectors [FIRST, FIRST+COUNT) of LV's COW; error_under with no
# arguments heals it.
error_under() {
	if [ $# -eq 0 ]; then t="0 $PVS linear /dev/lv_pv 0"
	else
		off=$(dmsetup table vgl-$1-cow | awk '{print $5}')
		a=$((off + $2)) b=$((off + $2 + $3))
		t="0 $a linear /dev/lv_pv 0
$a $3 error
$b $((PVS - b)) linear /dev/lv_pv $b"
	fi
	dmsetup suspend lvpv && echo "$t" | dmsetup reload lvpv && dmsetup resume lvpv
}
# fio_blocks DEV N SEED: N distinct random 4 KiB blocks written to DEV
# one at a time, their data from fio's seeded generator (the same in every run).
fio_blocks() {
	fio --name=w --filename="$1" --rw=randwrite --bs=4k --size=24M --number_ios="$2" --iodepth=1 \
		--ioengine=psync --direct=1 --randrepeat=1 --randseed="$3" --refill_buffers=1 --output=/dev/null
}

merge_now() {
	vg_with_snap ls 8M || return
	dd if=/tmp/base of=$DM/vgl-lo bs=4k skip=3 seek=10 count=500 oflag=direct 2>/dev/null
	dd if=/tmp/base of=$DM/vgl-ls bs=4k skip=77 seek=2000 count=200 oflag=direct 2>/dev/null
	echo "snapshot: $(lvsum ls)"
	echo "lvs: $(lvs_line)"
	L lvchange -q -an vgl/lo; echo "deactivate rc=$?"
	L lvchange -q -ay vgl/lo; echo "activate rc=$?"
	echo "reactivated: $(lvs_line)"
	echo "reactivated snapshot: $(lvsum ls)"
	L lvconvert -q --merge -i 1 vgl/ls >/dev/null 2>&1; echo "lvconvert rc=$?"
	echo "after: $(lvs_line)"
	echo "table: $(dmsetup table vgl-lo | cut -d' ' -f3)"
	echo "origin: $(lvsum lo)"
	vg_down
}

merge_deferred() {
	vg_with_snap ls 8M || return
	dd if=/tmp/base of=$DM/vgl-lo bs=4k skip=3 seek=10 count=300 oflag=direct 2>/dev/null
	L lvcreate -q -y -s -L 8M -n s2 vgl/lo >/dev/null || echo "SETUP FAILED: second snapshot LV"
	dd if=/tmp/base of=$DM/vgl-ls bs=4k skip=77 seek=2000 count=100 oflag=direct 2>/dev/null
	dd if=/tmp/base of=$DM/vgl-lo bs=4k skip=900 seek=4000 count=100 oflag=direct 2>/dev/null
	echo "snapshot: $(lvsum ls)"
	echo "s2: $(lvsum s2)"
	sleep 600 <$DM/vgl-lo & holder=$!
	sleep 0.5
	L lvconvert -q --merge vgl/ls >/dev/null 2>&1; echo "lvconvert with the origin open rc=$?"
	echo "recorded: $(lvs_line)"
	echo "table while open: $(dmsetup table vgl-lo | cut -d' ' -f3)"
	L lvremove -q -y vgl/ls >/dev/null 2>&1; echo "lvremove of the merging snapshot rc=$?"
	L lvconvert -q --merge vgl/s2 >/dev/null 2>&1; echo "second merge rc=$?"
	kill $holder; wait $holder 2>/dev/null
	L lvchange -q --refresh vgl/lo >/dev/null 2>&1; echo "refresh rc=$?"
	wait_gone ls
	echo "after: $(lvs_line)"
	echo "table: $(dmsetup table vgl-lo | cut -d' ' -f3)"
	echo "origin: $(lvsum lo)"
	echo "s2 after: $(lvsum s2)"
	vg_down
}

merge_fault() {
	vg_with_snap ls 8M || return
	fio_blocks $DM/vgl-lo 500 7 || echo "SETUP FAILED: fio"
	echo "snapshot: $(lvsum ls)"
	# The 200 oldest exceptions' data (COW chunks 2..201; 4 KiB chunks)
	# unreadable: the merge, newest first, fails part way.
	error_under ls 16 1600 || echo "SETUP FAILED: error segment"
	L lvconvert -q --merge -i 1 vgl/ls >/dev/null 2>&1; echo "lvconvert on a faulty COW rc=$?"
	echo "failed: $(dmsetup status vgl-lo | cut -d' ' -f4-)"
	echo "lvs: $(lvs_line)"
	error_under || echo "SETUP FAILED: heal"
	L lvchange -q -an vgl/lo; echo "deactivate rc=$?"
	L lvchange -q -ay --poll n vgl/lo; echo "activate rc=$?"
	echo "reactivated: $(dmsetup table vgl-lo | cut -d' ' -f3)"
	L lvpoll -q --polloperation merge -i 1 vgl/lo >/dev/null 2>&1; echo "lvpoll rc=$?"
	wait_gone ls
	echo "after: $(lvs_line)"
	echo "origin: $(lvsum lo)"
	vg_down
}

grow() {
	vg_with_snap g 4M || return
	dd if=/tmp/base of=$DM/vgl-g bs=1M count=2 seek=1 skip=3 oflag=direct 2>/dev/null
	echo "created: $(lvs_line) $(dmsetup status vgl-g | cut -d' ' -f4-)"
	L lvextend -q -L +8M vgl/g >/dev/null 2>&1; echo "lvextend rc=$?"
	echo "grown: $(dmsetup status vgl-g | cut -d' ' -f4-)"
	dd if=/tmp/base of=$DM/vgl-g bs=1M count=6 seek=4 skip=9 oflag=direct 2>/dev/null
	echo "write past the old size rc=$?"
	echo "after: $(lvs_line) $(dmsetup status vgl-g | cut -d' ' -f4-)"
	echo "snapshot: $(lvsum g)"
	L lvextend -q --use-policies vgl/g >/dev/null 2>&1; echo "lvextend --use-policies rc=$?"
	echo "policies: $(lvs_line) $(dmsetup status vgl-g | cut -d' ' -f4-)"
	L lvcreate -q -y -s -L 1M -n sm vgl/lo >/dev/null || echo "SETUP FAILED: small snapshot LV"
	dd if=/tmp/base of=$DM/vgl-lo bs=1M count=4 seek=16 skip=1 oflag=direct 2>/dev/null
	echo "overflowed: $(L lvs --noheadings -o lv_attr vgl/sm | tr -d ' ') $(dmsetup status vgl-sm | cut -d' ' -f4-)"
	echo "grown snapshot still: $(lvsum g)"
	vg_down
}

ext4_rollback() {
	vg_up || { echo "SETUP FAILED: VG"; return; }
	/sbin/mke2fs -q -F -t ext4 $DM/vgl-lo >/dev/null 2>&1 || echo "SETUP FAILED: mke2fs"
	mkdir -p /mnt/lo
	mount -t ext4 $DM/vgl-lo /mnt/lo || echo "SETUP FAILED: mount"
	dd if=/tmp/base of=/mnt/lo/a bs=64k count=40 skip=1 2>/dev/null
	dd if=/tmp/base of=/mnt/lo/b bs=64k count=30 skip=99 2>/dev/null
	sync
	echo "files: $(cd /mnt/lo && md5sum a b | tr '\n' ' ')"
	L lvcreate -q -y -s -L 12M -n sx vgl/lo >/dev/null || echo "SETUP FAILED: snapshot LV"
	dd if=/tmp/base of=/mnt/lo/a bs=64k count=40 skip=200 conv=notrunc 2>/dev/null
	rm /mnt/lo/b
	dd if=/tmp/base of=/mnt/lo/c bs=64k count=10 2>/dev/null
	sync
	L lvconvert -q --merge vgl/sx >/dev/null 2>&1; echo "lvconvert while mounted rc=$?"
	echo "table while mounted: $(dmsetup table vgl-lo | cut -d' ' -f3)"
	umount /mnt/lo || echo "SETUP FAILED: umount"
	L lvchange -q --refresh vgl/lo >/dev/null 2>&1; echo "refresh rc=$?"
	wait_gone sx
	/sbin/e2fsck -fn $DM/vgl-lo >/tmp/fsck 2>&1; r=$?; echo "e2fsck -fn rc=$r"
	[ $r = 0 ] || sed "s/^/  fsck: /" /tmp/fsck | head -20
	mount -t ext4 -o ro $DM/vgl-lo /mnt/lo || echo "SETUP FAILED: mount after merge"
	echo "rolled back: $(cd /mnt/lo && md5sum a b | tr '\n' ' ')"
	echo "listing: $(ls /mnt/lo | tr '\n' ' ')"
	umount /mnt/lo
	vg_down
}

# The quick tier runs the workflows nothing else covers: a merge deferred
# while the origin is open, and a COW failing mid-merge. (merge_now is the
# merge suite's handover driven by lvm2; ext4_rollback a deferred merge
# under a filesystem; grow the persistent suite's COW growth and PO
# overflow driven by lvm2.)
workflows="merge_now merge_deferred merge_fault grow ext4_rollback"
quick && workflows="merge_deferred merge_fault"
for w in $workflows; do
	load_c; $w >/tmp/c.$w 2>&1
	load_rs; $w >/tmp/rs.$w 2>&1
	same_output "$w: every lvm2 step gives what it gives on the C driver" /tmp/c.$w /tmp/rs.$w
done
# get RUN KEY: the value of "KEY: value" in dm_snap_rs's output of RUN, or
# MISSING (which no expect_eq accepts) when the line is absent.
get() { if grep -q "^$2: " /tmp/rs.$1; then sed -n "s/^$2: //p" /tmp/rs.$1; else echo "MISSING($1 $2)"; fi; }

if ! quick; then
expect_eq "merge_now: a reactivated snapshot LV reads as before" "$(get merge_now snapshot)" \
	"$(get merge_now 'reactivated snapshot')"
expect_eq "merge_now: lvconvert --merge succeeds, the snapshot LV goes, the origin is linear" \
	"lvconvert rc=0|lo|linear" "$(grep '^lvconvert' /tmp/rs.merge_now)|$(get merge_now after | cut -d' ' -f1)|$(get merge_now table)"
expect_eq "merge_now: the origin LV holds what the snapshot LV held" "$(get merge_now snapshot)" "$(get merge_now origin)"
fi

expect_eq "merge_deferred: with the origin open the merge is recorded and waits" \
	"lvconvert with the origin open rc=0|snapshot-origin" \
	"$(grep '^lvconvert' /tmp/rs.merge_deferred)|$(get merge_deferred 'table while open')"
case "$(grep -E '^(lvremove|second)' /tmp/rs.merge_deferred | tr '\n' '|')" in
"lvremove of the merging snapshot rc=0|"* | *"second merge rc=0|") fail "merge_deferred: removal of the merging snapshot and a second merge refused" "$(grep -E '^(lvremove|second)' /tmp/rs.merge_deferred)" ;;
"lvremove of the merging snapshot rc="*"|second merge rc="*) ok "merge_deferred: removal of the merging snapshot and a second merge refused" ;;
*) fail "merge_deferred: removal of the merging snapshot and a second merge refused" "$(cat /tmp/rs.merge_deferred)" ;;
esac
expect_eq "merge_deferred: closed and refreshed, the merge completes; s2 stays a snapshot of the origin" \
	"merge finished: ls gone|snapshot-origin" "$(grep '^merge' /tmp/rs.merge_deferred)|$(get merge_deferred table)"
expect_eq "merge_deferred: the origin holds the merged snapshot's data, s2 its own" \
	"$(get merge_deferred snapshot) $(get merge_deferred s2)" "$(get merge_deferred origin) $(get merge_deferred 's2 after')"

expect_eq "merge_fault: a COW read error mid-merge gives Merge failed" "Merge failed" "$(get merge_fault failed)"
expect_eq "merge_fault: after the fault, reactivation and lvpoll finish the merge with the snapshot's data" \
	"merge finished: ls gone|$(get merge_fault snapshot)" "$(grep '^merge' /tmp/rs.merge_fault)|$(get merge_fault origin)"

if ! quick; then
expect_eq "grow: lvextend of a snapshot: status shows the new total, writes past the old size succeed" \
	"24576|write past the old size rc=0" \
	"$(get grow grown | sed 's/^[0-9]*\/\([0-9]*\) .*/\1/')|$(grep '^write past' /tmp/rs.grow)"
g_before=$(get grow after | sed 's/.*g \([^ ]*\) \([^ ]*\) lo.*/\2/') g_after=$(get grow policies | sed 's/.*g \([^ ]*\) \([^ ]*\) lo.*/\2/')
if [ "$(grep '^lvextend --use' /tmp/rs.grow)" = "lvextend --use-policies rc=0" ] && [ -n "$g_before" ] && [ "$g_before" != "$g_after" ]; then
	ok "grow: lvextend --use-policies above the autoextend threshold grows the snapshot ($g_before -> $g_after)"
else fail "grow: lvextend --use-policies grows the snapshot" "$(grep -E '^(after|lvextend|policies)' /tmp/rs.grow)"; fi
case $(get grow overflowed) in
????I*" Invalid") ok "grow: a small snapshot overflows: I in lv_attr, status Invalid" ;;
*) fail "grow: a small snapshot overflows: I in lv_attr, status Invalid" "$(get grow overflowed)" ;;
esac
expect_eq "grow: the grown snapshot keeps its data" "$(get grow snapshot)" "$(get grow 'grown snapshot still')"
fi

if ! quick; then
expect_eq "ext4_rollback: deferred while mounted, merged after umount and refresh, e2fsck -fn clean" \
	"lvconvert while mounted rc=0|merge finished: sx gone|e2fsck -fn rc=0" \
	"$(grep -E '^(lvconvert|merge|e2fsck)' /tmp/rs.ext4_rollback | tr '\n' '|' | sed 's/|$//')"
expect_eq "ext4_rollback: the files are as they were in the snapshot" \
	"$(get ext4_rollback files)|a b lost+found " "$(get ext4_rollback 'rolled back')|$(get ext4_rollback listing)"
fi
unload_drivers
nullb_remove lv_o; nullb_remove lv_c
summary
