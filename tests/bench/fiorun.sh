# fio as the benchmarks run it (sourced by bench-vm.sh and scale-vm.sh), and
# their null_blk disks (nb): 4 KiB random I/O,
# O_DIRECT, one region per job, RUNTIME seconds.
#
# Two kinds of run. "first": every I/O touches a block this run has not
# touched (fio's random map), in a region of REGION_MB per job, until
# RUNTIME or the region's end: first-touch copy-on-write stays first-touch
# however long the run. Otherwise: a region of PERJOB_MB per job, written
# or read over and over (time_based) for RUNTIME. A run must last seconds,
# not a few thousand I/Os, or fio's own start-up and the scheduler's noise
# dominate the result.
PERJOB_MB=${PERJOB_MB:-16} REGION_MB=${REGION_MB:-1024} RUNTIME=${RUNTIME:-5}
fiorun() { # dev rw engine jobs [first] -> "iops p50 p99" (µs)
	dev=$1 rw=$2 eng=$3 jobs=$4
	qd=1; [ $eng = libaio ] && qd=32
	if [ "${5:-}" = first ]; then
		span="--size=${REGION_MB}M --offset_increment=${REGION_MB}M"
	else
		span="--size=${PERJOB_MB}M --offset_increment=${PERJOB_MB}M --time_based"
	fi
	fio --name=b --filename=$dev --rw=$rw --bs=4k --direct=1 --ioengine=$eng --iodepth=$qd \
		--numjobs=$jobs $span --randrepeat=1 \
		--group_reporting --runtime=$RUNTIME --output-format=terse --terse-version=3 2>/dev/null |
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

# A null_blk for the benchmarks: nb NAME SIZE_MB [MEMORY_BACKED] prints its
# node; by default without memory, as the fine-grained-locking series measured.
nb() { # name size_mb [memory_backed]: a null_blk, by default without memory
	modprobe null_blk nr_devices=0 >/dev/null 2>&1
	d=/sys/kernel/config/nullb/$1; mkdir "$d"
	echo "$2" >"$d/size"; echo 512 >"$d/blocksize"; echo 2 >"$d/queue_mode"
	echo "${3:-0}" >"$d/memory_backed"
	echo "$SMP" >"$d/submit_queues"; echo 1024 >"$d/hw_queue_depth"; echo 1 >"$d/irqmode"
	echo 1 >"$d/power"; echo /dev/$1
}
