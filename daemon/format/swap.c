/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The Linux swap area signature (version 1, as mkswap writes it on little-endian machines): the
 * last 10 bytes of the first page hold "SWAPSPACE2"; at offset 1024 follow version, last_page,
 * nr_badpages, a UUID and a volume label.
 */

#include <string.h>

#include "bytes.h"
#include "qcow2.h"

#define SWAP_MAGIC "SWAPSPACE2"
#define SWAP_INFO_OFFSET 1024U

int swap_signature_build(uint64_t size, const uint8_t uuid[16], uint8_t page[static SWAP_PAGE_SIZE]) {
        uint64_t pages = size / SWAP_PAGE_SIZE;

        if (pages < SWAP_MIN_PAGES)
                return -EINVAL;
        if (pages - 1 > UINT32_MAX)
                pages = (uint64_t) UINT32_MAX + 1;

        memset(page, 0, SWAP_PAGE_SIZE);
        le32_write(page + SWAP_INFO_OFFSET, 1);                           /* version */
        le32_write(page + SWAP_INFO_OFFSET + 4, (uint32_t) (pages - 1)); /* last_page */
        le32_write(page + SWAP_INFO_OFFSET + 8, 0);                       /* nr_badpages */
        memcpy(page + SWAP_INFO_OFFSET + 12, uuid, 16);
        memcpy(page + SWAP_PAGE_SIZE - strlen(SWAP_MAGIC), SWAP_MAGIC, strlen(SWAP_MAGIC));
        return 0;
}
