#!/bin/sh
# snapshot-merge: a persistent snapshot's exceptions copied back into the
# origin, started the way lvm2's lvconvert --merge does it (a
# snapshot-merge table on the origin device, on the snapshot's COW, taking
# its exceptions over; an error table on the snapshot device), and started
# from the COW alone (after a reboot). Each against the C driver: the
# origin ends up holding what the snapshot held, status counts down to
# "<meta>/<total> <meta>", the COW is left without exceptions.
# Also: bad merges refused or stopped as upstream does, a suspended merge
# standing still, and writes during a merge (lvm2's end to end merges are
# in test-lvm.sh).
# vm-timeout: 1200
. "$(dirname "$0")/lib.sh"
ktap_begin merge 15 9
suite_disks mg 32 16

# wait_merged DEV: polls DEV's status until allocated == metadata (what
# lvm2 polls for), at most 60 s; prints the last status.
wait_merged() {
	local i=0 st
	while [ $i -lt $(scaled 300) ]; do
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

# start_handover: what lvconvert --merge loads when nothing is open: a
# snapshot-merge table on the origin device (on the snapshot's COW), an
# error table on the snapshot device; the merge starts at the resume.
start_handover() {
	dmsetup suspend mg-snap || echo "SETUP FAILED: suspend snap"
	dmsetup suspend mg-origin || echo "SETUP FAILED: suspend origin"
	echo "0 $S snapshot-merge $O ${COW:-$C} P 8" | dmsetup reload mg-origin || echo "SETUP FAILED: reload origin"
	echo "0 $S error" | dmsetup reload mg-snap || echo "SETUP FAILED: reload snap"
	dmsetup resume mg-origin || echo "SETUP FAILED: resume origin"
	dmsetup resume mg-snap || echo "SETUP FAILED: resume snap"
}

# lvm2's way: snapshot-merge on the origin device, error on the snapshot.
merge_handover() {
	prepare
	start_handover
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

# The quick tier merges lvm2's way only: a merge started from the COW
# alone is what every boot of the merge crash test does.
runs="merge_handover merge_cold"
quick && runs=merge_handover
for run in $runs; do
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

# --- bad merges, as upstream treats them -------------------------------------
# try_merge NAME TABLE: "created <status>" or the ti->error of the refusal.
try_merge() {
	local e
	e=$(DM_ERROR_KEEP=1 dm_error "$1" "$2")
	if [ "$e" = created ]; then
		sleep 1; echo "created $(dmsetup status "$1" | cut -d' ' -f4-)"
		dmsetup remove "$1"
	else echo "$e"; fi
}
bad_merges() {
	O2=/dev/mg_o2
	# An invalidated snapshot (overflowed on a 1 MiB COW): the merge
	# starts, logs "can't merge" and stops; the origin is left alone.
	dd if=/dev/zero of=/dev/mg_small bs=1M count=1 oflag=direct 2>/dev/null
	snap_setup mg-origin mg-snap "0 $S snapshot $O /dev/mg_small P 8"
	dd if=/tmp/base of=$DM/mg-origin bs=1M count=3 skip=9 oflag=direct 2>/dev/null
	echo "overflowed: $(dmsetup status mg-snap | cut -d' ' -f4-)"
	dmsetup remove mg-snap; dmsetup remove mg-origin
	before=$(sum $O 32)
	dmesg -c >/dev/null
	echo "invalid: $(try_merge mg-m "0 $S snapshot-merge $O /dev/mg_small P 8")"
	echo "invalid, logged: $(dmesg | grep -c "can't merge")"
	[ "$(sum $O 32)" = "$before" ] && echo "invalid: origin untouched" || echo "invalid: origin CHANGED"
	# A COW without a header (zeroed), and one with garbage in it.
	dd if=/dev/zero of=/dev/mg_small bs=1M count=1 oflag=direct 2>/dev/null
	echo "zeroed COW: $(try_merge mg-m "0 $S snapshot-merge $O /dev/mg_small P 8")"
	dd if=/tmp/base of=/dev/mg_small bs=1M count=1 skip=20 oflag=direct 2>/dev/null
	echo "garbage COW: $(try_merge mg-m "0 $S snapshot-merge $O /dev/mg_small P 8")"
	# A snapshot of $O merged into another origin device: no handover (the
	# COW is not shared on that origin), the COW is read as after a reboot.
	dd if=/dev/zero of=$C bs=1M count=1 oflag=direct 2>/dev/null
	snap_setup mg-origin mg-snap "0 $S snapshot $O $C P 8"
	dd if=/tmp/base of=$DM/mg-origin bs=4k skip=11 seek=100 count=70 oflag=direct 2>/dev/null
	dd if=/tmp/base of=$O2 bs=1M oflag=direct 2>/dev/null
	echo "other origin: $(try_merge mg-m "0 $S snapshot-merge $O2 $C P 8")"
	echo "other origin data: $(sum $O2 32)"
	echo "snapshot after: $(dmsetup status mg-snap | cut -d' ' -f4-)"
	dmsetup remove mg-snap; dmsetup remove mg-origin
}
nullb_create mg_small 1 >/dev/null; nullb_create mg_o2 32 >/dev/null
load_c; bad_merges >/tmp/c.bad 2>&1
load_rs; bad_merges >/tmp/rs.bad 2>&1
same_output "bad merges: invalid snapshot, COW without header or with garbage, other origin: as the C driver" \
	/tmp/c.bad /tmp/rs.bad
expect_eq "an invalid snapshot is not merged: Invalid, \"can't merge\" logged, origin untouched" \
	"invalid: created Invalid|invalid, logged: 1|invalid: origin untouched" \
	"$(grep '^invalid' /tmp/rs.bad | tr '\n' '|' | sed 's/|$//')"

# --- a suspended merge stands still, and goes on at the resume ---------------
# Many single-chunk exceptions (every other chunk, 1200 of them, written
# by one seeded fio job rather than 1200 dd processes); the COW seen through
# dm-delay (2 ms per I/O), so the merge is still running when the origin
# device is suspended (on bare null_blk it ends within a second). The
# status must be mid-merge then, and must not move while suspended.
many() {
	dd if=/dev/zero of=${COW:-$C} bs=1M count=1 oflag=direct 2>/dev/null
	snap_setup mg-origin mg-snap "0 $S snapshot $O ${COW:-$C} P 8"
	fio --name=many --filename=$DM/mg-origin --rw=write:4k --bs=4k --number_ios=1200 --direct=1 \
		--ioengine=psync --randrepeat=1 --randseed=1200 --refill_buffers=1 --output=/dev/null ||
		echo "SETUP FAILED: fio"
	echo "snapshot: $(sum $DM/mg-snap 32)"
}
stop_restart() {
	modprobe dm-delay
	echo "0 $(blockdev --getsz $C) delay $C 0 2" | dmsetup create mg-cowd || echo "SETUP FAILED: dm-delay"
	COW=$DM/mg-cowd
	many
	start_handover
	dmsetup suspend mg-origin || echo "SETUP FAILED: suspend merging origin"
	a=$(dmsetup status mg-origin | cut -d' ' -f4-); sleep 2; b=$(dmsetup status mg-origin | cut -d' ' -f4-)
	case $a in */*\ *) [ "${a%%/*}" != "${a##* }" ] && echo "suspended: mid-merge" || echo "suspended: after the end ($a)" ;;
	*) echo "suspended: status $a" ;; esac
	[ "$a" = "$b" ] && echo "suspended: still" || echo "suspended: moved ($a -> $b)"
	dmsetup resume mg-origin || echo "SETUP FAILED: resume merging origin"
	echo "merged: $(wait_merged mg-origin)"
	echo "origin: $(sum $DM/mg-origin 32)"
	dmsetup remove mg-snap; dmsetup remove mg-origin; dmsetup remove mg-cowd
	COW=
}
load_rs; stop_restart >/tmp/rs.stop 2>&1
expect_eq "a suspended merge stands still; resumed, it finishes with the snapshot's data" \
	"suspended: mid-merge|suspended: still|origin: $(sed -n 's/^snapshot: //p' /tmp/rs.stop)" \
	"$(grep -E '^(suspended|origin):' /tmp/rs.stop | tr '\n' '|' | sed 's/|$//')"

# --- writes during the merge --------------------------------------------------
# fio writes 2000 distinct random 4 KiB blocks to the merging origin (its
# buffers refilled from its seeded generator, so the data of each block is
# the same in every run); the same job on a copy of the snapshot's data is
# the reference.
FIO="--name=w --rw=randwrite --bs=4k --size=32M --number_ios=2000 --iodepth=4 --ioengine=libaio
	--direct=1 --randrepeat=1 --randseed=4242 --refill_buffers=1 --output=/dev/null"
io_during() {
	many
	dd if=$DM/mg-snap of=/dev/mg_ref bs=1M iflag=direct oflag=direct 2>/dev/null
	start_handover
	fio $FIO --filename=$DM/mg-origin || echo "fio on the merging origin failed"
	echo "during: $(dmsetup status mg-origin | cut -d' ' -f4-)" >/tmp/during
	echo "merged: $(wait_merged mg-origin)"
	echo "origin: $(sum $DM/mg-origin 32)"
	fio $FIO --filename=/dev/mg_ref || echo "fio on the reference failed"
	echo "reference: $(sum /dev/mg_ref 32)"
	dmsetup remove mg-snap; dmsetup remove mg-origin
	echo "exceptions left: $($TOOL dump $C | grep -c '^area')"
}
# The quick tier leaves this to the merge crash test, whose every boot
# writes through the merging device and checks each acknowledged write.
if ! quick; then
nullb_create mg_ref 32 >/dev/null
load_c; io_during >/tmp/c.io 2>&1
load_rs; io_during >/tmp/rs.io 2>&1
same_output "writes during a merge: data and end state as the C driver's" /tmp/c.io /tmp/rs.io
expect_eq "writes during a merge: the origin is the snapshot's data plus every write, merged to the end" \
	"origin: $(sed -n 's/^reference: //p' /tmp/rs.io)|exceptions left: 0" \
	"$(grep -E '^(origin|exceptions left):' /tmp/rs.io | tr '\n' '|' | sed 's/|$//')"
grep -q 'during: .*/' /tmp/during || echo "# note: the merge was over before fio's writes ended"
fi
nullb_remove mg_small; nullb_remove mg_o2; nullb_remove mg_ref

unload_drivers
nullb_remove mg_o; nullb_remove mg_c
summary
