/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What dm_snap_rs binds beyond kernel::bindings: device-mapper, dm-io,
 * dm-kcopyd and list_bl. bindgen (see Kbuild) generates only the items
 * declared in these headers; every type they reference that kernel::bindings
 * already has (bio, block_device, queue_limits, ...) resolves to it.
 */
#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/device-mapper.h>
#include <linux/dm-io.h>
#include <linux/dm-kcopyd.h>
#include <linux/list_bl.h>
#include "helpers.h"

/* Constants that are macros with casts, which bindgen cannot evaluate. */
const blk_status_t DMSR_BLK_STS_IOERR = BLK_STS_IOERR;
