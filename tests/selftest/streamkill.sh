#!/bin/sh
# Injected: the guest's streamed kernel log dies, then the ring buffer is
# cleared, as a test's dmesg -c does. A splat logged in between would be
# lost; scripts/vm-run must fail the run because the stream lacks the
# markers that follow (the next suite's, the end of the run).
. /payload/tests/vm/lib.sh
ktap_begin streamkill 1
# (busybox here has no pkill: find the streaming cat by its command line)
killed=0
for p in /proc/[0-9]*; do
	[ "$(tr '\0' ' ' <$p/cmdline 2>/dev/null)" = "cat /dev/kmsg " ] && kill ${p#/proc/} && killed=1
done
[ $killed = 1 ] || { fail "the kernel-log stream was killed" "no 'cat /dev/kmsg' process found"; summary; exit 1; }
sleep 1
echo "dmsr: logged after the stream died" >/dev/kmsg
dmesg -c >/dev/null
ok "the kernel-log stream was killed"
summary
