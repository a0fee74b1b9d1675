# Helpers for the in-VM selftests (sourced). KTAP output: each test file is
# one suite that states its plan first (`ktap_begin NAME FULL [QUICK]`:
# FULL result lines will follow, or QUICK in make check's quick tier,
# DMSR_TIER=quick; scripts/check reads the plan from the same line of the
# file and counts every result not printed as failed); `ok`/`fail` print
# result lines, each with the seconds since the suite began, `summary` the
# totals.
#
# Honesty rules the helpers hold to: a read that fails is MISSING, never a
# checksum (two failed reads must not compare equal); expect_eq fails on
# any MISSING value; a negative check (expect_status) first proves the
# tool under test exists and ran.

T_N=0 T_PASS=0 T_FAIL=0 T_PLAN=0 T_START=0
DM=/dev/mapper
KO=${DMSR_KO:-/payload/dm_snap_rs.ko}
TIER=${DMSR_TIER:-full}
# quick: true in make check's quick tier (suites run a smaller set there).
quick() { [ "$TIER" = quick ]; }
uptime_s() { cut -d. -f1 /proc/uptime; }

ktap_begin() {
	T_PLAN=$2
	quick && [ -n "${3:-}" ] && T_PLAN=$3
	T_START=$(uptime_s)
	# The suite's own stream of seeds: DMSR_SEED and the suite's name.
	RSEED=$(( (${DMSR_SEED:-1} * 1000003 + 0x$(echo "$1" | md5sum | cut -c1-8)) % 4294967296 ))
	echo "KTAP version 1"; echo "# suite: $1"; echo "# tier $TIER, DMSR_SEED=${DMSR_SEED:-unset}"; echo "1..$T_PLAN"
	# Marks the kernel log, so splats are told apart per suite.
	echo "dmsr-suite: $1" >/dev/kmsg 2>/dev/null
}
ok() { T_N=$((T_N + 1)); T_PASS=$((T_PASS + 1)); echo "ok $T_N $1 [$(($(uptime_s) - T_START))s]"; }
fail() {
	T_N=$((T_N + 1)); T_FAIL=$((T_FAIL + 1)); echo "not ok $T_N $1 [$(($(uptime_s) - T_START))s]"
	shift; for l in "$@"; do echo "# $l"; done
}

