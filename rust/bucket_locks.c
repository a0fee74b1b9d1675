// SPDX-License-Identifier: GPL-2.0
/*
 * The exception tables' bucket locks for dm_snap_rs (see helpers.h and
 * rust/sync/bitlock.rs): hlist_bl bit locks, made visible to lockdep on
 * CONFIG_DEBUG_LOCK_ALLOC kernels, counted on CONFIG_LOCK_STAT kernels,
 * and lockdep's self-test of them.
 */
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/lockdep.h>
#include <linux/percpu.h>
#include <linux/sched/clock.h>
#include <linux/sysfs.h>
#include <linux/list_bl.h>
#include "helpers.h"

/*
 * Bucket bit locks as lockdep sees them. A bit spinlock has no lockdep map
 * of its own, so on CONFIG_DEBUG_LOCK_ALLOC kernels each exception table
 * gets one (one lock class per kind of table, from a static key): acquired
 * before spinning for the bit, released after clearing it, so an order
 * inversion between bucket locks, the rwsems and kcopyd's locks is
 * reported like any other. The map is declared LD_WAIT_CONFIG (a
 * spinlock_t), which is what the non-RT bucket lock stands in for;
 * PREEMPT_RT kernels use real spinlocks instead (rust/sync/bitlock.rs).
 */
void dmsr_bl_class_init(struct lockdep_map *map, const char *name,
			struct lock_class_key *key)
{
#ifdef CONFIG_DEBUG_LOCK_ALLOC
	lockdep_init_map_wait(map, name, key, 0, LD_WAIT_CONFIG);
#endif
}

static __always_inline void dmsr_bl_acquire(struct lockdep_map *map)
{
#ifdef CONFIG_DEBUG_LOCK_ALLOC
	if (map)
		lock_acquire_exclusive(map, 0, 0, NULL, _RET_IP_);
#endif
}

static __always_inline void dmsr_bl_release(struct lockdep_map *map)
{
#ifdef CONFIG_DEBUG_LOCK_ALLOC
	if (map)
		lock_release(map, _RET_IP_);
#endif
}

#ifdef CONFIG_LOCK_STAT
/*
 * lock_stat sees the bucket locks through their lockdep maps only as
 * acquisitions. On a CONFIG_LOCK_STAT kernel (scripts/bench --lockstat)
 * the module counts them itself: acquisitions, contended acquisitions (the
 * bit was taken when we tried) and the time spent spinning for them, read
 * from /sys/module/dm_snap_rs/parameters/bucket_lock_stats as
 * "<acquisitions> <contentions> <wait-ns>"; writing anything resets them.
 */
struct dmsr_bl_stat {
	unsigned long acquisitions, contentions;
	u64 wait_ns;
};
static DEFINE_PER_CPU(struct dmsr_bl_stat, dmsr_bl_stats);

static void dmsr_bl_take(struct hlist_bl_head *b)
{
	u64 t0;

	/* Both take the bit with preemption disabled, as hlist_bl_lock. */
	if (unlikely(!bit_spin_trylock(0, (unsigned long *)b))) {
		t0 = local_clock();
		hlist_bl_lock(b);
		this_cpu_inc(dmsr_bl_stats.contentions);
		this_cpu_add(dmsr_bl_stats.wait_ns, local_clock() - t0);
	}
	this_cpu_inc(dmsr_bl_stats.acquisitions);
}

static int dmsr_bl_stats_get(char *buf, const struct kernel_param *kp)
{
	unsigned long acq = 0, con = 0;
	u64 wait = 0;
	int cpu;

	for_each_possible_cpu(cpu) {
		struct dmsr_bl_stat *s = per_cpu_ptr(&dmsr_bl_stats, cpu);

		acq += READ_ONCE(s->acquisitions);
		con += READ_ONCE(s->contentions);
		wait += READ_ONCE(s->wait_ns);
	}
	return sysfs_emit(buf, "%lu %lu %llu\n", acq, con, wait);
}

static int dmsr_bl_stats_set(const char *val, const struct kernel_param *kp)
{
	int cpu;

	for_each_possible_cpu(cpu)
		memset(per_cpu_ptr(&dmsr_bl_stats, cpu), 0, sizeof(struct dmsr_bl_stat));
	return 0;
}

static const struct kernel_param_ops dmsr_bl_stats_ops = {
	.get = dmsr_bl_stats_get,
	.set = dmsr_bl_stats_set,
};
module_param_cb(bucket_lock_stats, &dmsr_bl_stats_ops, NULL, 0644);
MODULE_PARM_DESC(bucket_lock_stats,
		 "Bucket bit-lock acquisitions, contentions, wait ns (CONFIG_LOCK_STAT kernels)");
#else
static __always_inline void dmsr_bl_take(struct hlist_bl_head *b)
{
	hlist_bl_lock(b);
}
#endif

void dmsr_hlist_bl_lock(struct hlist_bl_head *b, struct lockdep_map *map)
{
	dmsr_bl_acquire(map);
	dmsr_bl_take(b);
}

void dmsr_hlist_bl_unlock(struct hlist_bl_head *b, struct lockdep_map *map)
{
	hlist_bl_unlock(b);
	dmsr_bl_release(map);
}

void dmsr_hlist_bl_lock2(struct hlist_bl_head *a, struct lockdep_map *ma,
			 struct hlist_bl_head *b, struct lockdep_map *mb)
{
	dmsr_bl_acquire(ma);
	dmsr_bl_take(a);
	dmsr_bl_acquire(mb);
	dmsr_bl_take(b);
}

void dmsr_hlist_bl_unlock2(struct hlist_bl_head *a, struct lockdep_map *ma,
			   struct hlist_bl_head *b, struct lockdep_map *mb)
{
	hlist_bl_unlock(b);
	dmsr_bl_release(mb);
	hlist_bl_unlock(a);
	dmsr_bl_release(ma);
}

#ifdef CONFIG_DEBUG_LOCK_ALLOC
/*
 * Test only (make check's harness self-test): writing 1 takes a complete
 * and a pending bucket in upstream's order, then in the reverse order, so
 * lockdep must report a possible circular locking dependency. Proves that
 * the bucket locks are visible to lockdep; lockdep turns itself off after
 * the report, so nothing else may run in that boot.
 */
static int dmsr_lockdep_selftest_set(const char *val, const struct kernel_param *kp)
{
	return dmsr_bucket_lockdep_inversion();
}

static const struct kernel_param_ops dmsr_lockdep_selftest_ops = {
	.set = dmsr_lockdep_selftest_set,
};
module_param_cb(bucket_lockdep_selftest, &dmsr_lockdep_selftest_ops, NULL, 0200);
MODULE_PARM_DESC(bucket_lockdep_selftest,
		 "Test only: take two bucket locks in the wrong order (lockdep kernels)");
#endif
