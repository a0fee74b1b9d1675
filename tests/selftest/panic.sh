#!/bin/sh
# Injected: the guest panics after the first of two results.
. /payload/tests/vm/lib.sh
ktap_begin panic 2
ok "the first of two"
sleep 1   # let the console drain the line above
echo c >/proc/sysrq-trigger
ok "never printed: the guest is gone"
summary
