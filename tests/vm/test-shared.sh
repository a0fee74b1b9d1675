#!/bin/sh
# Shared copies: a first write to an origin chunk that several snapshots of
# one chunk size still share reads the origin once and writes every COW
# with one dm-kcopyd job (up to 8 destinations); other chunk sizes and the
# ninth snapshot on get copies of their own. Counts the reads the origin
# null_blk disk completed (the C driver reads once per snapshot), checks
# every snapshot's data against the C driver's run of the same steps, that
# a COW failing under a shared copy invalidates only its own snapshot, and
# that persistent COWs written by shared copies under fio read back right,
# through the C driver too.
# vm-timeout: 1200
. "$(dirname "$0")/lib.sh"
ktap_begin shared 21 18
pattern /tmp/sh.rnd 1
O=$(nullb_create sh_o 16)
for i in 1 2 3 4 5 6 7 8 9 10; do eval "C$i=\$(nullb_create sh_c$i 8)"; done
CE=$(nullb_create sh_ce 8)
need_blk "null_blk disks created" "$CE"
S=$(blockdev --getsz $O)
CS=$(blockdev --getsz $CE)
pattern /tmp/base 16
BASE=$(sum /tmp/base 16)

# Read requests the origin disk completed so far.
reads() { awk '{ print $1 }' /sys/block/sh_o/stat; }
cow() { eval "echo \$C$1"; }
load_rs_params() { unload_drivers; insmod "$KO" "$@"; }

# setup STORE CHUNKS...: the known data on the origin, and one snapshot
# sh-sI per chunk size given, on COW I.
setup() {
	local st=$1 i=0 c; shift
	dd if=/tmp/base of=$O bs=1M oflag=direct 2>/dev/null || echo "SETUP FAILED: origin data"
	origin_create sh-origin $O || echo "SETUP FAILED: origin"
	for c in "$@"; do
		i=$((i + 1))
		dd if=/dev/zero of=$(cow $i) bs=64k count=1 oflag=direct 2>/dev/null
		snap_create sh-origin sh-s$i "0 $S snapshot $O $(cow $i) $st $c" || echo "SETUP FAILED: snapshot $i"
	done
	NS=$i
}
teardown() {
	local i
	for i in $(seq 1 $NS); do dmsetup remove sh-s$i; done
	dmsetup remove sh-origin
}
# writes: 16 single-block writes to 16 chunks far apart; prints the origin
# reads they caused.
writes() {
	local r0 k
	r0=$(reads)
	for k in $(seq 0 15); do
		dd if=/tmp/sh.rnd of=/dev/mapper/sh-origin bs=4k count=1 skip=$k seek=$((k * 37 + 3)) oflag=direct 2>/dev/null
	done
	echo "origin reads: $(($(reads) - r0))"
}
state() {
	local i
	for i in $(seq 1 $NS); do
		echo "s$i: $(dmsetup status sh-s$i | cut -d' ' -f4-) $(read_state /dev/mapper/sh-s$i 16)"
	done
}

# run STORE CHUNKS...: the writes, then each snapshot's status and data.
run() {
	setup "$@"
	writes
	state
	teardown
}

# run_fail STORE: three snapshots, the second on a COW that starts failing
# every I/O (a linear device reloaded as `error`) once the snapshots are up.
run_fail() {
	dd if=/tmp/base of=$O bs=1M oflag=direct 2>/dev/null
	dd if=/dev/zero of=$CE bs=64k count=1 oflag=direct 2>/dev/null
	echo "0 $CS linear $CE 0" | dmsetup create sh-ce || echo "SETUP FAILED: linear COW"
	origin_create sh-origin $O || echo "SETUP FAILED: origin"
	for i in 1 2 3; do
		c=$(cow $i); [ $i = 2 ] && c=/dev/mapper/sh-ce
		dd if=/dev/zero of=$c bs=64k count=1 oflag=direct 2>/dev/null
		snap_create sh-origin sh-s$i "0 $S snapshot $O $c $1 8" || echo "SETUP FAILED: snapshot $i"
	done
	NS=3
	dmsetup suspend sh-ce && echo "0 $CS error" | dmsetup load sh-ce && dmsetup resume sh-ce ||
		echo "SETUP FAILED: error table"
	writes >/dev/null
	dd if=/dev/mapper/sh-origin bs=4k count=1 skip=3 iflag=direct 2>/dev/null | md5sum >/tmp/first
	echo "origin took the writes: $(cmp -s /tmp/first /tmp/base.first && echo no || echo yes)"
	state
	teardown
	dmsetup remove sh-ce
}
dd if=/tmp/base bs=4k count=1 skip=3 2>/dev/null | md5sum >/tmp/base.first

# --- dm_snap_rs ----------------------------------------------------------------
must "dm_snap_rs loads" load_rs
run N 8 8 8 8 >/tmp/rs.n4 2>&1
expect_eq "4 snapshots (N, chunk 4 KiB): one origin read per first write" \
	"origin reads: 16" "$(grep 'origin reads' /tmp/rs.n4)"
expect_eq "4 snapshots (N): every snapshot keeps the data of its moment" \
	"4" "$(grep -c " $BASE\$" /tmp/rs.n4)"
run P 8 8 8 8 >/tmp/rs.p4 2>&1
expect_eq "4 snapshots (P): one origin read per first write" \
	"origin reads: 16" "$(grep 'origin reads' /tmp/rs.p4)"
