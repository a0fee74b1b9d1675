#!/bin/sh
# Injected (the deadline self-test's nested run): a suite that never ends
# and never reports. The run's deadline must cut it, count its planned
# result as failed, and still print the summary line.
# vm-timeout: 3000
. /payload/tests/vm/lib.sh
ktap_begin hang 1
sleep 100000
