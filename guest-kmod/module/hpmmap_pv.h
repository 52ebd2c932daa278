/* SPDX-License-Identifier: (GPL-2.0 WITH Linux-syscall-note) OR Apache-2.0 */
#ifndef HPMMAP_PV_H
#define HPMMAP_PV_H

/*
 * The paravirtual hpmmap device (docs/architecture.md, Interface 2): the one definition of its
 * register window, a versioned page of MMIO. The module includes this file; the VMM's device
 * (vmm/src/devices/pv.rs) checks every constant it uses against it in a unit test, and the
 * image builder (images/src/init.rs) takes the offsets the guest's init writes from it, so a
 * change here that one side misses fails the tests instead of a guest.
 */

#define PV_MAGIC_VAL 0x4D4D5048u	/* "HPMM" little-endian */
#define PV_VERSION_VAL 1

/* Registers: byte offsets in the page. */
#define PV_MAGIC 0x000		/* r, 32: PV_MAGIC_VAL */
#define PV_VERSION 0x004	/* r, 32: PV_VERSION_VAL */
#define PV_GUEST_VERSION 0x008	/* w, 32: the version the guest speaks */
#define PV_STATUS 0x00c		/* r, 32: result of the last access, PV_OK .. PV_EIO */
#define PV_NR_RANGES 0x010	/* r, 32: number of pool ranges */
#define PV_PAGE_SHIFT 0x014	/* r, 32: log2 of the host page backing the pool */
#define PV_POOL_BYTES 0x018	/* r, 64: sum of the ranges */
#define PV_ARG_ADDR 0x020	/* w, 64: a command's guest-physical address */
#define PV_ARG_LEN 0x028	/* w, 64: a command's length */
#define PV_COMMAND 0x030	/* w, 32: PV_CMD_* on [ARG_ADDR, +ARG_LEN) */
#define PV_EXIT 0x034		/* w, 32: the job's exit status; ends the VM */
#define PV_RANGE 0x100		/* r, 64 pairs: range i at PV_RANGE + PV_RANGE_STRIDE * i */
#define PV_RANGE_STRIDE 16	/* base (8 bytes), then size (8 bytes) */
#define PV_MAX_RANGES 64

/* Commands. */
#define PV_CMD_ZERO 1		/* hand the range back zeroed (host-side clear) */
#define PV_CMD_RESULT 2		/* the range holds one result line for the report */
#define PV_MAX_RESULT_BYTES 65536

/* STATUS values. */
#define PV_OK 0
#define PV_EVERSION 1
#define PV_ERANGE 2
#define PV_EINVAL_CMD 3
#define PV_EINVAL_ACCESS 4
#define PV_EIO 5

#endif /* HPMMAP_PV_H */
