#!/bin/sh
# The harness self-test's guest side (scripts/check): five suites in one
# boot, each failing on purpose in a way the harness must count. The
# stream of the kernel log dies in the fourth; the last one kills the
# guest after printing a result.
cd "$(dirname "$0")" || exit 1
sh ./lockdep.sh
sh ./half.sh
sh ./holes.sh
sh ./streamkill.sh
sh ./panic.sh