run N 8 8 16 16 >/tmp/rs.mixed 2>&1
expect_eq "chunk sizes 4 KiB x2 and 8 KiB x2: one read per chunk size" \
	"origin reads: 32" "$(grep 'origin reads' /tmp/rs.mixed)"
# The quick tier leaves out 10 snapshots (8 in one copy, then 2 more).
if ! quick; then
run N 8 8 8 8 8 8 8 8 8 8 >/tmp/rs.n10 2>&1
expect_eq "10 snapshots: 8 destinations in one copy, then the other 2" \
	"origin reads: 32" "$(grep 'origin reads' /tmp/rs.n10)"
expect_eq "10 snapshots: every snapshot keeps the data of its moment" \
	"10" "$(grep -c " $BASE\$" /tmp/rs.n10)"
fi
run_fail P >/tmp/rs.failp 2>&1
expect_eq "a COW failing under a shared copy invalidates its snapshot only" \
	"s1: valid s2: Invalid s3: valid" \
	"$(sed -n 's/^\(s[0-9]\): .*Invalid.*/\1: Invalid/p; s/^\(s[0-9]\): [0-9].*/\1: valid/p' /tmp/rs.failp | tr '\n' ' ' | sed 's/ $//')"
expect_eq "the other snapshots keep their data" "2" "$(grep -c " $BASE\$" /tmp/rs.failp)"
run_fail N >/tmp/rs.failn 2>&1

# Persistent COWs filled by shared copies under concurrent writes: each must
# hold its data now, and again when the C driver reads the COW.
setup P 8 8 8 8 >/tmp/rs.fio 2>&1
fio --name=w --filename=/dev/mapper/sh-origin --rw=randwrite --bs=4k --size=12M --direct=1 \
	--ioengine=libaio --iodepth=16 --numjobs=2 --time_based --runtime=3 >/dev/null 2>&1
check "fio on the origin of 4 persistent snapshots" test $? -eq 0
state >>/tmp/rs.fio
expect_eq "after fio every snapshot keeps the data of its moment" "4" "$(grep -c " $BASE\$" /tmp/rs.fio)"
for i in 1 2 3 4; do dmsetup remove sh-s$i; done
dmsetup remove sh-origin
must "the C driver loads (to read the COWs)" load_c
origin_create sh-origin $O
for i in 1 2 3 4; do
	dmesg -c >/dev/null
	snap_create sh-origin sh-s$i "0 $S snapshot $O $(cow $i) P 8" ||
		echo "SETUP FAILED: C reads COW $i: $(dmesg | grep -i snap | tail -2)"
done
NS=4
state >/tmp/c.fio 2>&1
teardown
expect_eq "the C driver reads the 4 COWs dm_snap_rs filled under fio: the same data" \
	"4" "$(grep -c " $BASE\$" /tmp/c.fio)"
grep -v " $BASE\$" /tmp/c.fio | sed 's/^/# /'
# A snapshot removed while its part of a shared copy completes on the
# other snapshot's kcopyd worker: the completion holds the removed
# snapshot's state for 3 s after completing its exception (a test knob),
# long after its target is gone. KASAN saw the state's last reference put
# the table devices against the freed dm_target (issue 27, item 1).
must "dm_snap_rs loads with test_copy_done_delay_ms=3000" load_rs_params test_copy_done_delay_ms=3000
setup N 8 8 >/tmp/rs.uaf 2>&1
dd if=/tmp/sh.rnd of=/dev/mapper/sh-origin bs=4k count=1 seek=5 oflag=direct 2>/dev/null &
w=$!
sleep 0.5
dmsetup remove sh-s2; r2=$?
wait $w; rw=$?
sleep 7   # both completions let go (3 s each)
dmsetup remove sh-s1; dmsetup remove sh-origin
expect_eq "a snapshot removed while its shared copy completes on another's worker (no KASAN report)" \
	"removed 0, write 0" "removed $r2, write $rw"
must "dm_snap_rs loads with snapshot_shared_copy=0" load_rs_params snapshot_shared_copy=0
run N 8 8 8 8 >/tmp/rs.off 2>&1
expect_eq "snapshot_shared_copy=0: one origin read per snapshot, as upstream" \
	"origin reads: 64" "$(grep 'origin reads' /tmp/rs.off)"

# --- the C driver: same steps -------------------------------------------------
must "the C driver loads" load_c
run N 8 8 8 8 >/tmp/c.n4 2>&1
expect_eq "the C driver reads the origin once per snapshot (the count means something)" \
	"origin reads: 64" "$(grep 'origin reads' /tmp/c.n4)"
# Everything but the read count must match, line by line.
run P 8 8 8 8 >/tmp/c.p4 2>&1
run N 8 8 16 16 >/tmp/c.mixed 2>&1
quick || run N 8 8 8 8 8 8 8 8 8 8 >/tmp/c.n10 2>&1
run_fail P >/tmp/c.failp 2>&1
run_fail N >/tmp/c.failn 2>&1
cases="n4 p4 mixed n10 failp failn"
quick && cases="n4 p4 mixed failp failn"
for t in $cases; do
	grep -v 'origin reads' /tmp/c.$t >/tmp/c.$t.cmp; grep -v 'origin reads' /tmp/rs.$t >/tmp/rs.$t.cmp
	same_output "statuses and data as the C driver's ($t)" /tmp/c.$t.cmp /tmp/rs.$t.cmp
done
unload_drivers
for i in 1 2 3 4 5 6 7 8 9 10; do nullb_remove sh_c$i; done
nullb_remove sh_ce; nullb_remove sh_o
summary
