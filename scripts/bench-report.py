#!/usr/bin/env python3
"""Summarise scripts/bench results: table, CSV and PNG plot.

Input: RESULT lines "RESULT round driver row engine jobs iops p50 p99" (p50/p99
completion latency in microseconds). For each row the drivers' medians are
compared round by round (each round runs C, Rust, Rust, C), so the ratio's
spread shows the noise. With scripts/bench --baseline the other driver is an
earlier dm_snap_rs ("base") instead of C.

RAW may name several raw files separated by commas (runs of several boots);
their rounds are kept apart, and the rows of a boot of one store get its
name (its STORES line), as in a boot of several. (A boot of N alone has a
COW without memory backing, one of "N P" a memory-backed one.)

The pooled lines at the end give, per row and engine over all job counts
and rounds, the geometric mean of the per-round ratios with a 95 %
interval (Student's t on the logs of the ratios): where that interval
holds 1.0 the two drivers cannot be told apart. Rounds of one boot share
its conditions, so one boot's interval is too narrow; pool boots.
"""
import csv
import math
import statistics as st
import sys
from collections import defaultdict

if len(sys.argv) != 4:
    sys.exit("usage: bench-report.py RAW[,RAW...] OUT_PREFIX MACHINE_TEXT")
raw, prefix, machine = sys.argv[1], sys.argv[2], sys.argv[3]
runs = defaultdict(list)  # (row, engine, jobs, driver) -> [(round, iops, p50, p99)]
raws = raw.split(",")
for boot, path in enumerate(raws):
    single = ""  # a boot of one store names its rows without it: add it back to pool boots
    for line in open(path, errors="replace"):
        f = line.split()
        if len(f) == 2 and f[0] == "STORES" and len(raws) > 1:
            single = "/" + f[1]
        if len(f) < 9 or f[0] != "RESULT":
            continue
        if single and "/" not in f[3] and f[3] not in ("raw", "linear", "origin-only"):
            f[3] += single
        try:
            r, drv, row, eng, jobs = int(f[1]), f[2], f[3], f[4], int(f[5])
            iops, p50, p99 = float(f[6]), float(f[7]), float(f[8])
        except ValueError:
            continue
        runs[(row, eng, jobs, drv)].append((boot * 1000 + r, iops, p50, p99))

def med(v):
    return st.median(v) if v else float("nan")

def geo(v):
    return math.exp(sum(math.log(x) for x in v) / len(v))

# Student's t, 97.5 % quantile, by degrees of freedom (the largest listed
# at or below the actual ones: conservative).
T975 = [(1, 12.71), (2, 4.30), (3, 3.18), (4, 2.78), (5, 2.57), (6, 2.45), (7, 2.36), (8, 2.31), (9, 2.26),
        (10, 2.23), (12, 2.18), (15, 2.13), (20, 2.09), (30, 2.04), (60, 2.00), (120, 1.98)]

def t_ci(v):
    """95 % interval of the geometric mean: a t interval on the log ratios."""
    if len(v) < 2:
        return float("nan"), float("nan")
    logs = [math.log(x) for x in v]
    t = [q for df, q in T975 if df <= len(v) - 1][-1]
    h = t * st.stdev(logs) / math.sqrt(len(v))
    m = st.mean(logs)
    return math.exp(m - h), math.exp(m + h)

# The rows the goal is about: snapshot writes of every kind.
write_rows = ("origin-cow", "origin-rewrite", "snap-write")

def per_round(key, idx):
    d = defaultdict(list)
    for x in runs.get(key, []):
        d[x[0]].append(x[idx])
    return {r: med(v) for r, v in d.items()}

slab = {}
for path in raws:
    for line in open(path, errors="replace"):
        f = line.split()
        if len(f) >= 5 and f[0] == "SLAB" and f[4].isdigit():
            slab[f[1]] = int(f[4])

# The driver dm_snap_rs is compared with: C, or an earlier build of itself.
A = "base" if any(k[3] == "base" for k in runs) else "c"
AN = "base" if A == "base" else "C"

