#!/bin/sh
# A deterministic random workload on one origin and up to 4 snapshots
# (store $STORE, default N), for differential testing against the C driver:
#   workload.sh CHUNK SEED OUT
# The loaded driver (ours or upstream's) serves it; OUT gets every read's
# checksum, the final checksums of the origin and each snapshot, and their
# status and table lines. Same CHUNK and SEED give the same operations.
# With a persistent store (P, PO), half way through snapshot 1 is merged
# into the origin as lvm2 starts it (snapshot-merge on the origin device,
# error on the snapshot's): the rest of the origin I/O runs during the
# merge, snapshot 1 gets no more I/O and no snapshot is added; the end
# waits for the merge and records its status and table.
# Exits non-zero (with the reason in OUT) if a set-up step fails; OUT is
# emptied first, so a failed run never leaves an earlier run's results.
. /payload/tests/vm/lib.sh
CHUNK=$1 SEED=$2 OUT=$3 STORE=${STORE:-N}
OMB=24 CMB=8 NOPS=${NOPS:-120}
: >"$OUT" || exit 1
die() { echo "SETUP FAILED: $*" >>"$OUT"; exit 1; }
O=$(nullb_create wl_o $OMB) && [ -b "$O" ] || die "null_blk origin"
for i in 1 2 3 4; do nullb_create wl_c$i $CMB >/dev/null && [ -b /dev/wl_c$i ] || die "null_blk COW $i"; done
[ -f /tmp/wl.pat ] || pattern /tmp/wl.pat 4
dd if=/tmp/wl.pat of=$O bs=1M count=4 oflag=direct 2>/dev/null || die "origin data"
SECT=$(blockdev --getsz $O)
origin_create wl-origin $O || die "create wl-origin"
nsnap=0
# Operation list: awk's generator, seeded, identical for both drivers.
awk -v seed="$SEED" -v n="$NOPS" -v sect="$SECT" -v store="$STORE" 'BEGIN {
	srand(seed)
	print "snap"
	for (i = 0; i < n; i++) {
		if (i == int(n / 2) && store != "N") print "merge"   # no rand() drawn
		r = rand()
		len = int(rand() * 64) + 1            # 1..64 sectors
		if (rand() < 0.15) { len = 1; k = int(rand() * 11); while (k-- > 0) len *= 2 }   # up to 1024
		off = int(rand() * (sect - len))
		if (rand() < 0.5) off = off - off % 8
		pat = int(rand() * 4096)
		s = int(rand() * 4) + 1
		if (r < 0.05) print "snap"
		else if (r < 0.45) print "ow", off, len, pat
		else if (r < 0.70) print "sw", s, off, len, pat
		else print "sr", s, off, len
	}
}' >/tmp/wl.ops || exit 1
[ "$(wc -l </tmp/wl.ops)" -gt "$NOPS" ] || { echo "workload generation failed" >>"$OUT"; exit 1; }
merging=0
while read -r op a b c d; do
	case $op in
	merge)
		merging=1
		echo "merge of s1 with $nsnap snapshots" >>"$OUT"
		dmsetup suspend wl-s1 && dmsetup suspend wl-origin || die "suspend for the merge"
		echo "0 $SECT snapshot-merge $O /dev/wl_c1 $STORE $CHUNK" | dmsetup reload wl-origin || die "merge table"
		echo "0 $SECT error" | dmsetup reload wl-s1 || die "error table"
		dmsetup resume wl-origin && dmsetup resume wl-s1 || die "resume for the merge"
		;;
	snap)
		[ $nsnap -ge 4 ] || [ $merging = 1 ] && continue
		nsnap=$((nsnap + 1))
		dd if=/dev/zero of=/dev/wl_c$nsnap bs=4k count=1 oflag=direct 2>/dev/null || die "zero COW $nsnap"
		snap_create wl-origin wl-s$nsnap "0 $SECT snapshot $O /dev/wl_c$nsnap $STORE $CHUNK" >>"$OUT" ||
			die "snapshot wl-s$nsnap"
		;;
	ow) dd if=/tmp/wl.pat of=/dev/mapper/wl-origin bs=512 seek=$a count=$b skip=$c oflag=direct 2>/dev/null ||
		echo "ow $a $b: error" >>"$OUT" ;;
	sw) [ $a -le $nsnap ] && [ "$merging$a" != 11 ] || continue
		dd if=/tmp/wl.pat of=/dev/mapper/wl-s$a bs=512 seek=$b count=$c skip=$d oflag=direct 2>/dev/null ||
			echo "sw $a $b $c: error" >>"$OUT" ;;
	sr) [ $a -le $nsnap ] && [ "$merging$a" != 11 ] || continue
		# A failed read is recorded as such (the same EIO on both drivers
		# is parity), never as the checksum of nothing.
		rm -f /tmp/wl.rf
		r=$({ dd if=/dev/mapper/wl-s$a bs=512 skip=$b count=$c iflag=direct 2>/dev/null || echo >/tmp/wl.rf; } | md5sum | cut -c1-12)
		[ -e /tmp/wl.rf ] && r=read-error
		echo "sr $a $b $c $r" >>"$OUT" ;;
	esac
done </tmp/wl.ops
if [ $merging = 1 ]; then
	i=0
	while [ $i -lt $(scaled 300) ]; do
		st=$(dmsetup status wl-origin | cut -d' ' -f4-)
		case $st in */*\ *) [ "${st%%/*}" = "${st##* }" ] && break ;; *) break ;; esac
		sleep 0.2; i=$((i + 1))
	done
	echo "merge done: $st" >>"$OUT"
	echo "merge table: $(dmsetup table wl-origin | cut -d' ' -f3,6-)" >>"$OUT"
fi
echo "origin $(dd if=/dev/mapper/wl-origin bs=1M iflag=direct 2>/dev/null | md5sum | cut -c1-32)" >>"$OUT"
i=$((1 + merging))
while [ $i -le $nsnap ]; do
	echo "s$i $(dd if=/dev/mapper/wl-s$i bs=1M iflag=direct 2>/dev/null | md5sum | cut -c1-32)" >>"$OUT"
	echo "s$i status: $(dmsetup status wl-s$i)" >>"$OUT"
	echo "s$i table: $(dmsetup table wl-s$i)" >>"$OUT"
	i=$((i + 1))
done
echo "origin status: $(dmsetup status wl-origin)" >>"$OUT"
i=$nsnap
while [ $i -ge 1 ]; do dmsetup remove wl-s$i || die "remove wl-s$i"; i=$((i - 1)); done
dmsetup remove wl-origin || die "remove wl-origin"
nullb_remove wl_o; for i in 1 2 3 4; do nullb_remove wl_c$i; done
[ $nsnap -ge 1 ] || die "no snapshot was taken"
