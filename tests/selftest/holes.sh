#!/bin/sh
# Injected: the holes a harness can have, each of which must give
# "not ok": two reads that both fail compared with each other, a failed
# read compared with a real checksum, and a negative check ("the tool
# refuses this") of a tool that does not exist.
. /payload/tests/vm/lib.sh
ktap_begin holes 3
expect_eq "two failed reads compare equal" "$(sum /dev/no-such-disk 1)" "$(sum /dev/no-such-disk-either 1)"
expect_eq "a failed read equals a real checksum" "$(sum /dev/zero 1)" "$(sum /dev/no-such-disk 1)"
expect_status "a missing tool 'refuses' a bad COW" 1 /payload/files/no-such-tool check /dev/null
summary