# scaled N: an in-guest wait (seconds, or polling steps), stretched like the suite's time limit
# by how much slower this guest booted than the reference (REF_UPTIME:
# the kernel's uptime when /init starts the command there).
REF_UPTIME=30
scaled() {
	local b; b=$(cat /tmp/dmsr.boot_uptime 2>/dev/null || echo $REF_UPTIME)
	[ "$b" -gt $REF_UPTIME ] || b=$REF_UPTIME
	echo $(($1 * b / REF_UPTIME))
}
# check NAME CMD...: passes when CMD succeeds.
check() { local n=$1; shift; if out=$("$@" 2>&1); then ok "$n"; else fail "$n" "command: $*" "$out"; fi; }
# expect_eq NAME WANT GOT: fails on any MISSING in either value (a failed
# read or step is never a match, not even with another one).
expect_eq() {
	case "$2 $3" in *MISSING*) fail "$1" "a value is MISSING (a failed read or step)" "want: '$2'" "got:  '$3'"; return ;; esac
	if [ "$2" = "$3" ]; then ok "$1"; else fail "$1" "want: '$2'" "got:  '$3'"; fi
}
# expect_status NAME STATUS CMD...: a negative check: CMD must exist and
# exit with exactly STATUS (a tool that is missing, crashed or killed
# exits 126, 127 or 128+N, which is not a refusal).
expect_status() {
	local n=$1 want=$2 rc
	shift 2
	if ! command -v "$1" >/dev/null 2>&1; then fail "$n" "$1: not found: nothing was tested"; return; fi
	"$@" >/tmp/.es.out 2>&1; rc=$?
	if [ $rc -eq "$want" ]; then ok "$n"; else fail "$n" "command: $*" "status $rc, want $want" "$(tail -3 /tmp/.es.out)"; fi
}
# expect_parity NAME REF GOT: GOT (usually dm_snap_rs's) equals REF (the C
# driver's, or an earlier state), which must be a real value: an empty or
# MISSING reference means a broken step, not a match.
expect_parity() {
	case $2 in
	"" | MISSING*) fail "$1" "the reference value is '$2': nothing to compare" ;;
	*) expect_eq "$1" "$2" "$3" ;;
	esac
}
# expect_refused NAME C_ERROR RS_ERROR: a bad table refused by both with the
# same ti->error; the C driver must have refused it with a message.
expect_refused() {
	case $2 in
	"" | created) fail "$1" "the C driver did not refuse it with a message (got '$2')" ;;
	*) expect_eq "$1" "$2" "$3" ;;
	esac
}
# rmmod_refused NAME: rmmod dm_snap_rs fails and the module is still
# loaded (a module that was never loaded is not a refusal).
rmmod_refused() {
	if ! grep -q '^dm_snap_rs ' /proc/modules; then fail "$1" "dm_snap_rs is not loaded: nothing to refuse"
	elif rmmod dm_snap_rs 2>/dev/null; then fail "$1" "rmmod succeeded"
	elif grep -q '^dm_snap_rs ' /proc/modules; then ok "$1"
	else fail "$1" "rmmod failed, yet the module is gone"; fi
}
# need_blk NAME DEV: the suite cannot go on without block device DEV (the
# results it would have printed count as failed: see ktap_begin).
need_blk() {
	if [ -b "$2" ]; then ok "$1"; else fail "$1" "$2 is not a block device: bailing out"; summary; exit 1; fi
}
# must NAME CMD...: a set-up step the rest of the suite depends on; if it
# fails, the suite stops there (its remaining results count as failed).
must() {
	local n=$1; shift
	if ! out=$("$@" 2>&1); then
		fail "$n" "command: $*" "$out"; summary; exit 1
	fi
}
# snap_create ORIGIN SNAP TABLE: loads snapshot SNAP (TABLE) under the
# snapshot-origin device ORIGIN the way lvm2 does: suspend the origin,
# create, resume. Fails (status 1, the step named) if any step fails.
snap_create() {
	dmsetup suspend "$1" || { echo "suspend $1 failed"; return 1; }
	if ! echo "$3" | dmsetup create "$2"; then
		dmsetup resume "$1"; echo "create $2 failed"; return 1
	fi
	dmsetup resume "$1" || { echo "resume $1 failed"; return 1; }
}
# snap_setup ORIGIN SNAP TABLE [DEV]: the known data (/tmp/base) on DEV
# (default $O), a snapshot-origin ORIGIN over it and snapshot SNAP (TABLE)
# under that; each failed step prints "SETUP FAILED" (which same_output
# refuses as a reference) and returns 1.
snap_setup() {
	local dev=${4:-$O}
	dd if=/tmp/base of=$dev bs=1M oflag=direct 2>/dev/null || { echo "SETUP FAILED: origin data"; return 1; }
	origin_create "$1" $dev || { echo "SETUP FAILED: origin"; return 1; }
	snap_create "$1" "$2" "$3" || { echo "SETUP FAILED: snapshot"; return 1; }
}
# origin_create NAME DEV: a snapshot-origin device over DEV.
origin_create() {
	echo "0 $(blockdev --getsz "$2") snapshot-origin $2" | dmsetup create "$1"
}
summary() {
	[ "$T_N" -eq "$T_PLAN" ] || echo "# plan said $T_PLAN tests, $T_N ran"
	echo "# totals: pass:$T_PASS fail:$T_FAIL"
	[ "$T_FAIL" -eq 0 ] && [ "$T_N" -eq "$T_PLAN" ]
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
# logged ("<target>: <message> (<errno>)"), or "created" if it worked. Only
# the target's own line counts, not what dm logs after it (a table teardown
# warning). The log is cleared first; scripts/vm-run reads the kernel log as
# it is streamed, so clearing it hides nothing from the splat check.
# DM_ERROR_KEEP=1 leaves a created device in place.
dm_error() {
	dmesg -c >/dev/null
	if echo "$2" | dmsetup create "$1" 2>/dev/null; then
		[ "${DM_ERROR_KEEP:-}" = 1 ] || dmsetup remove "$1"
		echo created; return
	fi
	dmsetup remove "$1" 2>/dev/null
	dmesg | sed -n 's/.*device-mapper: table: [0-9]*:[0-9]*: \(snapshot[a-z-]*: \)/\1/p' | tail -1
}

# Data helpers. rand_data MiB: reproducible random bytes on stdout, from
# the suite's seed stream (each call the next seed); pattern FILE MiB: a
# file of them. Not to be called in $(...), which would not advance the
# stream.
RSEED=${RSEED:-${DMSR_SEED:-1}}
rand_data() {
	RSEED=$(( (RSEED * 6364136223846793005 + 1442695040888963407) & 0x7fffffffffffffff ))
	"${DMSR_FILES:-/payload/files}/dm-snap-cow" random "$RSEED" "$1"
}
pattern() { rand_data "$2" >"$1" || { echo "pattern $1: dm-snap-cow random failed" >&2; rm -f "$1"; return 1; }; }
# rand_int: a reproducible number from the same stream, in $R (not a
# subshell, so the stream advances).
rand_int() { RSEED=$(( (RSEED * 6364136223846793005 + 1442695040888963407) & 0x7fffffffffffffff )); R=$((RSEED >> 16)); }
# sum DEV MiB: the md5 of the first MiB MiB of DEV, or "MISSING(read DEV)"
# when the read fails.
sum() {
	local s f=/tmp/.sum.$$
	rm -f $f
	s=$({ dd if="$1" bs=1M count="$2" 2>/dev/null || echo >$f; } | md5sum | cut -d' ' -f1)
	if [ -e $f ]; then rm -f $f; echo "MISSING(read $1)"; else echo "$s"; fi
}

# read_state DEV MiB: as sum, but a failed read prints "read-error": for a
# device whose reads are expected to fail on both drivers (an invalidated
# snapshot), where the same failure is parity, not a missing value.
read_state() {
	local s
	s=$(sum "$1" "$2")
	case $s in MISSING*) echo read-error ;; *) echo "$s" ;; esac
}
# dm_state DEV MB: "<status> <md5 of the first MB MiB>" of /dev/mapper/DEV,
# or MISSING when the device or its status cannot be read.
dm_state() {
	local st
	[ -b "$DM/$1" ] && st=$(dmsetup status "$1") && [ -n "$st" ] || { echo MISSING; return; }
	echo "$st $(sum "$DM/$1" "$2")"
}
# same_output NAME C_FILE RS_FILE: the same steps gave the same output
# with both drivers, and the C driver's run was whole (no failed set-up
# step, no missing device).
same_output() {
	if [ ! -s "$2" ] || grep -qE 'SETUP FAILED|MISSING' "$2"; then
		fail "$1" "the C driver's run is empty or incomplete:" "$(cat "$2")"
	elif cmp -s "$2" "$3"; then ok "$1"
	else fail "$1" "$(diff "$2" "$3" | head -20)"; fi
}
# differential NAME CHUNK SEED: tests/vm/workload.sh (store $STORE) on the
# C driver, then on dm_snap_rs; both runs must finish their set-up and
# give identical reads, data, status and table lines.
differential() {
	local rc_c rc_rs
	# The quick tier: sequences of 60 operations instead of 120.
	quick && export NOPS=${NOPS:-60}
	load_c; sh /payload/tests/vm/workload.sh "$2" "$3" /tmp/wl.c; rc_c=$?
	load_rs; sh /payload/tests/vm/workload.sh "$2" "$3" /tmp/wl.rs; rc_rs=$?
	if [ $rc_c -ne 0 ] || [ ! -s /tmp/wl.c ]; then
		fail "$1: identical to the C driver" "the C driver's run failed (status $rc_c):" "$(tail -3 /tmp/wl.c)"
	elif [ $rc_rs -ne 0 ]; then
		fail "$1: identical to the C driver" "dm_snap_rs's run failed (status $rc_rs):" "$(tail -3 /tmp/wl.rs)"
	elif cmp -s /tmp/wl.c /tmp/wl.rs; then
		ok "$1: data, status and table identical to the C driver ($(grep -c '^sr' /tmp/wl.c) reads, $(grep -c '^sr .* read-error$' /tmp/wl.c) of them failing on both, $(grep -c '^s[0-9] status' /tmp/wl.c) snapshots)"
	else
		fail "$1: identical to the C driver" "$(diff /tmp/wl.c /tmp/wl.rs | head -20)"
	fi
}

