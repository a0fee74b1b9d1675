# Helpers for the in-VM selftests (sourced). KTAP output: each test file is
# one suite; `ok`/`fail` print result lines, `summary` the plan and totals.

T_N=0 T_PASS=0 T_FAIL=0
DM=/dev/mapper
KO=${DMSR_KO:-/payload/dm_snap_rs.ko}

ktap_begin() { echo "KTAP version 1"; echo "# suite: $1"; }
ok() { T_N=$((T_N + 1)); T_PASS=$((T_PASS + 1)); echo "ok $T_N $1"; }
fail() {
	T_N=$((T_N + 1)); T_FAIL=$((T_FAIL + 1)); echo "not ok $T_N $1"
	shift; for l in "$@"; do echo "# $l"; done
}
# check NAME CMD...: passes when CMD succeeds.
check() { local n=$1; shift; if out=$("$@" 2>&1); then ok "$n"; else fail "$n" "command: $*" "$out"; fi; }
# expect_eq NAME WANT GOT
expect_eq() {
	if [ "$2" = "$3" ]; then ok "$1"; else fail "$1" "want: '$2'" "got:  '$3'"; fi
}
# need_blk NAME DEV: the suite cannot go on without block device DEV.
need_blk() {
	if [ -b "$2" ]; then ok "$1"; else fail "$1" "$2 is not a block device: bailing out"; summary; exit 1; fi
}
summary() {
	echo "1..$T_N"
	echo "# totals: pass:$T_PASS fail:$T_FAIL"
	[ "$T_FAIL" -eq 0 ]
}

# Drivers: ours and upstream's register the same target names, so exactly one
# is loaded at a time.
load_rs() { unload_drivers; insmod "$KO"; }
load_c() { unload_drivers; modprobe dm-snapshot; }
unload_drivers() {
	rmmod dm_snap_rs 2>/dev/null
	rmmod dm_snapshot 2>/dev/null
	! grep -qE '^(dm_snap_rs|dm_snapshot) ' /proc/modules
}

# null_blk disks, memory-backed so data written reads back: nullb_create
# NAME SIZE_MB [BLOCKSIZE] prints the device node.
nullb_create() {
	modprobe null_blk nr_devices=0 >/dev/null 2>&1 || true
	local d=/sys/kernel/config/nullb/$1
	mkdir "$d" || return 1
	echo "$2" >"$d/size"
	echo "${3:-512}" >"$d/blocksize"
	echo 1 >"$d/memory_backed"
	echo 1 >"$d/discard"
	echo 2 >"$d/queue_mode"
	echo 1 >"$d/power"
	# null_blk names a configfs-made disk after its directory.
	local i=0; while [ ! -b "/dev/$1" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
	echo "/dev/$1"
}
nullb_remove() {
	local d=/sys/kernel/config/nullb/$1
	[ -d "$d" ] || return 0
	echo 0 >"$d/power"; rmdir "$d"
}

# dm_error NAME TABLE: tries to create NAME and prints the ti->error that dm
# logged ("<target>: <message> (<errno>)"), or "created" if it worked.
dm_error() {
	dmesg -c >/dev/null
	if echo "$2" | dmsetup create "$1" 2>/dev/null; then
		dmsetup remove "$1"; echo created; return
	fi
	dmsetup remove "$1" 2>/dev/null
	dmesg | sed -n 's/.*device-mapper: table: [0-9]*:[0-9]*: //p' | tail -1
}

# Data helpers: a deterministic 4 KiB-aligned pattern file of N MiB.
pattern() { dd if=/dev/urandom of="$1" bs=1M count="$2" 2>/dev/null; }
sum() { dd if="$1" bs=1M count="$2" 2>/dev/null | md5sum | cut -d' ' -f1; }
