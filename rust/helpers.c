// SPDX-License-Identifier: GPL-2.0
/* C helpers for dm_snap_rs: see helpers.h. */
#include <linux/delay.h>
#include <linux/lockdep.h>
#include <linux/moduleparam.h>
#include <linux/percpu.h>
#include <linux/sched/clock.h>
#include <linux/sysfs.h>
#include <linux/module.h>
#include <linux/slab.h>
#include "helpers.h"

/* Module parameters, with upstream's names, defaults and descriptions. */
unsigned int dmsr_cow_threshold = 2048;
module_param_named(snapshot_cow_threshold, dmsr_cow_threshold, uint, 0644);
MODULE_PARM_DESC(snapshot_cow_threshold, "Maximum number of chunks being copied on write");

DECLARE_DM_KCOPYD_THROTTLE_WITH_MODULE_PARM(snapshot_copy_throttle,
		"A percentage of time allocated for copy on write");

struct dm_kcopyd_client *dmsr_kcopyd_client_create(void)
{
	return dm_kcopyd_client_create(&dm_kcopyd_throttle);
}

void dmsr_bio_set_dev(struct bio *bio, struct block_device *bdev)
{
	bio_set_dev(bio, bdev);
}

void dmsr_bio_endio_status(struct bio *bio, blk_status_t status)
{
	bio->bi_status = status;
	bio_endio(bio);
}

unsigned int dmsr_bio_target_nr(const struct bio *bio)
{
	return dm_bio_get_target_bio_nr(bio);
}

sector_t dmsr_bdev_nr_sectors(struct block_device *bdev)
{
	return bdev_nr_sectors(bdev);
}

unsigned int dmsr_bdev_logical_block_size(struct block_device *bdev)
{
	return bdev_logical_block_size(bdev);
}

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

mempool_t *dmsr_mempool_create(int min_nr, size_t size)
{
	return mempool_create_kmalloc_pool(min_nr, size);
}

void *dmsr_mempool_alloc_noio(mempool_t *pool)
{
	return mempool_alloc(pool, GFP_NOIO);
}

void *dmsr_mempool_alloc_nowait(mempool_t *pool)
{
	return mempool_alloc(pool, GFP_NOWAIT);
}

void *dmsr_alloc_noio_atomic(size_t size)
{
	void *p = kmalloc(size, GFP_NOIO);

	return p ? p : kmalloc(size, GFP_ATOMIC);
}

void dmsr_fsleep(unsigned long usecs)
{
	fsleep(usecs);
}

struct kmem_cache *dmsr_kmem_cache_create(const char *name, size_t size)
{
	return kmem_cache_create(name, size, 0, 0, NULL);
}

void *dmsr_kmem_cache_alloc_noio(struct kmem_cache *cache)
{
	void *p = kmem_cache_alloc(cache, GFP_NOIO);

	return p ? p : kmem_cache_alloc(cache, GFP_ATOMIC);
}

struct dm_io_client *dmsr_dm_io_client_create(void)
{
	return dm_io_client_create();
}

int dmsr_chunk_io(struct dm_io_client *client, struct block_device *bdev,
		  sector_t sector, sector_t count, void *vmem, int write, int commit)
{
	struct dm_io_region where = {
		.bdev = bdev,
		.sector = sector,
		.count = count,
	};
	struct dm_io_request io_req = {
		.bi_opf = write ? (commit ? REQ_OP_WRITE | REQ_PREFLUSH | REQ_FUA | REQ_SYNC :
					    REQ_OP_WRITE) : REQ_OP_READ,
		.mem.type = DM_IO_VMA,
		.mem.ptr.vma = vmem,
		.client = client,
		.notify.fn = NULL,
	};

	return dm_io(&io_req, 1, &where, NULL, IOPRIO_DEFAULT);
}

struct workqueue_struct *dmsr_alloc_metadata_wq(void)
{
	return alloc_workqueue("ksnaphd", WQ_MEM_RECLAIM, 0);
}

struct dmsr_wq_call {
	struct work_struct work;
	void (*fn)(void *);
	void *arg;
};

static void dmsr_wq_work(struct work_struct *work)
{
	struct dmsr_wq_call *c = container_of(work, struct dmsr_wq_call, work);

	c->fn(c->arg);
}

void dmsr_run_on_wq(struct workqueue_struct *wq, void (*fn)(void *), void *arg)
{
	struct dmsr_wq_call c = { .fn = fn, .arg = arg };

	INIT_WORK_ONSTACK(&c.work, dmsr_wq_work);
	queue_work(wq, &c.work);
	flush_workqueue(wq);
	destroy_work_on_stack(&c.work);
}

void dmsr_down_write_nested(struct rw_semaphore *sem)
{
	down_write_nested(sem, SINGLE_DEPTH_NESTING);
}