base_rows = ["origin-only", "origin-cow", "origin-rewrite", "snap-write", "snap-read"]
rows = [r for b in base_rows for r in sorted({k[0] for k in runs}) if r == b or r.startswith(b + "/")]
keys = sorted({(k[1], k[2]) for k in runs})
out = []
pooled = defaultdict(list)  # (row, engine) -> per-round IOPS ratios over all job counts
pooled99 = defaultdict(list)  # the same for p99 latency
tally = [0, 0]  # write rows: rounds rs won, rounds
print(f"# dm_snap_rs vs {'an earlier dm_snap_rs' if A == 'base' else 'C dm-snapshot.ko'}, 4 KiB random I/O ({machine})")
print(f"# IOPS: median [min-max] over all runs; ratio rs/{AN}: median of per-round ratios [min-max];"
      f" won: rounds in which rs had the higher IOPS, of all rounds")
def spread(v):
    return f"{med(v):.0f} [{min(v):.0f}-{max(v):.0f}]"

hdr = (f"{'row':<17}{'engine':<7}{'jobs':>4} {AN + ' IOPS':>22} {'rs IOPS':>22} {'rs/' + AN:>17} {'p99 ' + AN + ' us':>9}"
       f" {'p99 rs':>8} {'p99 rs/' + AN:>8} {'won':>5}")
print(hdr)
for eng, jobs in keys:
    base = runs.get(("raw", eng, jobs, "-"), [])
    lin = runs.get(("linear", eng, jobs, "-"), [])
    for name, v in (("raw null_blk", base), ("dm-linear", lin)):
        if v:
            iops = [x[1] for x in v]
            p99 = [x[3] for x in v]
            print(f"{name:<17}{eng:<7}{jobs:>4} {spread(iops):>22} {'':>22} {'':>17} {med(p99):>9.0f}")
            out.append([name, eng, jobs, "-", len(v), med(iops), min(iops), max(iops), med([x[2] for x in v]), med(p99), "", "", ""])
    for row in rows:
        c, r = runs.get((row, eng, jobs, A), []), runs.get((row, eng, jobs, "rs"), [])
        if not c or not r:
            continue
        ci, ri = [x[1] for x in c], [x[1] for x in r]
        cr, rr = per_round((row, eng, jobs, A), 1), per_round((row, eng, jobs, "rs"), 1)
        ratios = [rr[k] / cr[k] for k in cr if k in rr and cr[k] > 0]
        cp, rp = per_round((row, eng, jobs, A), 3), per_round((row, eng, jobs, "rs"), 3)
        pr = [rp[k] / cp[k] for k in cp if k in rp and cp[k] > 0]
        c99, r99 = med([x[3] for x in c]), med([x[3] for x in r])
        rat = f"{med(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]" if ratios else "n/a"
        won = sum(x > 1 for x in ratios)
        pooled[(row, eng)] += ratios
        pooled99[(row, eng)] += pr
        if row.split("/")[0] in write_rows:
            tally[0] += won
            tally[1] += len(ratios)
        print(f"{row:<17}{eng:<7}{jobs:>4} {spread(ci):>22} {spread(ri):>22} {rat:>17} {c99:>9.0f} {r99:>8.0f}"
              f" {med(pr) if pr else float('nan'):>8.2f} {f'{won}/{len(ratios)}':>5}")
        for drv, v in ((A, c), ("rs", r)):
            iops = [x[1] for x in v]
            out.append([row, eng, jobs, drv, len(v), med(iops), min(iops), max(iops), med([x[2] for x in v]), med([x[3] for x in v]),
                        f"{med(ratios):.3f}" if ratios else "", f"{min(ratios):.3f}" if ratios else "", f"{max(ratios):.3f}" if ratios else ""])

if tally[1]:
    print(f"# snapshot write rows (origin-cow, origin-rewrite, snap-write): rs had the higher IOPS in {tally[0]} of {tally[1]} rounds")