# handover_steps ORIGIN SNAP LINE STATE: what both handover tests do to an
# active snapshot SNAP of origin ORIGIN (dm names): write to both, print
# "before:" (the output of the command STATE), suspend SNAP and reload it
# with table LINE on the same COW (a handover destination), print the
# inactive table and status and how many chunk-size warnings the reload
# logged, resume (the handover), print "after:" and the table, write to
# the origin again and print "more origin writes:". Run it under each
# driver and compare the outputs.
handover_steps() {
	local o=$1 s=$2 line=$3 st=$4 devs='s/[0-9]*:[0-9]* [0-9]*:[0-9]*/DEVS/'
	dd if=/tmp/base of=$DM/$o bs=64k skip=100 seek=3 count=20 oflag=direct 2>/dev/null
	dd if=/tmp/base of=$DM/$s bs=4k skip=999 seek=70 count=3 oflag=direct 2>/dev/null
	echo "before: $($st)"
	dmsetup suspend $s || echo "SETUP FAILED: suspend"
	dmesg -c >/dev/null
	echo "$line" | dmsetup reload $s || echo "SETUP FAILED: reload"
	echo "inactive table: $(dmsetup table --inactive $s | sed "$devs")"
	echo "inactive status: $(dmsetup status --inactive $s | cut -d' ' -f4-)"
	echo "chunk-size warnings for the destination: $(dmesg | grep -c 'chunk size')"
	dmsetup resume $s || echo "SETUP FAILED: resume"
	echo "after: $($st)"
	echo "table: $(dmsetup table $s | sed "$devs")"
	dd if=/tmp/base of=$DM/$o bs=64k skip=200 seek=30 count=10 oflag=direct 2>/dev/null
	echo "more origin writes: $($st)"
}

# suite_disks PREFIX ORIGIN_MB COW_MB: memory-backed null_blk disks
# PREFIX_o and PREFIX_c as $O and $C (one result: the suite stops without
# them), $S the origin's size in sectors, /tmp/base ORIGIN_MB MiB of random
# data, and $TOOL the dm-snap-cow tool (scripts/check ships it).
suite_disks() {
	O=$(nullb_create $1_o $2); C=$(nullb_create $1_c $3)
	need_blk "null_blk disks created" "$C"
	S=$(blockdev --getsz $O)
	pattern /tmp/base $2
	TOOL=${DMSR_FILES:-/payload/files}/dm-snap-cow
}
