#!/bin/sh
# In-VM half of scripts/bench: fio on null_blk (no memory backing, as the
# fine-grained-locking series measured), 4 KiB random I/O, psync (latency)
# and libaio QD32 (throughput), numjobs 1..$SMP with a region per job.
# Rows: raw null_blk, dm-linear, and for each driver (C dm-snapshot.ko and
# dm_snap_rs.ko, loaded in turn, rounds ordered A B B A): origin writes that
# trigger copy-on-write, origin re-writes of copied chunks, snapshot writes,
# snapshot reads; and the origin target without a snapshot. Prints one
# "RESULT round driver row engine jobs iops p50 p99" line per run.
# Origin COW and snapshot writes are first-touch runs over REGION_MB per job;
# the others repeat over PERJOB_MB per job (see fiorun.sh).
. /payload/tests/vm/lib.sh
ROUNDS=${ROUNDS:-2} SMP=${SMP:-$(nproc)} STORE=${STORE:-N} CHUNK=${CHUNK:-8}
. /payload/tests/bench/fiorun.sh
KO_PERF=/payload/files/dm_snap_rs.ko
# The driver compared with dm_snap_rs: "c" (dm-snapshot.ko) or "base" (an
# earlier dm_snap_rs, scripts/bench --baseline).
A=${A:-c}
load() {
	case $1 in
	c) load_c ;;
	base) unload_drivers; insmod /payload/files/dm_snap_rs-base.ko ;;
	*) unload_drivers; insmod $KO_PERF ;;
	esac
}

SIZE_MB=$((REGION_MB * SMP + 16))
# A persistent store reads back its metadata: its COW needs memory backing
# (then N runs on a memory-backed COW too, so that P and N compare).
# STORE may list several stores ("N P"): rows are then named row/STORE.
ORIG=$(nb bo $SIZE_MB); COW=$(nb bc $((SIZE_MB * 2)) $([ "$STORE" = N ] && echo 0 || echo 1))
STORES=$STORE
SECT=$(blockdev --getsz $ORIG)

result() { echo "RESULT $*"; }
# Copies every chunk of the rewrite region of $1 jobs through the origin
# (untimed), so that the origin-rewrite row only rewrites copied chunks.
precopy() { dd if=/dev/zero of=/dev/mapper/bo bs=64k count=$((PERJOB_MB * $1 * 16)) oflag=direct 2>/dev/null; }
# One snapshot row on a fresh origin and snapshot: run ROW DEV RW [first]
# (round r, driver drv, engine eng, jobs j and suffix sfx from the loop).
run() {
	want $1 || return 0
	mkorigin; mksnap
	[ $1 = origin-rewrite ] && precopy $j
	result $r $drv $1$sfx $eng $j $(fiorun /dev/mapper/$2 $3 $eng $j ${4:-})
	rmall
}
# The origin target with no snapshot (round r, driver drv, engine eng, jobs
# j from the loop): the origin's own cost, the floor of an origin rewrite.
only() {
	want origin-only || return 0
	mkorigin
	result $r $drv origin-only $eng $j $(fiorun /dev/mapper/bo randwrite $eng $j)
	rmall
}
CS=/sys/devices/system/clocksource/clocksource0/current_clocksource
echo "CLOCKSOURCE start $(cat $CS)"
echo "STORES $STORES"
# ROWS (scripts/bench --rows) limits the rows run (origin-only and the
# snapshot rows; the floors always run); all by default.
want() { [ -z "${ROWS:-}" ] || case " $ROWS " in *" $1 "*) true ;; *) false ;; esac; }
mkorigin() { echo "0 $SECT snapshot-origin $ORIG" | dmsetup create bo; }
mksnap() {
	dd if=/dev/zero of=$COW bs=64k count=1 oflag=direct 2>/dev/null
	dmsetup suspend bo
	echo "0 $SECT snapshot $ORIG $COW $STORE $CHUNK" | dmsetup create bs
	dmsetup resume bo
}
rmall() { dmsetup remove bs 2>/dev/null; dmsetup remove bo 2>/dev/null; }

