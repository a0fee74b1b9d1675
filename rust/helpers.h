/* SPDX-License-Identifier: GPL-2.0 */
/*
 * C helpers for the static inlines, macros and module parameters dm_snap_rs
 * needs: bindgen can only bind real functions. Each is a short forward to
 * the kernel's own.
 */
#ifndef DM_SNAP_RS_HELPERS_H
#define DM_SNAP_RS_HELPERS_H

#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/device-mapper.h>
#include <linux/dm-kcopyd.h>
#include <linux/list_bl.h>
#include <linux/mempool.h>
#include <linux/rwsem.h>
#include <linux/dm-io.h>
#include <linux/workqueue.h>

/* Exported by dm-mod but declared only in its private drivers/md/dm.h. */
void dm_internal_suspend_fast(struct mapped_device *md);
void dm_internal_resume_fast(struct mapped_device *md);

void dmsr_bio_set_dev(struct bio *bio, struct block_device *bdev);
void dmsr_bio_endio_status(struct bio *bio, blk_status_t status);
unsigned int dmsr_bio_target_nr(const struct bio *bio);
sector_t dmsr_bdev_nr_sectors(struct block_device *bdev);
unsigned int dmsr_bdev_logical_block_size(struct block_device *bdev);
/* A reference to the block device's struct device: keeps the
 * block_device itself allocated (not the device open). */
void dmsr_bdev_get(struct block_device *bdev);
void dmsr_bdev_put(struct block_device *bdev);
dev_t dmsr_bdev_dev(struct block_device *bdev);

/*
 * hlist_bl bucket locks: bit 0 of the head, preemption off while held.
 * map is the table's lockdep map (dmsr_bl_class_init; NULL, and ignored,
 * without CONFIG_DEBUG_LOCK_ALLOC).
 */
void dmsr_bl_class_init(struct lockdep_map *map, const char *name,
			struct lock_class_key *key);
void dmsr_hlist_bl_lock(struct hlist_bl_head *b, struct lockdep_map *map);
void dmsr_hlist_bl_unlock(struct hlist_bl_head *b, struct lockdep_map *map);
/* A chunk's two buckets (complete, pending) in one call: a, then b. */
void dmsr_hlist_bl_lock2(struct hlist_bl_head *a, struct lockdep_map *ma,
			 struct hlist_bl_head *b, struct lockdep_map *mb);
void dmsr_hlist_bl_unlock2(struct hlist_bl_head *a, struct lockdep_map *ma,
			   struct hlist_bl_head *b, struct lockdep_map *mb);
/* Implemented in Rust (rust/sync/tables.rs): the lockdep self-test's inversion. */
int dmsr_bucket_lockdep_inversion(void);

/* A kmalloc-backed mempool: allocations wait instead of failing. */
mempool_t *dmsr_mempool_create(int min_nr, size_t size);
void dmsr_cond_resched(void);
void *dmsr_kzalloc_noretry(size_t size);
void *dmsr_mempool_alloc_noio(mempool_t *pool);
/* The same without sleeping: NULL when neither slab nor reserve has one. */
void *dmsr_mempool_alloc_nowait(mempool_t *pool);
/* A slab cache for small objects allocated on the I/O path. */
struct kmem_cache *dmsr_kmem_cache_create(const char *name, size_t size, size_t align);
/* GFP_NOIO, then GFP_ATOMIC, as upstream allocates completed exceptions. */
void *dmsr_kmem_cache_alloc_noio(struct kmem_cache *cache);

/* kcopyd client using the module's snapshot_copy_throttle parameter. */
struct dm_kcopyd_client *dmsr_kcopyd_client_create(void);
/*
 * The snapshot_cow_threshold module parameter, read with READ_ONCE
 * semantics on every origin write (a variable, not a call).
 */
extern unsigned int dmsr_cow_threshold;

/* The snapshot_exception_index module parameter (read at table load). */
extern bool dmsr_exception_index;

/* The snapshot_shared_copy module parameter (read per origin write). */
extern bool dmsr_shared_copy;
extern unsigned int dmsr_test_copy_done_delay_ms;

void dmsr_fsleep(unsigned long usecs);

/* down_write_nested() is a macro without lockdep. */
void dmsr_down_write_nested(struct rw_semaphore *sem);

/*
 * Synchronous I/O of one chunk of vmalloc'ed memory through dm-io; a
 * commit write is REQ_PREFLUSH | REQ_FUA | REQ_SYNC, as upstream's area
 * writes.
 */
int dmsr_chunk_io(struct dm_io_client *client, struct block_device *bdev,
		  sector_t sector, sector_t count, void *vmem, int write, int commit);

/*
 * Reads n regions of count sectors, the i-th at first + i * stride, into
 * consecutive parts of vmem (vmalloc'ed, n * count sectors) with all n
 * reads in flight at once; waits for them all. -EIO if any failed.
 */
int dmsr_read_strided(struct dm_io_client *client, struct block_device *bdev,
		      sector_t first, sector_t stride, sector_t count,
		      unsigned int n, void *vmem);

/*
 * Runs fn(arg) on wq and waits for it: metadata I/O issued from a bio's
 * submission context must not be submitted from there (upstream's ksnaphd).
 */
struct workqueue_struct *dmsr_alloc_metadata_wq(void);
void dmsr_run_on_wq(struct workqueue_struct *wq, void (*fn)(void *), void *arg);

#endif
