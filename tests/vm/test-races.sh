#!/bin/sh
# vm-timeout: 900
# Races found in review (issue 13), under KASAN, lockdep and the
# atomic-sleep checks:
# - teardown: a snapshot removed while dm-kcopyd still completes its
#   copies (the store must outlive the kcopyd client, whose destruction
#   waits for every callback, as upstream's __free_exceptions);
# - the origin's COW throttle: with snapshot_cow_threshold=1 and many
#   origin writers, a wakeup lost between the threshold check and the
#   sleep would hang the writers.
. "$(dirname "$0")/lib.sh"
ktap_begin races 7
must "dm_snap_rs loads" load_rs
O=$(nullb_create rc_o 64); C=$(nullb_create rc_c 32)
need_blk "null_blk disks created" "$C"
S=$(blockdev --getsz $O)
must "origin created" origin_create rc-origin $O

# --- 1. create and remove snapshots while fio writes the origin at QD32 -------
rm -f /tmp/stop /tmp/fio.fail /tmp/fio.runs
(while [ ! -e /tmp/stop ]; do
	if fio --name=w --filename=$DM/rc-origin --rw=randwrite --bs=4k --direct=1 --ioengine=libaio \
		--iodepth=32 --size=64M --time_based --runtime=2 --output=/tmp/fio.td >/dev/null 2>&1
	then echo run >>/tmp/fio.runs; else echo "fio status $?" >>/tmp/fio.fail; fi
done) &
wpid=$!
sleep 1
made=0 bad=""
for i in $(seq 1 30); do
	case $((i % 6)) in
	0) st="P 8" ;; 1) st="PO 16" ;; 2) st="N 8" ;; 3) st="P 32" ;; 4) st="N 64" ;; 5) st="PO 8" ;;
	esac
	dd if=/dev/zero of=$C bs=64k count=1 oflag=direct 2>/dev/null
	if snap_create rc-origin rc-s "0 $S snapshot $O $C $st" >/tmp/sc.out 2>&1; then
		sleep 0.$((i % 5 + 1))
		dmsetup remove rc-s 2>>/tmp/sc.out && made=$((made + 1)) || bad="$bad remove#$i($st)"
	else
		bad="$bad create#$i($st): $(cat /tmp/sc.out)"
	fi
done
touch /tmp/stop
wait $wpid
expect_eq "30 P, PO and N snapshots created and removed under origin writes at QD32" "30 " "$made $bad"
runs=$(grep -c run /tmp/fio.runs 2>/dev/null)
check "origin writers ran meanwhile ($runs fio runs)" test "${runs:-0}" -ge 2
expect_eq "no origin write failed" "" "$(cat /tmp/fio.fail 2>/dev/null)"

# --- 2. snapshot_cow_threshold=1 with 8 origin writers -------------------------
P=/sys/module/dm_snap_rs/parameters/snapshot_cow_threshold
echo 1 >$P
dd if=/dev/zero of=$C bs=64k count=1 oflag=direct 2>/dev/null
must "snapshot loaded (throttle)" snap_create rc-origin rc-t "0 $S snapshot $O $C N 8"
fio --name=t --filename=$DM/rc-origin --rw=randwrite --bs=4k --direct=1 --ioengine=libaio --iodepth=4 \
	--numjobs=8 --offset_increment=8M --size=8M --time_based --runtime=6 --group_reporting \
	--output=/tmp/fio.th >/dev/null 2>&1 &
fpid=$!
n=0
while kill -0 $fpid 2>/dev/null && [ $n -lt $(scaled 240) ]; do sleep 0.5; n=$((n + 1)); done
if kill -0 $fpid 2>/dev/null; then
	fail "8 origin writers with snapshot_cow_threshold=1 finish (no lost wakeup)" \
		"fio still running 120 s after a 6 s run: writers hang"
	summary; exit 1
fi
wait $fpid
check "8 origin writers with snapshot_cow_threshold=1 finish (no lost wakeup)" test $? -eq 0
used=$(dmsetup status rc-t | cut -d' ' -f4 | cut -d/ -f1)
check "the throttled writers copied chunks ($used sectors)" test "${used:-0}" -gt 0
echo 2048 >$P
dmsetup remove rc-t; dmsetup remove rc-origin
check "module unloads" rmmod dm_snap_rs
nullb_remove rc_o; nullb_remove rc_c
summary
