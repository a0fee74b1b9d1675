#!/bin/sh
# Runs every in-VM selftest suite (tests/vm/test-*.sh), or those named as
# arguments (e.g. "foundation"). Exit status: non-zero if any suite failed.
cd "$(dirname "$0")" || exit 1
if [ $# -gt 0 ]; then suites=$(for s in "$@"; do echo "test-${s#test-}"; done)
else suites=$(ls test-*.sh | sed 's/\.sh$//'); fi
rc=0
for s in $suites; do
	sh "./${s%.sh}.sh" || rc=1
done
exit $rc
