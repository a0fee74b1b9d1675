#!/bin/sh
# Guest half of scripts/crash-test. /dev/vda is the origin, /dev/vdb the
# persistent COW, both on disk images that outlive the guest.
#   guest.sh init              zero the COW, take the snapshot, record the
#                              origin's checksum
#   guest.sh cycle N [EXPECT]  reactivate; verify the blocks listed in EXPECT
#                              (scripts/crash-expect.py) and that the snapshot
#                              still has the origin as it was; dm-snap-cow
#                              check; then write until killed (cycle N)
#   guest.sh merge-init        as init, then 2048 scattered origin writes (so
#                              2048 exceptions to merge); prints SNAPBLK
#                              "<64K block> <md5>" of the snapshot
#   guest.sh merge-cycle N EXPECT [BLOCKS]  a snapshot-merge table on the COW
#                              (the merge resumes, as after a reboot); verify
#                              as cycle does, through the merging device; then
#                              write until killed, printing the merge status.
#                              Last boot (BLOCKS given): wait for the end of the
#                              merge, then check on the bare origin every
#                              acknowledged write, every untouched 64K block
#                              against the snapshot, and that no exception is
#                              left in the COW
. /payload/tests/vm/lib.sh
TOOL=/payload/files/dm-snap-cow
# Data and write positions follow DMSR_SEED and the cycle (scripts/crash-test
# prints the seed), so a failing run can be replayed.
RSEED=$(( (${DMSR_SEED:-1} * 1000003 + 0x$(echo "$*" | md5sum | cut -c1-8)) % 4294967296 ))
insmod $KO || exit 1
S=$(blockdev --getsz /dev/vda)
HALF=$((S / 2))
activate() {
	origin_create c-origin /dev/vda || return 1
	snap_create c-origin c-snap "0 $S snapshot /dev/vda /dev/vdb P 8"
}
block() { yes "blk $1 cycle $2 " | head -c 4096; }
half_sum() { dd if=$1 bs=64k count=$((HALF / 128)) iflag=direct 2>/dev/null | md5sum | cut -c1-32; }

