/* SPDX-License-Identifier: (GPL-2.0 WITH Linux-syscall-note) OR Apache-2.0 */
/*
 * hpmmap_test.ko: test-only hooks, never in a production image (built only with
 * `make HPMMAP_TEST=m`; issue 12.4). /dev/hpmmap-test, mode 0600.
 */
#ifndef HPMMAP_TEST_UAPI_H
#define HPMMAP_TEST_UAPI_H

#include "hpmmap_uapi.h"

#define HPMMAP_TEST_DEVICE "/dev/hpmmap-test"

/*
 * PIN_TEST: pin [addr, addr + len) with pin_user_pages_fast(FOLL_LONGTERM | FOLL_WRITE)
 * the way an RDMA driver registers a buffer, count the pages that lie in the pool, write
 * HPMMAP_PIN_MARK(page address) at byte 8 of every page through the kernel's own mapping
 * of the pinned page (what a device's DMA would do), then unpin.
 * PIN_HOLD: the same pin, kept (one held range per open file) until PIN_RELEASE or
 * close: a device that still owns the buffer after the process unmapped it.
 * PIN_DMA: through the held pins, write `value` at byte 16 of every page (`len` != 0) or
 * read byte 16 of every page and return in `value` the number of pages whose word is
 * not `value` (`len` == 0): what the device sees.
 */
struct hpmmap_pin_test {
	__u32 size;
	__u32 version;
	__u64 addr;
	__u64 len;
	__u64 pinned;  /* out */
	__u64 in_pool; /* out */
	__u64 value;   /* PIN_DMA */
};
#define HPMMAP_PIN_MARK(va) ((__u64)(va) ^ 0x48504d4d50494e00ull)

#define HPMMAP_TEST_IOC_MAGIC 'h'
#define HPMMAP_IOC_PIN_TEST _IOWR(HPMMAP_TEST_IOC_MAGIC, 1, struct hpmmap_pin_test)
#define HPMMAP_IOC_PIN_HOLD _IOWR(HPMMAP_TEST_IOC_MAGIC, 2, struct hpmmap_pin_test)
#define HPMMAP_IOC_PIN_DMA _IOWR(HPMMAP_TEST_IOC_MAGIC, 3, struct hpmmap_pin_test)
#define HPMMAP_IOC_PIN_RELEASE _IOWR(HPMMAP_TEST_IOC_MAGIC, 4, struct hpmmap_pin_test)

#endif