if pooled:
    print(f"# pooled over job counts and rounds{f' of {len(raws)} boots' if len(raws) > 1 else ''}:"
          f" geometric mean of per-round IOPS ratios rs/{AN} [95 % t interval],"
          f" and of p99 latency ratios (below 1: rs lower)")
    groups = [((row, eng), v) for row in rows for eng in sorted({k[0] for k in keys}) if (v := pooled.get((row, eng)))]
    allw = [x for (row, _), v in groups if row.split("/")[0] in write_rows for x in v]
    allp = [x for (row, eng), _ in groups if row.split("/")[0] in write_rows for x in pooled99[(row, eng)]]
    for (row, eng), v in groups + ([(("write rows", "all"), allw)] if allw else []):
        lo, hi = t_ci(v)
        verdict = "faster" if lo > 1 else "slower" if hi < 1 else "indistinguishable"
        p = allp if eng == "all" else pooled99[(row, eng)]
        p99 = f"p99 {geo(p):.3f} [{t_ci(p)[0]:.3f}-{t_ci(p)[1]:.3f}]" if p else ""
        print(f"#   {row:<20}{eng:<7} {geo(v):.3f} [{lo:.3f}-{hi:.3f}] n={len(v):<3} won {sum(x > 1 for x in v):>3}/{len(v):<3}"
              f" rs {verdict:<17} {p99}")
print("# memory: per completed exception (slab object size, a randomly written chunk):"
      f" C {slab.get('C', '?')} B, dm_snap_rs {slab.get('rs', '?')} B;"
      " per complete-table bucket head: C 6.12.117 16 B (hlist_head + spinlock_t), dm_snap_rs 8 B"
      " (hlist_bl head, bit 0 is the lock); table cap 2 MiB: C 131072 buckets, dm_snap_rs 262144")

with open(prefix + ".csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["row", "engine", "jobs", "driver", "runs", "iops_median", "iops_min", "iops_max", "p50_us_median", "p99_us_median",
                f"ratio_rs_{A}_median", "ratio_min", "ratio_max"])
    w.writerows(out)
print(f"# CSV: {prefix}.csv")

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("# plot skipped: matplotlib not available")
    sys.exit(0)
engines = sorted({k[0] for k in keys})
fig, axes = plt.subplots(2, len(engines), figsize=(6 * len(engines), 8), squeeze=False)
series = [("raw", "-", "raw null_blk", "k--"), ("linear", "-", "dm-linear", "k:")]
# Every store's COW rows (origin-cow, origin-cow/N, origin-cow/P...): a
# colour per row, C dashed with hollow markers, dm_snap_rs solid.
colour = 0
for base, what in (("origin-cow", "origin COW"), ("snap-write", "snapshot write")):
    for row in [r for r in rows if r == base or r.startswith(base + "/")]:
        tag = what + (" " + row.split("/", 1)[1] if "/" in row else "")
        series.append((row, A, f"{tag}, {AN}", f"C{colour}o--"))
        series.append((row, "rs", f"{tag}, dm_snap_rs", f"C{colour}s-"))
        colour += 1
for ci, eng in enumerate(engines):
    for ri, (idx, label) in enumerate(((1, "IOPS"), (3, "p99 latency (us)"))):
        ax = axes[ri][ci]
        for row, drv, name, style in series:
            js = sorted({k[2] for k in runs if k[0] == row and k[1] == eng and k[3] == drv})
            if js:
                ax.plot(js, [med([x[idx] for x in runs[(row, eng, j, drv)]]) for j in js], style, label=name)
        ax.set_title(f"{eng}: {label}")
        ax.set_xlabel("numjobs")
        ax.set_xticks(sorted({k[1] for k in keys if k[0] == eng}))
        ax.grid(alpha=0.3)
        if ri == 0 and ci == 0:
            ax.legend(fontsize=8)
fig.suptitle(f"4 KiB random I/O on null_blk ({machine}); ratios are what count")
fig.tight_layout()
fig.savefig(prefix + ".png", dpi=90)
print(f"# plot: {prefix}.png")

# P vs N in the same boot, per driver, when both were measured.
pn = [(k[0][: -len("/P")], k[1], k[2], k[3]) for k in runs if k[0].endswith("/P")]
if pn:
    print("# P vs N (same boot, same memory-backed COW): IOPS ratio P/N, median")
    for row, eng, jobs, drv in sorted(set(pn)):
        p_, n_ = runs.get((row + "/P", eng, jobs, drv)), runs.get((row + "/N", eng, jobs, drv))
        if p_ and n_:
            print(f"{row:<17}{eng:<7}{jobs:>4} {drv:<3} {med([x[1] for x in p_]) / med([x[1] for x in n_]):.2f}")
