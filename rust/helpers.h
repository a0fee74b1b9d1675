/* SPDX-License-Identifier: GPL-2.0 */
/*
 * C helpers for the static inlines and macros dm_snap_rs needs: bindgen can
 * only bind real functions. Each is a one-line forward to the kernel's own.
 */
#ifndef DM_SNAP_RS_HELPERS_H
#define DM_SNAP_RS_HELPERS_H

#include <linux/bio.h>
#include <linux/blkdev.h>

void dmsr_bio_set_dev(struct bio *bio, struct block_device *bdev);
sector_t dmsr_bdev_nr_sectors(struct block_device *bdev);
unsigned int dmsr_bdev_logical_block_size(struct block_device *bdev);

#endif
