// SPDX-License-Identifier: GPL-2.0
/* C helpers for dm_snap_rs: see helpers.h. */
#include <linux/completion.h>
#include <linux/delay.h>
#include <linux/moduleparam.h>
#include <linux/module.h>
#include <linux/slab.h>
#include "helpers.h"

/* Module parameters, with upstream's names, defaults and descriptions. */
unsigned int dmsr_cow_threshold = 2048;
module_param_named(snapshot_cow_threshold, dmsr_cow_threshold, uint, 0644);
MODULE_PARM_DESC(snapshot_cow_threshold, "Maximum number of chunks being copied on write");

bool dmsr_exception_index = true;
module_param_named(snapshot_exception_index, dmsr_exception_index, bool, 0644);
MODULE_PARM_DESC(snapshot_exception_index, "Keep completed exceptions in the compact B+tree index (0: upstream's hash table); read at table load");

bool dmsr_shared_copy = true;
module_param_named(snapshot_shared_copy, dmsr_shared_copy, bool, 0644);
MODULE_PARM_DESC(snapshot_shared_copy, "Copy an origin chunk for up to 8 snapshots of one chunk size with one origin read (0: one copy per snapshot, as upstream)");

/* Testing only: widens the window in which a copy completion still holds
 * a snapshot after completing its exception (the shared-copy teardown
 * race of issue 27). 0, the default, costs nothing. */
unsigned int dmsr_test_copy_done_delay_ms;
module_param_named(test_copy_done_delay_ms, dmsr_test_copy_done_delay_ms, uint, 0644);
MODULE_PARM_DESC(test_copy_done_delay_ms, "Testing only: milliseconds a copy completion waits after completing a snapshot's exception (0: none)");

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

void dmsr_bdev_get(struct block_device *bdev)
{
	get_device(&bdev->bd_device);
}

void dmsr_bdev_put(struct block_device *bdev)
{
	put_device(&bdev->bd_device);
}

dev_t dmsr_bdev_dev(struct block_device *bdev)
{
	return bdev->bd_dev;
}

mempool_t *dmsr_mempool_create(int min_nr, size_t size)
{
	return mempool_create_kmalloc_pool(min_nr, size);
}

void dmsr_cond_resched(void)
{
	cond_resched();
}

void *dmsr_kzalloc_noretry(size_t size)
{
	return kzalloc(size, GFP_KERNEL | __GFP_NORETRY | __GFP_NOWARN);
}

void *dmsr_mempool_alloc_noio(mempool_t *pool)
{
	return mempool_alloc(pool, GFP_NOIO);
}

void *dmsr_mempool_alloc_nowait(mempool_t *pool)
{
	return mempool_alloc(pool, GFP_NOWAIT);
}

void dmsr_fsleep(unsigned long usecs)
{
	fsleep(usecs);
}

struct kmem_cache *dmsr_kmem_cache_create(const char *name, size_t size, size_t align)
{
	return kmem_cache_create(name, size, align, 0, NULL);
}

void *dmsr_kmem_cache_alloc_noio(struct kmem_cache *cache)
{
	void *p = kmem_cache_alloc(cache, GFP_NOIO);

	return p ? p : kmem_cache_alloc(cache, GFP_ATOMIC);
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

struct dmsr_read_batch {
	atomic_t left;
	int error;
	struct completion done;
};

static void dmsr_read_batch_notify(unsigned long error, void *context)
{
	struct dmsr_read_batch *b = context;

	if (error)
		WRITE_ONCE(b->error, -EIO);
	if (atomic_dec_and_test(&b->left))
		complete(&b->done);
}

int dmsr_read_strided(struct dm_io_client *client, struct block_device *bdev,
		      sector_t first, sector_t stride, sector_t count,
		      unsigned int n, void *vmem)
{
	struct dmsr_read_batch b = { .error = 0 };
	unsigned int i;

	/* One count for the submitter: no completion before all are issued. */
	atomic_set(&b.left, n + 1);
	init_completion(&b.done);
	for (i = 0; i < n; i++) {
		struct dm_io_region where = {
			.bdev = bdev,
			.sector = first + i * stride,
			.count = count,
		};
		struct dm_io_request io_req = {
			.bi_opf = REQ_OP_READ | REQ_SYNC,
			.mem.type = DM_IO_VMA,
			.mem.ptr.vma = (char *)vmem + ((size_t)i * count << SECTOR_SHIFT),
			.client = client,
			.notify.fn = dmsr_read_batch_notify,
			.notify.context = &b,
		};
		int r = dm_io(&io_req, 1, &where, NULL, IOPRIO_DEFAULT);

		if (r) {
			/* Not issued: its notify will not come. */
			WRITE_ONCE(b.error, r);
			atomic_dec(&b.left);
		}
	}
	if (atomic_dec_and_test(&b.left))
		complete(&b.done);
	wait_for_completion_io(&b.done);
	return READ_ONCE(b.error);
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
