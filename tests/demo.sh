#!/bin/sh
# The demo run inside the VM (scripts/demo): what a user would type and see.
. /payload/tests/vm/lib.sh
run() { echo; echo "# $*"; "$@"; }
set -e
echo "== dm_snap_rs demo: $(uname -r), $(nproc) CPUs =="
run insmod "$KO"
run dmsetup targets
NB=$(nullb_create nb_demo 256)
echo; echo "# null_blk disk $NB: $(blockdev --getsz "$NB") sectors, memory-backed"
run sh -c "echo '0 $(blockdev --getsz "$NB") snapshot-origin $NB' | dmsetup create demo-origin"
run dmsetup ls --target snapshot-origin
run dmsetup table demo-origin
run dmsetup status demo-origin
run dmsetup info demo-origin
echo; echo "# fio: 4 KiB random writes with verification through /dev/mapper/demo-origin"
fio --name=demo --filename=/dev/mapper/demo-origin --rw=randwrite --bs=4k --size=32M \
	--direct=1 --ioengine=libaio --iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1 \
	--output-format=terse --terse-version=3 >/tmp/fio.terse
awk -F';' '{printf "  write: %s IOPS, %s KiB/s; verified read: %s IOPS; errors: %s\n", $49, $48, $8, $5}' /tmp/fio.terse
echo; echo "# the same bytes, read back from the null_blk disk underneath"
dd if=/dev/mapper/demo-origin bs=1M count=32 iflag=direct 2>/dev/null | md5sum | sed 's/-/via dm-snap-rs/'
dd if="$NB" bs=1M count=32 iflag=direct 2>/dev/null | md5sum | sed 's/-/via null_blk/'
echo; echo "# the module cannot go while the table uses it:"
rmmod dm_snap_rs || true
run dmsetup remove demo-origin
run rmmod dm_snap_rs
nullb_remove nb_demo
echo; echo "== demo done =="
