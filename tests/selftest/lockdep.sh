#!/bin/sh
# Injected: two bucket locks taken in the wrong order. Lockdep must report
# it (it sees the bit locks through their lockdep maps), and the harness
# must count the report as a splat. Lockdep is off after the report, so
# this runs only in the self-test's boot.
. /payload/tests/vm/lib.sh
ktap_begin lockdep 1
insmod "$KO"
echo 1 >/sys/module/dm_snap_rs/parameters/bucket_lockdep_selftest
if dmesg | grep -q 'possible circular locking dependency detected'; then
	ok "lockdep reports a complete/pending bucket lock inversion"
else
	fail "lockdep reports a complete/pending bucket lock inversion" "$(dmesg | tail -5)"
fi
rmmod dm_snap_rs
summary
