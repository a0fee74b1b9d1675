#!/bin/sh
# In-VM half of scripts/bench: fio on null_blk (no memory backing, as the
# fine-grained-locking series measured), 4 KiB random I/O, psync (latency)
# and libaio QD32 (throughput), numjobs 1..$SMP with a region per job.
# Rows: raw null_blk, dm-linear, and for each driver (C dm-snapshot.ko and
# dm_snap_rs.ko, loaded in turn, rounds ordered A B B A): origin writes that
# trigger copy-on-write, origin re-writes of copied chunks, snapshot writes,
# snapshot reads. Prints one "RESULT round driver row engine jobs iops p50 p99" line per run.
. /payload/tests/vm/lib.sh
ROUNDS=${ROUNDS:-2} SMP=${SMP:-$(nproc)} PERJOB_MB=${PERJOB_MB:-16} STORE=${STORE:-N} CHUNK=${CHUNK:-8}
KO_PERF=/payload/files/dm_snap_rs.ko

nb() { # name size_mb [memory_backed]: a null_blk, by default without memory
	modprobe null_blk nr_devices=0 >/dev/null 2>&1
	d=/sys/kernel/config/nullb/$1; mkdir "$d"
	echo "$2" >"$d/size"; echo 512 >"$d/blocksize"; echo 2 >"$d/queue_mode"
	echo "${3:-0}" >"$d/memory_backed"
	echo "$SMP" >"$d/submit_queues"; echo 1024 >"$d/hw_queue_depth"; echo 1 >"$d/irqmode"
	echo 1 >"$d/power"; echo /dev/$1
}
SIZE_MB=$((PERJOB_MB * SMP + 16))
# A persistent store reads back its metadata: its COW needs memory backing
# (then N runs on a memory-backed COW too, so that P and N compare).
# STORE may list several stores ("N P"): rows are then named row/STORE.
ORIG=$(nb bo $SIZE_MB); COW=$(nb bc $((SIZE_MB * 2)) $([ "$STORE" = N ] && echo 0 || echo 1))
STORES=$STORE
SECT=$(blockdev --getsz $ORIG)

fiorun() { # dev rw engine jobs -> "iops p50 p99" (µs)
	dev=$1 rw=$2 eng=$3 jobs=$4
	qd=1; [ $eng = libaio ] && qd=32
	fio --name=b --filename=$dev --rw=$rw --bs=4k --direct=1 --ioengine=$eng --iodepth=$qd \
		--numjobs=$jobs --size=${PERJOB_MB}M --offset_increment=${PERJOB_MB}M --randrepeat=1 \
		--group_reporting --runtime=20 --output-format=terse --terse-version=3 2>/dev/null |
	awk -F';' -v rw=$rw '{
		if (rw ~ /read/) { iops=$8; s=18 } else { iops=$49; s=59 }
		p50=0; p99=0
		for (i = s; i < s + 20; i++) {
			split($i, a, "=")
			if (a[1] == "50.000000%") p50 = a[2]
			if (a[1] == "99.000000%") p99 = a[2]
		}
		print iops, p50, p99
	}'
}
result() { echo "RESULT $*"; }
mkorigin() { echo "0 $SECT snapshot-origin $ORIG" | dmsetup create bo; }
mksnap() {
	dd if=/dev/zero of=$COW bs=64k count=1 oflag=direct 2>/dev/null
	dmsetup suspend bo
	echo "0 $SECT snapshot $ORIG $COW $STORE $CHUNK" | dmsetup create bs
	dmsetup resume bo
}
rmall() { dmsetup remove bs 2>/dev/null; dmsetup remove bo 2>/dev/null; }

# Memory per exception and per bucket head, as the kernel reports it.
load_c; echo "SLAB C dm_exception object_size $(cat /sys/kernel/slab/dm_exception/object_size 2>/dev/null)"
unload_drivers; insmod $KO_PERF
echo "SLAB rs dm_snap_rs_exception object_size $(cat /sys/kernel/slab/dm_snap_rs_exception/object_size 2>/dev/null)"
unload_drivers

# Lock statistics (lockstat flavour): origin COW writes at $SMP jobs per
# driver, the most contended lock classes.
if [ -w /proc/lock_stat ] && [ "${LOCKSTAT:-0}" = 1 ]; then
	for drv in c rs; do
		if [ $drv = c ]; then load_c; else unload_drivers; insmod $KO_PERF; fi
		mkorigin; mksnap
		echo 0 >/proc/lock_stat
		fiorun /dev/mapper/bo randwrite libaio $SMP >/dev/null
		awk -v d=$drv 'NR > 4 && $0 ~ /:/ && $2+0 > 0 {print "LOCKSTAT", d, $0}' /proc/lock_stat | sort -k5 -nr | head -15
		rmall
	done
	unload_drivers
	exit 0
fi

order="c rs rs c"
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
		if [ $drv = c ]; then load_c; else unload_drivers; insmod $KO_PERF; fi
		for eng in psync libaio; do
			j=1; while [ $j -le $SMP ]; do
				mkorigin; mksnap
				result $r $drv origin-cow$sfx $eng $j $(fiorun /dev/mapper/bo randwrite $eng $j)
				result $r $drv origin-rewrite$sfx $eng $j $(fiorun /dev/mapper/bo randwrite $eng $j)
				rmall; mkorigin; mksnap
				result $r $drv snap-write$sfx $eng $j $(fiorun /dev/mapper/bs randwrite $eng $j)
				rmall; mkorigin; mksnap
				result $r $drv snap-read$sfx $eng $j $(fiorun /dev/mapper/bs randread $eng $j)
				rmall
				j=$((j * 2)); [ $j -gt $SMP ] && [ $((j / 2)) -lt $SMP ] && j=$SMP
			done
		done
	done
	done
done
unload_drivers
