#!/usr/bin/env python3
"""What the next boot of scripts/crash-test must find on the devices.

    crash-expect.py ACKS CYCLE SAMPLE > EXPECT

ACKS holds the "ACK|TRY dev pos cycle" lines of every boot so far, in
order. For each block position the last acknowledged write must be there;
a write started after it and not acknowledged when QEMU was killed (a TRY
with no ACK after it) may or may not have landed, so either content is
right. Every position written by boot CYCLE (the one just killed, where a
loss would happen) is listed, and SAMPLE random older ones are checked
again. Output lines: "dev pos md5-of-last md5-of-alternative", the md5 of
the 4 KiB block tests/crash/guest.sh writes (`yes "blk POS cycle C "`).
"""
import hashlib
import random
import sys


def block_md5(pos, cycle):
    line = "blk %d cycle %d \n" % (pos, cycle)
    data = (line * (4096 // len(line) + 1))[:4096]
    return hashlib.md5(data.encode()).hexdigest()


def main():
    acks, cycle, sample = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    last, tried, by = {}, {}, {}
    with open(acks) as f:
        for ln in f:
            p = ln.split()
            if len(p) != 4:
                continue
            kind, key, c = p[0], (p[1], int(p[2])), int(p[3])
            if kind == "ACK":
                last[key] = c
                tried.pop(key, None)
            elif kind == "TRY":
                tried[key] = c
            by[key] = c
    recent = [k for k in last if by[k] == cycle]
    older = sorted(k for k in last if by[k] != cycle)
    random.shuffle(older)
    for k in sorted(recent) + older[:sample]:
        c = last[k]
        print(k[0], k[1], block_md5(k[1], c), block_md5(k[1], tried.get(k, c)))


main()
