#!/bin/sh
# The demo run inside the VM (scripts/demo): what a user would type and see.
. /payload/tests/vm/lib.sh
run() { echo; echo "# $*"; "$@"; }
md5() { dd if="$1" bs=1M count="$2" iflag=direct 2>/dev/null | md5sum | cut -c1-32; }
set -e
echo "== dm_snap_rs demo: $(uname -r), $(nproc) CPUs =="
run insmod "$KO"
run dmsetup targets
NB=$(nullb_create nb_demo 128)
COW=$(nullb_create nb_demo_cow 64)
S=$(blockdev --getsz "$NB")
echo; echo "# null_blk disks: origin $NB ($S sectors), COW $COW; memory-backed"
dd if=/dev/urandom of="$NB" bs=1M count=128 oflag=direct 2>/dev/null
BEFORE=$(md5 "$NB" 64)
run sh -c "echo '0 $S snapshot-origin $NB' | dmsetup create demo-origin"
echo; echo "# take a snapshot: suspend the origin, load the snapshot, resume"
dmsetup suspend demo-origin
run sh -c "echo '0 $S snapshot $NB $COW N 16' | dmsetup create demo-snap"
dmsetup resume demo-origin
run dmsetup ls
run dmsetup table
run dmsetup status
echo; echo "# fio: 4 KiB random writes with verification to the origin, and to the snapshot"
fio --name=origin --filename=/dev/mapper/demo-origin --rw=randwrite --bs=4k --size=16M \
	--direct=1 --ioengine=libaio --iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1 \
	--output-format=terse --terse-version=3 >/tmp/fio.o
awk -F';' '{printf "  origin: write %s IOPS, errors %s\n", $49, $5}' /tmp/fio.o
fio --name=snap --filename=/dev/mapper/demo-snap --rw=randwrite --bs=4k --size=8M --offset=64M \
	--direct=1 --ioengine=libaio --iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1 \
	--output-format=terse --terse-version=3 >/tmp/fio.s
awk -F';' '{printf "  snapshot: write %s IOPS, errors %s\n", $49, $5}' /tmp/fio.s
run dmsetup status demo-snap
echo; echo "# first 64 MiB (the snapshot wrote only above 64 MiB):"
echo "  origin before the snapshot: $BEFORE"
echo "  snapshot now:               $(md5 /dev/mapper/demo-snap 64)   <- unchanged"
echo "  origin now:                 $(md5 /dev/mapper/demo-origin 64)   <- fio's writes"
run dmsetup remove demo-snap

echo; echo "# roll back: a persistent snapshot, the origin overwritten, then snapshot-merge"
echo "# (what lvconvert --merge loads: the merge table on the origin device, an error"
echo "#  table on the snapshot's)"
dd if=/dev/zero of="$COW" bs=1M count=1 oflag=direct 2>/dev/null
dmsetup suspend demo-origin
run sh -c "echo '0 $S snapshot $NB $COW P 16' | dmsetup create demo-snap"
dmsetup resume demo-origin
SNAP=$(md5 /dev/mapper/demo-snap 64)
fio --name=over --filename=/dev/mapper/demo-origin --rw=randwrite --bs=4k --size=64M --number_ios=1000 \
	--direct=1 --ioengine=libaio --iodepth=16 --eta=never --output=/dev/null
run dmsetup status demo-snap
echo "  snapshot: $SNAP   origin now: $(md5 /dev/mapper/demo-origin 64)"
dmsetup suspend demo-snap; dmsetup suspend demo-origin
echo "0 $S snapshot-merge $NB $COW P 16" | dmsetup reload demo-origin
echo "0 $S error" | dmsetup reload demo-snap
run dmsetup resume demo-origin
dmsetup resume demo-snap
run dmsetup table demo-origin
echo; echo "# status of the merging origin: <allocated>/<total> <metadata>, shrinking to allocated == metadata"
i=0
while [ $i -lt 600 ]; do
	st=$(dmsetup status demo-origin | cut -d' ' -f4-)
	[ $((i % 4)) -eq 0 ] && echo "  $st"
	[ "${st%%/*}" = "${st##* }" ] && break
	sleep 0.25; i=$((i + 1))
done
echo "  $st   <- merged"
echo "  origin after the merge: $(md5 /dev/mapper/demo-origin 64)   <- the snapshot's data again"
[ "$(md5 /dev/mapper/demo-origin 64)" = "$SNAP" ] && echo "  rolled back: origin == snapshot"

echo; echo "# the module cannot go while tables use it:"
rmmod dm_snap_rs || true
run dmsetup remove demo-snap
run dmsetup remove demo-origin
run rmmod dm_snap_rs
nullb_remove nb_demo; nullb_remove nb_demo_cow
echo; echo "== demo done =="
