#!/bin/sh
# In-VM half of scripts/bench-scale: the C driver and dm_snap_rs, loaded in
# turn (C, rs, rs, C per round), at scale. For each size in SIZES: a
# persistent COW of that many isolated exceptions (`dm-snap-cow gen ...
# perm`: every chunk of the first SIZE chunks of the origin copied, in
# random COW order, so no runs form in either driver) on a sparse
# memory-backed null_blk; per driver: the kernel memory the active snapshot
# holds (Slab + VmallocUsed growth), its activation time, and origin
# rewrites of copied chunks (the lookup path; 4 KiB random writes, libaio
# QD32, SMP jobs over the copied region). Then first writes through an
# origin with K = 1, 2, 4, 8 transient snapshots. One line per measure:
# "RESULT round driver measure size value".
. /payload/tests/vm/lib.sh
SIZES=${SIZES-1048576 4194304} SNAPS=${SNAPS-1 2 4 8} ROUNDS=${ROUNDS:-2} SMP=${SMP:-$(nproc)} RUNTIME=${RUNTIME:-5}
. /payload/tests/bench/fiorun.sh
TOOL=/payload/files/dm-snap-cow KO_PERF=/payload/files/dm_snap_rs.ko
load() { if [ $1 = c ]; then load_c; else unload_drivers; insmod $KO_PERF $RSPARAMS; fi; }
mem_kb() { awk '/^(Slab|VmallocUsed):/ { s += $2 } END { print s }' /proc/meminfo; }
now_cs() { awk '{ printf "%d", $1 * 100 }' /proc/uptime; }
result() { echo "RESULT $*"; }
# perf, system wide, from now until prof_stop.
prof_start() {
	echo 0 >/proc/sys/kernel/kptr_restrict
	perf record -q -a -g -F 2000 -e cpu-clock -o /tmp/prof.data >/dev/null 2>&1 &
	pp=$!; sleep 2
}
# prof_stop TITLE LABEL: stop perf; print its report by symbol, without
# and with callees, each line prefixed for the host.
prof_stop() {
	kill -INT $pp; wait $pp
	echo "PROFILE ==== $1"
	for mode in --no-children --children; do
		echo "PROFILE ---- $2: perf report $mode (by symbol, >= 0.5%)"
		perf report -i /tmp/prof.data --stdio $mode --sort sym -g none --percent-limit 0.5 2>/dev/null |
			grep -v '^#' | grep -v '^$' | sed 's/^/PROFILE /'
	done
	rm -f /tmp/prof.data
}

for n in $SIZES; do
	# The origin needs no memory (rewrites of copied chunks never read it).
	O=$(nb so $((n * 4 / 1024 + 16)) 0)
	C=$(nb sc $(((n + n / 128 + 1024) * 4 / 1024 + 1)) 1)
	S=$(blockdev --getsz $O)
	$TOOL gen $C $n $n 7 perm >/dev/null || { echo "gen failed"; exit 1; }
	PERJOB_MB=$((n * 4 / 1024 / SMP))
	r=1
	while [ $r -le $ROUNDS ]; do
		for d in c rs rs c; do
			load $d
			echo "0 $S snapshot-origin $O" | dmsetup create so
			sync; echo 3 >/proc/sys/vm/drop_caches
			m0=$(mem_kb); t0=$(now_cs)
			snap_create so ss "0 $S snapshot $O $C P 8" || { echo "activation failed"; exit 1; }
			t1=$(now_cs); m1=$(mem_kb)
			result $r $d activation_cs $n $((t1 - t0))
			result $r $d memory_B_per_exception $n $(((m1 - m0) * 1024 / n))
			result $r $d rewrite_iops $n $(fiorun /dev/mapper/so randwrite libaio $SMP | cut -d' ' -f1)
			dmsetup remove ss; dmsetup remove so
		done
		r=$((r + 1))
	done
	if [ "${PROFILE:-0}" = 1 ]; then
		# Where an activation's time goes: perf while one snapshot of
		# this COW is created.
		for d in rs c; do
			load $d
			echo "0 $S snapshot-origin $O" | dmsetup create so
			sync; echo 3 >/proc/sys/vm/drop_caches
			prof_start
			t0=$(now_cs)
			snap_create so ss "0 $S snapshot $O $C P 8" || { echo "activation failed"; exit 1; }
			t1=$(now_cs)
			prof_stop "$d: activation of $n exceptions, $((t1 - t0)) cs, under perf" "$d $n"
			dmsetup remove ss; dmsetup remove so
		done
	fi
	unload_drivers; nullb_remove so; nullb_remove sc
done

# First writes with K snapshots of one origin (N store): each first write
# of a chunk copies it to every snapshot (C: one copy each; dm_snap_rs:
# one shared copy for up to 8, unless RSPARAMS=snapshot_shared_copy=0).
REGION_MB=${REGION_MB:-256}
O=$(nb fo $((REGION_MB * SMP + 16)) 0)
S=$(blockdev --getsz $O)
# fw_create DRIVER K: with DRIVER loaded, the origin fo and K N-store
# snapshots fs1..fsK of it. fw_remove K: remove them.
fw_create() {
	load $1
	echo "0 $S snapshot-origin $O" | dmsetup create fo
	i=1; while [ $i -le $2 ]; do
		snap_create fo fs$i "0 $S snapshot $O /dev/fc$i N 8" || exit 1
		i=$((i + 1))
	done
}
fw_remove() {
	i=1; while [ $i -le $1 ]; do dmsetup remove fs$i; i=$((i + 1)); done
	dmsetup remove fo
}
for k in $SNAPS; do
	i=1; while [ $i -le $k ]; do nb fc$i $((REGION_MB * SMP + 16)) 0 >/dev/null; i=$((i + 1)); done
	r=1
	while [ $r -le $ROUNDS ]; do
		for d in c rs rs c; do
			fw_create $d $k
			result $r $d first_write_iops $k $(fiorun /dev/mapper/fo randwrite libaio $SMP first | cut -d' ' -f1)
			fw_remove $k
		done
		r=$((r + 1))
	done
	if [ "${PROFILE:-0}" = 1 ]; then
		# Where first writes with K snapshots spend their time: perf,
		# system wide, over one fio run per driver.
		for d in rs c; do
			fw_create $d $k
			prof_start
			iops=$(fiorun /dev/mapper/fo randwrite libaio $SMP first | cut -d' ' -f1)
			prof_stop "$d: first writes with $k snapshots, $iops IOPS, under perf" "$d k=$k"
			fw_remove $k
		done
	fi
	unload_drivers
	i=1; while [ $i -le $k ]; do nullb_remove fc$i; i=$((i + 1)); done
done
echo "SCALE DONE"
