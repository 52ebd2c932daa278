/* SPDX-License-Identifier: (GPL-2.0 WITH Linux-syscall-note) OR Apache-2.0 */
/*
 * hpmmap user interface: /dev/hpmmap ioctls (docs/architecture.md, Interface 4).
 *
 * Every argument struct starts with { size, version }: the kernel rejects a size it
 * does not know with EINVAL and a version it does not speak with EPROTO, so a newer
 * launcher against an older module fails loudly instead of misreading fields.
 */
#ifndef HPMMAP_UAPI_H
#define HPMMAP_UAPI_H

#ifdef __KERNEL__
#include <linux/types.h>
#include <linux/ioctl.h>
#else
#include <linux/types.h>
#include <sys/ioctl.h>
#endif

#define HPMMAP_UAPI_VERSION 1u
#define HPMMAP_DEVICE "/dev/hpmmap"
#define HPMMAP_SYSFS "/sys/kernel/hpmmap"

/* Registration takes effect at the caller's next successful execve (hpmmap-run). */
#define HPMMAP_REG_ON_EXEC (1u << 0)
/* Pool exhausted: fail with ENOMEM instead of serving the request from Linux. */
#define HPMMAP_REG_NO_FALLBACK (1u << 1)
#define HPMMAP_REG_FLAGS (HPMMAP_REG_ON_EXEC | HPMMAP_REG_NO_FALLBACK)

/*
 * Register a process. Only the calling process can be registered (pid 0 or its own
 * pid): the module reserves address space in the caller's mm, which it can only do
 * from inside it. Errors: EINVAL (size, flags, page_shift, reserved), EPROTO (version),
 * ESRCH (no such pid), EPERM (another process), EBUSY (already registered),
 * ENOMEM (no room for the reserved region).
 */
struct hpmmap_register {
	__u32 size;       /* sizeof(struct hpmmap_register) */
	__u32 version;    /* HPMMAP_UAPI_VERSION */
	__s32 pid;        /* 0 or the caller's pid */
	__u32 flags;      /* HPMMAP_REG_* */
	__u32 page_shift; /* largest page: 30 (1 GiB) or 21 (2 MiB); 0 means 30 */
	__s32 node;       /* NUMA node of the pool to prefer, -1 for the local one */
	__u64 reserved;   /* must be 0 */
};

/* Deregister: no new memory is served; existing mappings stay valid until unmapped.
 * Errors: EINVAL, EPROTO, ESRCH, EPERM as above, ENOENT (not registered). */
struct hpmmap_deregister {
	__u32 size;
	__u32 version;
	__s32 pid;
	__u32 flags; /* must be 0 */
};

#define HPMMAP_NR_ORDERS 10 /* block orders: 2 MiB << 0 .. 2 MiB << 9 = 1 GiB */

struct hpmmap_stats {
	__u32 size;
	__u32 version;
	__u64 pool_bytes;
	__u64 free_bytes;
	__u64 bytes_mapped;  /* pool bytes held by processes */
	__u64 registered;    /* registered address spaces (serving) */
	__u64 mappings;      /* mappings served from the pool */
	__u64 fallbacks;     /* requests served by Linux because the pool was exhausted */
	__u64 faults;        /* page faults taken inside hpmmap mappings */
	__u64 fork_copies;   /* mappings copied into a forked child */
	__u64 fork_failures; /* child mappings left unbacked (pool exhausted at fork) */
	__u64 free_blocks[HPMMAP_NR_ORDERS]; /* all nodes */
	__s32 self;          /* 1 if the caller's mm is registered and serving */
	__u32 pad;
	__u64 self_blocks[HPMMAP_NR_ORDERS]; /* blocks held by the caller's mm, by order */
};

/*
 * Counters of one address space (issue 15: counters per rank). pid 0 reads the caller's
 * own registered address space while it lives; pid > 0 reads the newest record of an
 * address space of that process which has ended (exit, or exec into a new one): the
 * module keeps the last `rank_records` (module parameter, default 256) such records and
 * drops the oldest beyond that. HPMMAP_RANK_TAKE removes the record read (hpmmap-run
 * does, so that records of launched ranks do not pile up). A record is readable by
 * processes whose real or effective uid is the real uid the address space had, and by
 * CAP_SYS_ADMIN. Errors: EINVAL (size, flags, reserved, pid < 0, TAKE with pid 0),
 * EPROTO (version), ENOENT (no such record, or the caller is not registered), EPERM
 * (another user's record). A module older than this command answers ENOTTY.
 */
#define HPMMAP_RANK_TAKE (1u << 0)
#define HPMMAP_RANK_LIVE 1u  /* state: the caller's own address space, still running */
#define HPMMAP_RANK_ENDED 2u /* state: a kept record */

struct hpmmap_rank_stats {
	__u32 size;
	__u32 version;
	__s32 pid;            /* in: 0 (the caller) or the pid whose ended record to read */
	__u32 flags;          /* in: HPMMAP_RANK_TAKE */
	__u32 state;          /* out: HPMMAP_RANK_LIVE or HPMMAP_RANK_ENDED */
	__u32 uid;            /* out: the address space's real uid */
	__u64 faults;         /* page faults taken inside its hpmmap mappings */
	__u64 mappings;       /* mmap requests served from the pool */
	__u64 fallbacks;      /* requests served by Linux because the pool was exhausted */
	__u64 fork_copies;    /* its mappings copied into forked children */
	__u64 fork_failures;  /* child mappings left unbacked at fork */
	__u64 bytes_mapped;   /* pool bytes held now (live) or when it ended */
	__u64 bytes_peak;     /* most pool bytes held at once */
	__u64 reserved[2];    /* in: 0 */
};

#define HPMMAP_IOC_MAGIC 'H'
#define HPMMAP_IOC_REGISTER _IOW(HPMMAP_IOC_MAGIC, 1, struct hpmmap_register)
#define HPMMAP_IOC_DEREGISTER _IOW(HPMMAP_IOC_MAGIC, 2, struct hpmmap_deregister)
#define HPMMAP_IOC_STATS _IOWR(HPMMAP_IOC_MAGIC, 3, struct hpmmap_stats)
/* 4 was the test-only pin ioctl, now in hpmmap_test.ko: it stays ENOTTY here */
#define HPMMAP_IOC_RANK_STATS _IOWR(HPMMAP_IOC_MAGIC, 5, struct hpmmap_rank_stats)

#endif /* HPMMAP_UAPI_H */
