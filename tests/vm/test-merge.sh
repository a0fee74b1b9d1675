#!/bin/sh
# snapshot-merge: a persistent snapshot's exceptions copied back into the
# origin, started the way lvm2's lvconvert --merge does it (a
# snapshot-merge table on the origin device, on the snapshot's COW, taking
# its exceptions over; an error table on the snapshot device), and started
# from the COW alone (after a reboot). Each against the C driver: the
# origin ends up holding what the snapshot held, status counts down to
# "<meta>/<total> <meta>", the COW is left without exceptions.
# vm-timeout: 1200
. "$(dirname "$0")/lib.sh"
ktap_begin merge 13
suite_disks mg 32 16

# wait_merged DEV: polls DEV's status until allocated == metadata (what
# lvm2 polls for), at most 60 s; prints the last status.
wait_merged() {
	local i=0 st
	while [ $i -lt 300 ]; do
		st=$(dmsetup status "$1" | cut -d' ' -f4-)
		case $st in
		*/*\ *) a=${st%%/*} m=${st##* }; [ "$a" = "$m" ] && break ;;
		*) break ;;
		esac
		sleep 0.2; i=$((i + 1))
	done
	echo "$st"
}

# The data the snapshot shows after some origin writes (copied out first)
# and some snapshot writes of its own; prints "snapshot: <md5>".
prepare() {
	dd if=/dev/zero of=$C bs=1M count=1 oflag=direct 2>/dev/null
	snap_setup mg-origin mg-snap "0 $S snapshot $O $C P 8"
	dd if=/tmp/base of=$DM/mg-origin bs=4k skip=11 seek=100 count=700 oflag=direct 2>/dev/null
	dd if=/tmp/base of=$DM/mg-origin bs=64k skip=3 seek=300 count=20 oflag=direct 2>/dev/null
	dd if=/tmp/base of=$DM/mg-snap bs=4k skip=999 seek=70 count=300 oflag=direct 2>/dev/null
	dd if=/tmp/base of=$DM/mg-snap bs=4k skip=5 seek=5000 count=9 oflag=direct 2>/dev/null
	echo "snapshot: $(sum $DM/mg-snap 32)"
}

# lvm2's way: snapshot-merge on the origin device, error on the snapshot.
merge_handover() {
	prepare
	dmsetup suspend mg-snap || echo "SETUP FAILED: suspend snap"
	dmsetup suspend mg-origin || echo "SETUP FAILED: suspend origin"
	echo "0 $S snapshot-merge $O $C P 8" | dmsetup reload mg-origin || echo "SETUP FAILED: reload origin"
	echo "0 $S error" | dmsetup reload mg-snap || echo "SETUP FAILED: reload snap"
	dmsetup resume mg-origin || echo "SETUP FAILED: resume origin"
	dmsetup resume mg-snap || echo "SETUP FAILED: resume snap"
	echo "merged: $(wait_merged mg-origin)"
	echo "table: $(dmsetup table mg-origin | cut -d' ' -f3,6-)"
	echo "origin: $(sum $DM/mg-origin 32)"
	dmsetup remove mg-snap; dmsetup remove mg-origin
	echo "exceptions left: $($TOOL dump $C | grep -c '^area')"
	echo "origin device: $(sum $O 32)"
}

# After a reboot: the COW alone, a snapshot-merge table loaded directly.
merge_cold() {
	prepare
	dmsetup remove mg-snap; dmsetup remove mg-origin
	echo "0 $S snapshot-merge $O $C P 8" | dmsetup create mg-origin || echo "SETUP FAILED: create merge"
	echo "merged: $(wait_merged mg-origin)"
	echo "origin: $(sum $DM/mg-origin 32)"
	dmsetup remove mg-origin
	echo "exceptions left: $($TOOL dump $C | grep -c '^area')"
}

for run in merge_handover merge_cold; do
	load_c; $run >/tmp/c.$run 2>&1
	load_rs; $run >/tmp/rs.$run 2>&1
	same_output "$run: status, table, data and COW as the C driver's" /tmp/c.$run /tmp/rs.$run
	want=$(sed -n 's/^snapshot: //p' /tmp/rs.$run)
	expect_eq "$run: the origin holds what the snapshot held" "origin: $want" "$(grep '^origin: ' /tmp/rs.$run)"
	expect_eq "$run: no exception left in the COW" "exceptions left: 0" "$(grep '^exceptions left' /tmp/rs.$run)"
	case $(sed -n 's/^merged: //p' /tmp/rs.$run) in
	*/*\ *) st=$(sed -n 's/^merged: //p' /tmp/rs.$run); a=${st%%/*} m=${st##* }
		expect_eq "$run: status reached allocated == metadata" "$m" "$a" ;;
	*) fail "$run: status reached allocated == metadata" "$(grep merged /tmp/rs.$run)" ;;
	esac
done

# Refusals: a second merge on one origin, a transient store.
refusals() {
	dd if=/dev/zero of=$C bs=1M count=1 oflag=direct 2>/dev/null
	snap_setup mg-origin mg-snap "0 $S snapshot $O $C N 8"
	echo "N: $(dm_error mg-m1 "0 $S snapshot-merge $O $C N 8")"
	dmsetup remove mg-snap; dmsetup remove mg-origin
}
load_c; refusals >/tmp/c.ref 2>&1
load_rs; refusals >/tmp/rs.ref 2>&1
expect_refused "a transient snapshot-merge refused as by the C driver" \
	"$(sed -n 's/^N: //p' /tmp/c.ref)" "$(sed -n 's/^N: //p' /tmp/rs.ref)"

# lvm2 end to end: lvconvert --merge of a snapshot LV (nothing open, so the
# merge starts at once; lvconvert polls it to the end in the foreground).
LVC='devices { types = [ "nullb", 16 ] } global { use_lvmpolld = 0 }'
lvm_merge() {
	P=$(nullb_create mg_pv 64)
	lvm pvcreate -q -y --config "$LVC" $P && lvm vgcreate -q --config "$LVC" vgm $P &&
		lvm lvcreate -q -y --config "$LVC" -L 24M -n lo vgm || echo "SETUP FAILED: VG"
	dd if=/tmp/base of=$DM/vgm-lo bs=1M count=24 oflag=direct 2>/dev/null
	lvm lvcreate -q -y --config "$LVC" -s -L 8M -n ls vgm/lo || echo "SETUP FAILED: snapshot LV"
	dd if=/tmp/base of=$DM/vgm-lo bs=4k skip=3 seek=10 count=500 oflag=direct 2>/dev/null
	dd if=/tmp/base of=$DM/vgm-ls bs=4k skip=77 seek=2000 count=200 oflag=direct 2>/dev/null
	echo "snapshot: $(sum $DM/vgm-ls 24)"
	lvm lvconvert -q --config "$LVC" --merge -i 1 vgm/ls >/dev/null 2>&1 || echo "lvconvert failed"
	echo "LVs: $(lvm lvs --noheadings --config "$LVC" -o lv_name vgm | tr -d ' \n')"
	echo "table: $(dmsetup table vgm-lo | cut -d' ' -f3)"
	echo "origin: $(sum $DM/vgm-lo 24)"
	for c in "lvremove -q -y vgm" "vgremove -q -y vgm" "pvremove -q -y $P"; do lvm $c --config "$LVC" >/dev/null 2>&1; done
	nullb_remove mg_pv
}
load_c; lvm_merge >/tmp/c.lvm 2>&1
load_rs; lvm_merge >/tmp/rs.lvm 2>&1
same_output "lvconvert --merge: LVs, table and data as with the C driver" /tmp/c.lvm /tmp/rs.lvm
expect_eq "lvconvert --merge: the origin LV holds what the snapshot LV held" \
	"origin: $(sed -n 's/^snapshot: //p' /tmp/rs.lvm)" "$(grep '^origin: ' /tmp/rs.lvm)"
expect_eq "lvconvert --merge: the snapshot LV is gone, the origin is linear again" \
	"LVs: lo  table: linear" "$(grep '^LVs: ' /tmp/rs.lvm)  $(grep '^table: ' /tmp/rs.lvm)"
unload_drivers
nullb_remove mg_o; nullb_remove mg_c
summary