# verify_acks EXPECT DEVICE-PREFIX: the positions scripts/crash-expect.py
# lists, each with the md5 of its last acknowledged content and of the
# one that may have been in flight at the kill (either is right); adds
# the losses to $bad.
verify_acks() {
	n=0
	[ -f "$1" ] || return 0
	# One dm-snap-cow process per device, not a dd per block; a block it
	# could not read has no checksum and counts as lost.
	: >/tmp/got
	for dev in $(cut -d' ' -f1 "$1" | sort -u); do
		$TOOL md5 "$2$dev" 4096 $(awk -v d="$dev" '$1 == d {print $2}' "$1") | sed "s/^/$dev /" >>/tmp/got
	done
	awk 'NR == FNR {got[$1 " " $2] = $3; next}
		{n++; g = got[$1 " " $2]
		 if (g == "" || (g != $3 && g != $4)) {lost++; print "VERIFY-FAIL " $1 " block " $2 ": acknowledged write lost"}}
		END {print "COUNT", n + 0, lost + 0}' /tmp/got "$1" >/tmp/verify
	grep -v '^COUNT ' /tmp/verify
	c=$(sed -n 's/^COUNT //p' /tmp/verify)
	[ -n "$c" ] || c="0 1"
	n=${c% *} bad=$((bad + ${c#* }))
	echo "VERIFY acknowledged writes on $2: $n checked, $bad lost so far"
}
splat_count() {
	dmesg | grep -cE 'WARNING:|BUG:|Oops|KASAN|possible (circular|recursive) locking|sleeping function called from invalid context'
}
merge_status() { dmsetup status c-merge | cut -d' ' -f4-; }
merge_done() { st=$(merge_status); case $st in */*\ *) [ "${st%%/*}" = "${st##* }" ] ;; *) false ;; esac; }

case $1 in
merge-init)
	rand_data $((S / 2048)) | dd of=/dev/vda bs=1M iflag=fullblock oflag=direct 2>/dev/null
	dd if=/dev/zero of=/dev/vdb bs=1M count=1 oflag=direct 2>/dev/null
	activate || exit 1
	fio --name=x --filename=/dev/mapper/c-origin --rw=randwrite --bs=4k --size=$((S / 2048))M \
		--number_ios=2048 --direct=1 --ioengine=libaio --iodepth=8 --output=/dev/null || exit 1
	echo "INIT-STATUS $(dmsetup status c-snap)"
	# Every 64K block's checksum, in one process.
	$TOOL md5 /dev/mapper/c-snap 65536 | sed 's/^/SNAPBLK /'
	dmsetup remove c-snap; dmsetup remove c-origin
	exit 0
	;;
merge-cycle)
	N=$2 bad=0 COWDEV=/dev/vdb
	# On a fast disk the merge ends in about a second, before any kill:
	# the boots to be killed see the COW through dm-delay (10 ms per I/O,
	# flushes passed down), so it takes about a minute and the kills land
	# in the middle; the last boot merges at full speed.
	if [ -z "$4" ]; then
		modprobe dm-delay
		echo "0 $(blockdev --getsz /dev/vdb) delay /dev/vdb 0 10" | dmsetup create c-cowd ||
			{ echo "VERIFY-FAIL dm-delay"; exit 1; }
		COWDEV=/dev/mapper/c-cowd
	fi
	echo "0 $S snapshot-merge /dev/vda $COWDEV P 8" | dmsetup create c-merge || { echo "VERIFY-FAIL merge table"; exit 1; }
	echo "STATUS $(merge_status)"
	verify_acks "$3" /dev/mapper/c-
	if [ -n "$4" ]; then   # last boot: the merge to its end, then the bare origin
		i=0
		lim=$(scaled 1200); while ! merge_done && [ $i -lt $lim ]; do sleep 0.5; i=$((i + 1)); done
		merge_done && echo "VERIFY-OK merge finished: $(merge_status)" ||
			{ echo "VERIFY-FAIL merge not finished: $(merge_status)"; bad=$((bad + 1)); }
		dmsetup remove c-merge
		sed 's/^merge /vda /' "$3" >/tmp/expect.vda
		verify_acks /tmp/expect.vda /dev/
		$TOOL md5 /dev/vda 65536 $(cut -d' ' -f1 "$4") >/tmp/now
		awk 'NR == FNR {got[$1] = $2; next}
			{n++; if (got[$1] == "" || got[$1] != $2) {d++; print "VERIFY-FAIL origin 64K block " $1 " is not the snapshot\047s"}}
			END {print "COUNT", n + 0, d + 0}' /tmp/now "$4" >/tmp/verify
		grep -v '^COUNT ' /tmp/verify
		c=$(sed -n 's/^COUNT //p' /tmp/verify)
		[ -n "$c" ] || c="0 1"
		nblk=${c% *} nb=${c#* }
		bad=$((bad + nb))
		echo "VERIFY untouched 64K blocks of the origin: $nblk checked against the snapshot, $nb differ"
		left=$($TOOL dump /dev/vdb | grep -c '^area')
		[ "$left" = 0 ] && echo "VERIFY-OK no exception left in the COW" ||
			{ echo "VERIFY-FAIL $left exceptions left in the COW"; bad=$((bad + 1)); }
		$TOOL check /dev/vdb && echo "VERIFY-OK dm-snap-cow check" || { echo "VERIFY-FAIL dm-snap-cow check"; bad=$((bad + 1)); }
	fi
	splats=$(splat_count)
	echo "SPLATS $splats"
	[ $bad -eq 0 ] && [ "$splats" -eq 0 ] && echo "CYCLE-VERIFIED" || echo "CYCLE-FAILED"
	[ -n "$4" ] && { [ $bad -eq 0 ] && [ "$splats" -eq 0 ]; exit $?; }
	echo "WORKLOAD-GO"
	i=0
	while :; do
		i=$((i + 1))
		[ $((i % 4)) -eq 1 ] && echo "MERGE $(merge_status)"
		rand_int; r=$R
		pos=$(( r % (S / 8) ))
		echo "TRY merge $pos $N"
		block $pos $N | dd of=/dev/mapper/c-merge bs=4k seek=$pos count=1 oflag=direct conv=fsync 2>/dev/null &&
			echo "ACK merge $pos $N"
	done
	;;
init)
	rand_data $((S / 2048)) | dd of=/dev/vda bs=1M iflag=fullblock oflag=direct 2>/dev/null
	dd if=/dev/zero of=/dev/vdb bs=1M count=1 oflag=direct 2>/dev/null
	activate || exit 1
	echo "ORIGIN-SUM $(half_sum /dev/mapper/c-snap)"
	dmsetup remove c-snap; dmsetup remove c-origin
	exit 0
	;;
cycle)
	N=$2 ACKS=$3 WANT=$(cat /payload/files/origin.sum)
	activate || { echo "VERIFY-FAIL reactivation"; exit 1; }
	echo "STATUS $(dmsetup status c-snap)"
	bad=0
	verify_acks "$ACKS" /dev/mapper/c-
	got=$(half_sum /dev/mapper/c-snap)
	[ "$got" = "$WANT" ] && echo "VERIFY-OK snapshot lower half as at snapshot time" ||
		{ echo "VERIFY-FAIL snapshot lower half $got, want $WANT"; bad=$((bad + 1)); }
	[ "$(dmsetup status c-snap | cut -d' ' -f4)" = Invalid ] && { echo "VERIFY-FAIL snapshot invalid"; bad=$((bad + 1)); }
	dmsetup suspend c-snap; dmsetup suspend c-origin
	if $TOOL check /dev/vdb; then echo "VERIFY-OK dm-snap-cow check"; else echo "VERIFY-FAIL dm-snap-cow check"; bad=$((bad + 1)); fi
	dmsetup resume c-origin; dmsetup resume c-snap
	splats=$(splat_count)
	echo "SPLATS $splats"
	[ $bad -eq 0 ] && [ "$splats" -eq 0 ] && echo "CYCLE-VERIFIED" || echo "CYCLE-FAILED"
	if [ -n "$4" ]; then   # last verification only
		[ $bad -eq 0 ] && [ "$splats" -eq 0 ]; exit $?
	fi
	echo "WORKLOAD-GO"
	# Origin writes anywhere, snapshot writes in the upper half only, each
	# acknowledged after it is durable (O_DIRECT + fsync -> PREFLUSH).
	i=0
	while :; do
		i=$((i + 1))
		rand_int; r=$R
		if [ $((i % 3)) -eq 0 ]; then
			dev=snap pos=$(( HALF / 8 + r % (HALF / 8) ))
		else
			dev=origin pos=$(( r % (S / 8) ))
		fi
		echo "TRY $dev $pos $N"
		block $pos $N | dd of=/dev/mapper/c-$dev bs=4k seek=$pos count=1 oflag=direct conv=fsync 2>/dev/null &&
			echo "ACK $dev $pos $N"
	done
	;;
esac
