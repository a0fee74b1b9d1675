#!/bin/sh
# Runs every in-VM selftest suite (tests/vm/*.sh but this file and lib.sh),
# or those named as arguments. Exit status: non-zero if any suite failed.
cd "$(dirname "$0")" || exit 1
suites=${*:-$(ls *.sh | grep -vxE 'lib.sh|run-all.sh')}
rc=0
for s in $suites; do
	sh "./${s%.sh}.sh" || rc=1
done
exit $rc