# Lock statistics (lockstat flavour): origin COW writes at $SMP jobs per
# driver, the most contended lock classes.
if [ -w /proc/lock_stat ] && [ "${LOCKSTAT:-0}" = 1 ]; then
	for drv in ${LOCKSTAT_DRIVERS:-c rs}; do
		load $drv
		mkorigin; mksnap
		BLS=/sys/module/dm_snap_rs/parameters/bucket_lock_stats
		echo 0 >/proc/lock_stat
		[ $drv = rs ] && echo 0 >$BLS
		fiorun /dev/mapper/bo randwrite libaio $SMP first >/dev/null
		# Classes with any contention, most contended first (lock_stat's
		# columns: class: con-bounces contentions waittime-min max total avg
		# acq-bounces acquisitions holdtime-min max total avg).
		awk -v d=$drv '/^ *[^ ].*:/ && $0 !~ /^ *[-.]/ {n=split($0, f, ":"); split(f[n], v, " ");
			if (v[2] + 0 > 0 && $0 !~ /\[</) print v[2] "\tLOCKSTAT " d " " $0}' /proc/lock_stat | sort -n -r | head -15 | cut -f2-
		# The bucket bit locks, counted by the module itself.
		[ $drv = rs ] && echo "BUCKETSTAT rs $(cat $BLS)"
		rmall
	done
	unload_drivers
	exit 0
fi

# Memory per exception and per bucket head, as the kernel reports it.
load_c; echo "SLAB C dm_exception object_size $(cat /sys/kernel/slab/dm_exception/object_size 2>/dev/null)"
unload_drivers; insmod $KO_PERF
echo "SLAB rs dm_snap_rs_exception object_size $(cat /sys/kernel/slab/dm_snap_rs_exception/object_size 2>/dev/null)"
unload_drivers

# Profile (scripts/bench --profile): where the CPU goes during one row per
# driver, sampled by perf (cpu-clock, all CPUs), top symbols.
if [ "${PROFILE:-0}" = 1 ]; then
	P=/payload/files/perf
	echo 0 >/proc/sys/kernel/kptr_restrict; echo -1 >/proc/sys/kernel/perf_event_paranoid
	echo "${PROFILE_ROWS:-origin-cow psync 1,snap-write psync 1,origin-cow libaio $SMP}" | tr , '\n' >/tmp/rows
	while read -r row; do
		set -- $row
		for drv in $A rs; do
			load $drv
			mkorigin; mksnap
			dev=/dev/mapper/bo; [ $1 = snap-write ] && dev=/dev/mapper/bs
			how=first
			if [ $1 = origin-rewrite ]; then
				how=""
				precopy $3
			fi
			LD_LIBRARY_PATH=/payload/files $P record -q -e cpu-clock -F 999 -a -o /tmp/perf.data -- \
				sh -c ". /payload/tests/bench/fiorun.sh; fiorun $dev randwrite $2 $3 $how" >/tmp/fio.out 2>/dev/null
			echo "PROFILE $drv $row: fio iops p50 p99 = $(cat /tmp/fio.out)"
			LD_LIBRARY_PATH=/payload/files $P report -i /tmp/perf.data --no-children --sort dso,sym --stdio 2>/dev/null |
				grep '%' | grep -v -e '^#' -e safe_halt | head -40 | sed "s/^/PROFILE $drv $1 $2 $3 /"
			rmall
		done
	done </tmp/rows
	unload_drivers
	exit 0
fi

order="$A rs rs $A"
r=0
while [ $r -lt $ROUNDS ]; do
	r=$((r + 1))
	for eng in psync libaio; do
		j=1; while [ $j -le $SMP ]; do
			result $r - raw $eng $j $(fiorun $ORIG randwrite $eng $j)
			echo "0 $SECT linear $ORIG 0" | dmsetup create bl
			result $r - linear $eng $j $(fiorun /dev/mapper/bl randwrite $eng $j)
			dmsetup remove bl
			j=$((j * 2)); [ $j -gt $SMP ] && [ $((j / 2)) -lt $SMP ] && j=$SMP
		done
	done
	for STORE in $STORES; do
	sfx=""; [ "$STORES" != "$STORE" ] && sfx=/$STORE
	for drv in $order; do
		load $drv
		for eng in psync libaio; do
			j=1; while [ $j -le $SMP ]; do
				# Store-independent: with the first store only.
				[ "$STORE" = "${STORES%% *}" ] && only
				run origin-cow bo randwrite first
				run origin-rewrite bo randwrite
				run snap-write bs randwrite first
				run snap-read bs randread
				j=$((j * 2)); [ $j -gt $SMP ] && [ $((j / 2)) -lt $SMP ] && j=$SMP
			done
		done
	done
	done
done
unload_drivers
echo "CLOCKSOURCE end $(cat $CS)"
