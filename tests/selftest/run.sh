#!/bin/sh
# The harness self-test's guest side (scripts/check): three suites in one
# boot, each failing on purpose in a way the harness must count.
cd "$(dirname "$0")" || exit 1
sh ./lockdep.sh
sh ./half.sh
sh ./panic.sh
