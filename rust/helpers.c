// SPDX-License-Identifier: GPL-2.0
/* C helpers for dm_snap_rs: see helpers.h. */
#include "helpers.h"

void dmsr_bio_set_dev(struct bio *bio, struct block_device *bdev)
{
	bio_set_dev(bio, bdev);
}

sector_t dmsr_bdev_nr_sectors(struct block_device *bdev)
{
	return bdev_nr_sectors(bdev);
}

unsigned int dmsr_bdev_logical_block_size(struct block_device *bdev)
{
	return bdev_logical_block_size(bdev);
}
