/* SPDX-License-Identifier: GPL-2.0 */
#ifndef HPMMAP_H
#define HPMMAP_H

#include <linux/types.h>
#include <linux/mm.h>
#include <linux/mutex.h>
#include <linux/xarray.h>
#include <linux/refcount.h>
#include <linux/hashtable.h>
#include <linux/pid.h>
#include <linux/uidgid.h>
#include "hpmmap_uapi.h"

#define HPM_UNIT_SHIFT 21 /* smallest block: 2 MiB */
#define HPM_UNIT (1ul << HPM_UNIT_SHIFT)
#define HPM_GIG (1ul << 30)
#define HPM_NORD HPMMAP_NR_ORDERS
#define HPM_MAX_NODES 8

/* ---- pool.c: physical pool and buddy allocator ---- */
struct hpm_blk {
	u64 off;	/* object offset the block backs (block-aligned) */
	phys_addr_t pa;
	unsigned int order; /* size = HPM_UNIT << order */
	struct rcu_head rcu;
};

static inline u64 hpm_blk_size(const struct hpm_blk *b)
{
	return (u64)HPM_UNIT << b->order;
}

int hpm_pool_init(void);
void hpm_pool_exit(void);
int hpm_pool_alloc(unsigned int order, int nid, phys_addr_t *pa);
void hpm_pool_free(phys_addr_t pa, unsigned int order);
void hpm_pool_release(phys_addr_t pa, unsigned int order);
void hpm_pool_retire(phys_addr_t pa, u64 len);
bool hpm_pool_reusable(phys_addr_t pa, u64 len);
bool hpm_pool_referenced(phys_addr_t pa, u64 len);
u64 hpm_pool_quarantined_bytes(void);
void *hpm_pa_to_va(phys_addr_t pa);
bool hpm_pa_in_pool(phys_addr_t pa);
int hpm_zero(phys_addr_t pa, u64 len);
void hpm_zero_all(phys_addr_t pa, u64 len);
u64 hpm_pool_bytes(void);
u64 hpm_pool_pv_zero_bytes(void);
int hpm_pool_show_source(char *buf);
u64 hpm_pool_free_bytes(void);
void hpm_pool_free_blocks(u64 out[HPM_NORD]);
int hpm_pool_show_nodes(char *buf, size_t len);

/* ---- counters (main.c) ---- */
struct hpm_stats {
	atomic64_t mappings, fallbacks, faults, fork_copies, fork_failures, registered;
};
extern struct hpm_stats hpm_st;
extern bool hpm_fallback;
bool hpm_should_fail(void); /* failure injection, main.c */ /* global policy: serve from Linux when the pool is empty */

/* ---- rank.c: counters of one address space, kept after it ends ---- */
struct hpm_acct {
	atomic64_t faults, mappings, fallbacks, fork_copies, fork_failures, peak_bytes;
	struct pid *pid; /* its process (tgid); NULL until known (a fork child's) */
	kuid_t uid;	 /* real uid */
};

void hpm_acct_init(struct hpm_acct *a, bool known_pid);
void hpm_acct_peak(struct hpm_acct *a, u64 held);
void hpm_rank_exit(void);
long hpm_ioc_rank(void __user *up);

/* ---- ctx.c: per address space state ---- */
enum hpm_req_kind { HPM_REQ_HOLD, HPM_REQ_ANCHOR, HPM_REQ_DATA };

struct hpm_ctx {
	struct hlist_node hnode;
	struct rcu_head rcu;
	struct mm_struct *mm;
	refcount_t ref;
	bool hashed;
	bool serving;	 /* interposes and serves new memory */
	bool brk_served; /* the heap lives in the region (registered at exec) */
	u32 flags;	 /* HPMMAP_REG_* */
	unsigned int page_shift;
	int node;
	struct mutex op_lock;  /* one hpmmap address-space operation at a time */
	struct mutex obj_lock; /* the block map */
	struct xarray blocks;  /* object offset >> 21 -> struct hpm_blk */
	unsigned long region_start, region_end, heap_base, heap_end, data_start;
	unsigned long hold_base; /* placeholder pgoff origin */
	u64 next_slot, small_cursor;
	bool big_wrapped, small_wrapped; /* offsets now come from a first-fit search */
	atomic64_t held_bytes;
	struct hpm_acct acct;
};

int hpm_ctx_init(void);
void hpm_ctx_exit(void);
struct hpm_ctx *hpm_ctx_get_mm(struct mm_struct *mm);
void hpm_ctx_put(struct hpm_ctx *ctx);
bool hpm_mm_hooked(struct mm_struct *mm);
int hpm_register_current(u32 flags, unsigned int page_shift, int node, bool on_exec);
int hpm_deregister_current(void);
int hpm_after_exec(u32 flags, unsigned int page_shift, int node);
u64 hpm_nr_serving(void);

long hpm_do_mmap(struct hpm_ctx *ctx, unsigned long addr, unsigned long len,
		 unsigned long prot, unsigned long flags);
long hpm_do_munmap(struct hpm_ctx *ctx, unsigned long start, unsigned long len,
		   bool *handled);
void hpm_repopulate(struct hpm_ctx *ctx, unsigned long start, unsigned long end);
void hpm_repopulate_exact(struct hpm_ctx *ctx, unsigned long start, unsigned long end);
unsigned long hpm_huge_extent(unsigned long addr);
void hpm_huge_extents(unsigned long start, unsigned long end, unsigned long *ext_start,
		      unsigned long *ext_end);
void hpm_repopulate_edges(struct hpm_ctx *ctx, unsigned long start, unsigned long end,
			  unsigned long ext_start, unsigned long ext_end);
long hpm_do_mremap(struct hpm_ctx *ctx, unsigned long old, unsigned long old_len,
		   unsigned long new_len, unsigned long flags, unsigned long new_addr);
long hpm_mprotect_walk(struct hpm_ctx *ctx, unsigned long start, unsigned long end,
		       unsigned long prot, long (*orig)(unsigned long, unsigned long, unsigned long));
long hpm_do_madvise(struct hpm_ctx *ctx, unsigned long start, unsigned long len,
		    int advice, long (*orig)(unsigned long, unsigned long, int));
unsigned long hpm_do_brk(struct hpm_ctx *ctx, unsigned long brk, bool *handled);
bool hpm_fallback_allowed(struct hpm_ctx *ctx);
void hpm_ctx_count_blocks(struct hpm_ctx *ctx, u64 out[HPM_NORD]);
bool hpm_in_region(struct hpm_ctx *ctx, unsigned long start, unsigned long end);
void hpm_rank_record(struct hpm_ctx *ctx);

/* ---- hooks.c ---- */
int hpm_hooks_init(void);
void hpm_hooks_exit(void);
unsigned long hpm_lookup_name(const char *name);
extern int (*hpm_p4d_alloc)(struct mm_struct *, pgd_t *, unsigned long);
extern int (*hpm_pud_alloc)(struct mm_struct *, p4d_t *, unsigned long);
extern int (*hpm_pmd_alloc)(struct mm_struct *, pud_t *, unsigned long);

#endif
