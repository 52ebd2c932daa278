// SPDX-License-Identifier: GPL-2.0
/*
 * Per address space state and the memory operations of registered processes.
 *
 * Model. Every hpmmap mapping is a real VMA: a MAP_SHARED mapping of one internal file
 * (never reachable from user space) whose page offset names a place in a per-mm
 * "object", a sparse set of pool blocks (offset -> 2 MiB .. 1 GiB block). Using Linux's
 * own VMAs and page tables, instead of a private page table walker under one big VMA,
 * is what makes the rest correct on 6.1:
 *  - exit and exec: Linux zaps the entries (devmap PUD/PMD/PTE, "special" because the
 *    file's inode is S_DAX) and frees every page table with free_pgtables(); the VMA
 *    close() then returns the blocks to the pool. Nothing to leak.
 *  - mprotect, partial munmap, MAP_FIXED: Linux splits VMAs and changes or clears
 *    entries, flushing the TLB on every CPU in mm_cpumask; we put back, at a smaller
 *    page size, what a split cleared (a 1 GiB entry is only broken where a range needs
 *    it). 6.1's change_pud_range() treats a huge PUD as a bad entry, so mprotect zaps
 *    1 GiB entries first (a normal flush) and re-inserts them after.
 *  - GUP/pin_user_pages: the VMA is neither VM_IO nor VM_PFNMAP and the entries are
 *    devmap, so GUP finds the ZONE_DEVICE struct pages (pool.c).
 *  - fork: the VMAs are shared file mappings without anon_vma, so Linux copies no
 *    page tables; our open() gives the child its own blocks and copies the contents
 *    eagerly (policy: the child gets a private, fully populated copy from the pool, so
 *    it takes no faults either; if the pool cannot hold the copy, the child's unbacked
 *    part raises SIGBUS on access and fork_failures counts it).
 * A private anonymous mapping must read zero and never share: offsets are never reused
 * by two live mappings, blocks are zeroed when allocated, and any part of a still held
 * block that is mapped again (mremap growth, brk) is zeroed then, or, while a device or
 * a pipe still references pages of it, left alone and replaced by new offsets (pool.c,
 * quarantine of pieces).
 *
 * Address space: registration reserves a region (1 TiB, 1 GiB aligned) with real
 * placeholder VMAs (PROT_NONE, no VM_MAY* bits, mergeable), so Linux never places
 * anything there; munmap inside it puts a placeholder back. The first page is an
 * anchor VMA whose close() marks the end of the mm; then the heap (brk) area; then the
 * data area where mmap requests are placed, 1 GiB aligned when they can use 1 GiB
 * pages, 2 MiB aligned otherwise.
 */
#include <linux/module.h>
#include <linux/fs.h>
#include <linux/file.h>
#include <linux/mount.h>
#include <linux/pseudo_fs.h>
#include <linux/mman.h>
#include <linux/huge_mm.h>
#include <linux/pfn_t.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/rculist.h>
#include <linux/sort.h>
#include <linux/capability.h>
#include <linux/sched/coredump.h>
#include "hpmmap.h"

#define REGION_SIZE (1ul << 40)
#define HEAP_MAX (64ul << 30)
#define OFF_HEAP 0ull
#define OFF_SMALL (1ull << 40)
#define OFF_BIG (1ull << 50)
#define SLOT_SHIFT 38 /* each large mapping owns 256 GiB of offsets to grow into */
#define BIG_SLOTS_MAX ((U64_MAX - OFF_BIG) >> SLOT_SHIFT)
#define SMALL_SPACE_MAX (OFF_BIG - OFF_SMALL)

/*
 * The object's offset space: mappings of 2 MiB and more take whole slots from the big
 * area, smaller ones a bump cursor in the small area. When a cursor reaches the end
 * (after about 67 million large mmaps or mremap moves, or 1 PiB of small ones), offsets
 * come from a first-fit search for a range no VMA and no block uses; none: ENOMEM (and
 * the Linux fallback where allowed). Both parameters may shrink the spaces (tests).
 */
static ulong big_slots = BIG_SLOTS_MAX;
module_param(big_slots, ulong, 0644);
MODULE_PARM_DESC(big_slots, "offset slots (256 GiB each) for large mappings per address space");
static ulong small_space = SMALL_SPACE_MAX;
module_param(small_space, ulong, 0644);
MODULE_PARM_DESC(small_space, "offset bytes for mappings below 2 MiB per address space");

static DEFINE_HASHTABLE(ctx_hash, 8);
static DEFINE_SPINLOCK(ctx_hash_lock);
static atomic_t nr_ctx = ATOMIC_INIT(0);
static atomic64_t nr_serving = ATOMIC64_INIT(0);

static struct vfsmount *hpm_mnt;
static struct file *hpm_file;

static const struct vm_operations_struct hpm_data_ops, hpm_anchor_ops, hpm_hold_ops;

/* ------------------------------------------------------------------ ctx lifetime */

u64 hpm_nr_serving(void)
{
	return atomic64_read(&nr_serving);
}

/* Called from the ftrace callback: preemption is off, no locks. */
bool notrace hpm_mm_hooked(struct mm_struct *mm)
{
	struct hpm_ctx *c;

	if (!mm || !atomic_read(&nr_ctx))
		return false;
	hash_for_each_possible_rcu_notrace(ctx_hash, c, hnode, (unsigned long)mm)
		if (c->mm == mm)
			return true;
	return false;
}

struct hpm_ctx *hpm_ctx_get_mm(struct mm_struct *mm)
{
	struct hpm_ctx *c, *found = NULL;

	rcu_read_lock();
	hash_for_each_possible_rcu(ctx_hash, c, hnode, (unsigned long)mm)
		if (c->mm == mm && refcount_inc_not_zero(&c->ref)) {
			found = c;
			break;
		}
	rcu_read_unlock();
	return found;
}

static void set_serving(struct hpm_ctx *ctx, bool on)
{
	if (ctx->serving == on)
		return;
	ctx->serving = on;
	if (on)
		atomic64_inc(&nr_serving);
	else
		atomic64_dec(&nr_serving);
}

static struct hpm_ctx *ctx_alloc(struct mm_struct *mm)
{
	struct hpm_ctx *ctx;

	if (!try_module_get(THIS_MODULE))
		return NULL;
	ctx = hpm_should_fail() ? NULL : kzalloc(sizeof(*ctx), GFP_KERNEL);
	if (!ctx) {
		module_put(THIS_MODULE);
		return NULL;
	}
	ctx->mm = mm;
	refcount_set(&ctx->ref, 1);
	mutex_init(&ctx->op_lock);
	mutex_init(&ctx->obj_lock);
	xa_init(&ctx->blocks);
	ctx->page_shift = 30;
	ctx->node = NUMA_NO_NODE;
	hpm_acct_init(&ctx->acct, true);
	/* Core dumps: hpmmap VMAs are DAX shared file mappings to fs/coredump.c, left out
	 * by the default filter; they stand for private anonymous memory, so they follow
	 * that bit (coredump_filter bit 10 governs them afterwards). */
	if (test_bit(MMF_DUMP_ANON_PRIVATE, &mm->flags))
		set_bit(MMF_DUMP_DAX_SHARED, &mm->flags);
	return ctx;
}

static void ctx_hash_add(struct hpm_ctx *ctx)
{
	spin_lock(&ctx_hash_lock);
	hash_add_rcu(ctx_hash, &ctx->hnode, (unsigned long)ctx->mm);
	ctx->hashed = true;
	atomic_inc(&nr_ctx);
	spin_unlock(&ctx_hash_lock);
}

/* Drops the hash table's reference. */
static void ctx_unhash(struct hpm_ctx *ctx)
{
	bool was;

	spin_lock(&ctx_hash_lock);
	was = ctx->hashed;
	if (was) {
		hash_del_rcu(&ctx->hnode);
		ctx->hashed = false;
		atomic_dec(&nr_ctx);
	}
	spin_unlock(&ctx_hash_lock);
	if (was) {
		set_serving(ctx, false);
		hpm_ctx_put(ctx);
	}
}

static void blk_free(struct hpm_ctx *ctx, struct hpm_blk *b)
{
	unsigned long i, n = 1ul << b->order;

	for (i = 0; i < n; i++)
		xa_erase(&ctx->blocks, (b->off >> HPM_UNIT_SHIFT) + i);
	hpm_pool_release(b->pa, b->order); /* or quarantine, while a device holds pages */
	atomic64_sub(hpm_blk_size(b), &ctx->held_bytes);
	kfree_rcu(b, rcu);
}

void hpm_ctx_put(struct hpm_ctx *ctx)
{
	struct hpm_blk *b;
	unsigned long idx;

	if (!refcount_dec_and_test(&ctx->ref))
		return;
	/* Last VMA gone (exit, exec): the page tables are already zapped and freed. */
	xa_for_each(&ctx->blocks, idx, b)
		if (idx == b->off >> HPM_UNIT_SHIFT)
			blk_free(ctx, b);
	xa_destroy(&ctx->blocks);
	put_pid(ctx->acct.pid);
	kfree_rcu(ctx, rcu);
	module_put(THIS_MODULE);
}

/* ------------------------------------------------------------ internal file */

struct hpm_req {
	struct list_head l;
	struct task_struct *task;
	struct hpm_ctx *ctx;
	enum hpm_req_kind kind;
};
static LIST_HEAD(reqs);
static DEFINE_SPINLOCK(req_lock);

static int hpm_file_mmap(struct file *f, struct vm_area_struct *vma)
{
	struct hpm_req *r, *req = NULL;

	spin_lock(&req_lock);
	list_for_each_entry(r, &reqs, l)
		if (r->task == current)
			req = r;
	spin_unlock(&req_lock);
	if (!req)
		return -EPERM;
	switch (req->kind) {
	case HPM_REQ_HOLD:
		vma->vm_flags &= ~(VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC);
		vma->vm_flags |= VM_DONTDUMP;
		vma->vm_ops = &hpm_hold_ops;
		vma->vm_private_data = NULL;
		break;
	case HPM_REQ_ANCHOR:
		vma->vm_flags &= ~(VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC);
		vma->vm_flags |= VM_DONTDUMP | VM_DONTEXPAND;
		vma->vm_ops = &hpm_anchor_ops;
		vma->vm_private_data = req->ctx;
		refcount_inc(&req->ctx->ref);
		break;
	case HPM_REQ_DATA:
		/* DONTEXPAND: growth goes through hpmmap's mremap, which backs it first. */
		vma->vm_flags |= VM_DONTEXPAND | VM_HUGEPAGE;
		vma->vm_ops = &hpm_data_ops;
		vma->vm_private_data = req->ctx;
		refcount_inc(&req->ctx->ref);
		break;
	}
	return 0;
}

/* msync(MS_SYNC) on anonymous memory succeeds; on these shared file VMAs it would
 * call fsync, so there must be one. */
static int hpm_file_fsync(struct file *f, loff_t start, loff_t end, int datasync)
{
	return 0;
}

/* No owner: alloc_file_pseudo() takes no module reference for it to drop; the
 * module is pinned by every ctx instead. */
static const struct file_operations hpm_data_fops = {
	.mmap = hpm_file_mmap,
	.fsync = hpm_file_fsync,
};

static unsigned long hpm_vm_mmap(struct hpm_ctx *ctx, enum hpm_req_kind kind,
				 unsigned long addr, unsigned long len, unsigned long prot,
				 bool fixed, u64 off)
{
	struct hpm_req req = { .task = current, .ctx = ctx, .kind = kind };
	unsigned long ret;

	if (kind == HPM_REQ_DATA && hpm_should_fail())
		return -ENOMEM;
	spin_lock(&req_lock);
	list_add(&req.l, &reqs);
	spin_unlock(&req_lock);
	ret = vm_mmap(hpm_file, addr, len, prot, MAP_SHARED | (fixed ? MAP_FIXED : 0), off);
	spin_lock(&req_lock);
	list_del(&req.l);
	spin_unlock(&req_lock);
	return ret;
}

/* Puts a placeholder over [a, b): unmaps whatever was there. */
static long hold_range(struct hpm_ctx *ctx, unsigned long a, unsigned long b)
{
	unsigned long r;

	if (a >= b)
		return 0;
	r = hpm_vm_mmap(ctx, HPM_REQ_HOLD, a, b - a, PROT_NONE, true, a - ctx->hold_base);
	return IS_ERR_VALUE(r) ? (long)r : 0;
}

static int hpm_init_fs_context(struct fs_context *fc)
{
	return init_pseudo(fc, 0x48504d4d) ? 0 : -ENOMEM;
}

static struct file_system_type hpm_fs_type = {
	.name = "hpmmap",
	.init_fs_context = hpm_init_fs_context,
	.kill_sb = kill_anon_super,
};

int hpm_ctx_init(void)
{
	struct inode *inode;

	hpm_mnt = kern_mount(&hpm_fs_type);
	if (IS_ERR(hpm_mnt))
		return PTR_ERR(hpm_mnt);
	inode = alloc_anon_inode(hpm_mnt->mnt_sb);
	if (IS_ERR(inode)) {
		kern_unmount(hpm_mnt);
		return PTR_ERR(inode);
	}
	/*
	 * S_DAX + S_IFCHR: Linux treats huge entries of these VMAs as "special" (no rmap,
	 * no refcounting: zap_huge_pud() would BUG() otherwise) and as device-dax, not
	 * fsdax, so FOLL_LONGTERM pins are allowed.
	 */
	inode->i_mode = S_IFCHR | 0600;
	inode->i_flags |= S_DAX;
	hpm_file = alloc_file_pseudo(inode, hpm_mnt, "hpmmap", O_RDWR, &hpm_data_fops);
	if (IS_ERR(hpm_file)) {
		iput(inode);
		kern_unmount(hpm_mnt);
		return PTR_ERR(hpm_file);
	}
	return 0;
}

static void hpm_fput_fn(struct work_struct *w)
{
	fput(hpm_file);
}

void hpm_ctx_exit(void)
{
	static DECLARE_WORK(w, hpm_fput_fn);

	/* The last fput must finish before the module text goes: from a kthread it is
	 * queued on the delayed list, which flush_delayed_fput() drains. */
	schedule_work(&w);
	flush_work(&w);
	flush_delayed_fput();
	kern_unmount(hpm_mnt);
}

/* ------------------------------------------------------------ the object */

static inline u64 vma_off(struct vm_area_struct *vma, unsigned long addr)
{
	return ((u64)vma->vm_pgoff << PAGE_SHIFT) + (addr - vma->vm_start);
}

static inline bool is_data(struct hpm_ctx *ctx, struct vm_area_struct *vma)
{
	return vma->vm_ops == &hpm_data_ops && vma->vm_private_data == ctx;
}

static inline struct hpm_blk *blk_at(struct hpm_ctx *ctx, u64 off)
{
	return xa_load(&ctx->blocks, off >> HPM_UNIT_SHIFT);
}

static int blk_alloc(struct hpm_ctx *ctx, u64 off, unsigned int order, bool zero)
{
	struct hpm_blk *b;
	unsigned long i, n = 1ul << order;
	phys_addr_t pa;
	int err;

	b = hpm_should_fail() ? NULL : kmalloc(sizeof(*b), GFP_KERNEL);
	if (!b)
		return -ENOMEM;
	err = hpm_should_fail() ? -ENOMEM : hpm_pool_alloc(order, ctx->node, &pa);
	if (err)
		goto free_b;
	if (zero) {
		err = hpm_zero(pa, (u64)HPM_UNIT << order);
		if (err)
			goto free_pa;
	}
	b->off = off;
	b->pa = pa;
	b->order = order;
	for (i = 0; i < n; i++) {
		err = hpm_should_fail() ? -ENOMEM :
		      xa_err(xa_store(&ctx->blocks, (off >> HPM_UNIT_SHIFT) + i, b, GFP_KERNEL));
		if (err) {
			while (i--)
				xa_erase(&ctx->blocks, (off >> HPM_UNIT_SHIFT) + i);
			goto free_pa;
		}
	}
	hpm_acct_peak(&ctx->acct, atomic64_add_return((u64)HPM_UNIT << order, &ctx->held_bytes));
	return 0;
free_pa:
	hpm_pool_free(pa, order);
free_b:
	kfree(b);
	return err;
}

/* Backs [off, off + len) with zeroed blocks: 1 GiB where a whole aligned GiB of the
 * range allows it and the policy says so, 2 MiB otherwise. Caller holds obj_lock. */
static int obj_fill(struct hpm_ctx *ctx, u64 off, u64 len)
{
	u64 u = round_down(off, HPM_UNIT), end = off + len;
	int err;

	while (u < end) {
		unsigned long idx = u >> HPM_UNIT_SHIFT;

		struct hpm_blk *held = blk_at(ctx, u);

		if (held) {
			/* A block still held for other offsets: these ones no VMA maps (callers
			 * guarantee it), but an earlier mapping may have left data there, and no
			 * device or pipe references it any more (map_at() asked obj_reusable()). */
			u64 s = max(u, off), e = min(u + HPM_UNIT, end);

			hpm_zero_all(held->pa + (s - held->off), e - s);
			u += HPM_UNIT;
			continue;
		}
		if (ctx->page_shift == 30 && IS_ALIGNED(u, HPM_GIG) && u >= off &&
		    u + HPM_GIG <= end &&
		    !xa_find(&ctx->blocks, &idx, idx + (HPM_GIG >> HPM_UNIT_SHIFT) - 1, XA_PRESENT) &&
		    !blk_alloc(ctx, u, HPM_NORD - 1, true)) {
			u += HPM_GIG;
			continue;
		}
		err = blk_alloc(ctx, u, 0, true);
		if (err)
			return err;
		u += HPM_UNIT;
	}
	return 0;
}

/*
 * [o1, o2) just left the last mapping of this mm that reached it, while the blocks behind
 * it stay (their other parts are mapped): pages a device or a pipe still references there
 * are watched by the pool (hpm_pool_retire) and counted as quarantined. Caller holds
 * obj_lock.
 */
static void obj_retire(struct hpm_ctx *ctx, u64 o1, u64 o2)
{
	while (o1 < o2) {
		struct hpm_blk *b = blk_at(ctx, o1);
		u64 e = min(o2, b ? b->off + hpm_blk_size(b) : round_up(o1 + 1, HPM_UNIT));

		if (b)
			hpm_pool_retire(b->pa + (o1 - b->off), e - o1);
		o1 = e;
	}
}

/*
 * May [off, off + len) be backed and mapped now? Offsets that parts of held blocks back
 * are given to a new mapping only when no page there is still referenced (a pin or a
 * pipe on memory this mm unmapped): zeroing them would hand the device the new
 * mapping's memory. Caller holds obj_lock.
 */
static bool obj_reusable(struct hpm_ctx *ctx, u64 off, u64 len)
{
	u64 u = round_down(off, HPM_UNIT), end = off + len;

	for (; u < end; u += HPM_UNIT) {
		struct hpm_blk *b = blk_at(ctx, u);
		u64 s = max(u, off), e = min(u + HPM_UNIT, end);

		if (b && !hpm_pool_reusable(b->pa + (s - b->off), e - s))
			return false;
	}
	return true;
}

struct ivl {
	u64 a, b;
};

/*
 * [o1, o2) is no longer mapped by the VMA being removed. Blocks no VMA of this mm
 * covers go back to the pool (or the quarantine); the uncovered part of a block still in
 * use is left as it is and zeroed by obj_fill() if it is ever mapped again.
 * Caller holds the mmap lock (read or write) and obj_lock.
 */
/* Does a data VMA next to `vma` in the address space map part of every block in
 * [lo, hi)? The usual case of a piece cut from a mapping (its rest is adjacent): then
 * no block can be freed, and obj_release() need not look at every VMA. */
static bool neighbours_cover(struct hpm_ctx *ctx, struct mm_struct *mm,
			     struct vm_area_struct *vma, u64 lo, u64 hi)
{
	/* any data VMA is a fair witness; these two are the likely ones (find_vma_prev()
	 * is not exported) */
	struct vm_area_struct *nb[2] = { find_vma(mm, vma->vm_start ? vma->vm_start - 1 : 0),
					 find_vma(mm, vma->vm_end) };
	struct hpm_blk *b;
	u64 u;
	int i;

	for (u = lo; u < hi;) {
		bool covered = false;

		b = blk_at(ctx, u);
		if (!b) {
			u += HPM_UNIT;
			continue;
		}
		for (i = 0; i < 2; i++) {
			u64 a, e;

			if (!nb[i] || nb[i] == vma || !is_data(ctx, nb[i]))
				continue;
			a = vma_off(nb[i], nb[i]->vm_start);
			e = a + (nb[i]->vm_end - nb[i]->vm_start);
			covered |= a < b->off + hpm_blk_size(b) && e > b->off;
		}
		if (!covered)
			return false;
		u = b->off + hpm_blk_size(b);
	}
	return true;
}

static void obj_release(struct hpm_ctx *ctx, struct mm_struct *mm, u64 o1, u64 o2,
			struct vm_area_struct *skip)
{
	struct vm_area_struct *vma;
	struct hpm_blk *b;
	struct ivl *iv = NULL;
	unsigned int n = 0, cap = 0, i;
	u64 lo, hi, u;

	if (o1 >= o2)
		return;
	b = blk_at(ctx, o1);
	lo = b ? b->off : round_down(o1, HPM_UNIT);
	b = blk_at(ctx, o2 - 1);
	hi = b ? b->off + hpm_blk_size(b) : round_up(o2, HPM_UNIT);
	if (skip && neighbours_cover(ctx, mm, skip, lo, hi)) {
		obj_retire(ctx, o1, o2); /* every block stays: no walk over all VMAs */
		return;
	}
	{
		VMA_ITERATOR(vmi, mm, 0);

		for_each_vma(vmi, vma) {
			u64 a, e;

			if (vma == skip || !is_data(ctx, vma))
				continue;
			a = vma_off(vma, vma->vm_start);
			e = a + (vma->vm_end - vma->vm_start);
			if (e <= lo || a >= hi)
				continue;
			if (n == cap) {
				struct ivl *nv = krealloc(iv, (cap + 16) * sizeof(*iv), GFP_KERNEL);

				if (!nv) { /* keep the blocks: leaking until exit beats corrupting */
					kfree(iv);
					obj_retire(ctx, o1, o2);
					return;
				}
				iv = nv;
				cap += 16;
			}
			iv[n].a = a;
			iv[n].b = e;
			n++;
		}
	}
	for (u = lo; u < hi;) {
		u64 bs, be;
		bool covered = false;

		b = blk_at(ctx, u);
		if (!b) {
			u += HPM_UNIT;
			continue;
		}
		bs = b->off;
		be = bs + hpm_blk_size(b);
		u = be;
		for (i = 0; i < n; i++)
			if (iv[i].a < be && iv[i].b > bs)
				covered = true;
		if (!covered) {
			blk_free(ctx, b);
			continue;
		}
		/* Still covered elsewhere: the uncovered part keeps what it held, out of
		 * everyone's reach; obj_fill() zeroes it if these offsets are mapped again
		 * (issue 12.6: no 4 KiB clear per munmap of a small piece), unless a device
		 * still holds pages of it (issue 12.1). */
		obj_retire(ctx, max(o1, bs), min(o2, be));
	}
	kfree(iv);
}

/* Are the offsets [o1, o2) mapped by no VMA? Caller holds the mmap lock. */
static bool offsets_free(struct hpm_ctx *ctx, struct mm_struct *mm, u64 o1, u64 o2)
{
	struct vm_area_struct *vma;
	VMA_ITERATOR(vmi, mm, 0);

	for_each_vma(vmi, vma) {
		u64 a;

		if (!is_data(ctx, vma))
			continue;
		a = vma_off(vma, vma->vm_start);
		if (a < o2 && a + (vma->vm_end - vma->vm_start) > o1)
			return false;
	}
	return true;
}

static int obj_zero(struct hpm_ctx *ctx, u64 off, u64 len)
{
	while (len) {
		struct hpm_blk *b = blk_at(ctx, off);
		u64 chunk = min(len, round_up(off + 1, HPM_UNIT) - off);

		if (b)
			hpm_zero_all(b->pa + (off - b->off), chunk);
		off += chunk;
		len -= chunk;
	}
	return 0;
}

static void obj_copy(struct hpm_ctx *dst, u64 doff, struct hpm_ctx *src, u64 soff, u64 len)
{
	while (len) {
		struct hpm_blk *d = blk_at(dst, doff), *s = blk_at(src, soff);
		u64 chunk = min3(len, round_up(doff + 1, HPM_UNIT) - doff,
				 round_up(soff + 1, HPM_UNIT) - soff);

		if (d && s)
			memcpy(hpm_pa_to_va(d->pa + (doff - d->off)),
			       hpm_pa_to_va(s->pa + (soff - s->off)), chunk);
		doff += chunk;
		soff += chunk;
		len -= chunk;
		cond_resched();
	}
}

/* ------------------------------------------------------------ page tables */

static pud_t *pud_get(struct mm_struct *mm, unsigned long addr, bool alloc)
{
	pgd_t *pgd = pgd_offset(mm, addr);
	p4d_t *p4d;

	if (pgd_none(*pgd) && (!alloc || hpm_p4d_alloc(mm, pgd, addr)))
		return NULL;
	p4d = p4d_offset(pgd, addr);
	if (p4d_none(*p4d) && (!alloc || hpm_pud_alloc(mm, p4d, addr)))
		return NULL;
	return pud_offset(p4d, addr);
}

static inline pfn_t blk_pfn(struct hpm_blk *b, u64 off)
{
	return phys_to_pfn_t(b->pa + (off - b->off), PFN_DEV | PFN_MAP);
}

/*
 * Map what [start, end) of the VMA lacks, with the largest page each place allows.
 * Entries already present are kept. Caller holds the mmap lock.
 */
static void populate_vma(struct vm_area_struct *vma, unsigned long start, unsigned long end)
{
	struct hpm_ctx *ctx = vma->vm_private_data;
	struct mm_struct *mm = vma->vm_mm;
	bool write = vma->vm_flags & VM_WRITE;
	unsigned long addr;

	if (!ctx || !(vma->vm_flags & (VM_READ | VM_WRITE | VM_EXEC)))
		return; /* PROT_NONE: an access must fault (SIGSEGV), so map nothing */
	start = max(start, vma->vm_start) & PAGE_MASK;
	end = min(end, vma->vm_end);
	addr = start;
	while (addr < end) {
		u64 off = vma_off(vma, addr);
		struct hpm_blk *b = blk_at(ctx, off);
		struct vm_fault vmf = { .vma = vma, .address = addr,
					.pgoff = off >> PAGE_SHIFT, .flags = FAULT_FLAG_WRITE };
		unsigned long next;
		pud_t *pud;
		pmd_t *pmd;

		if (!b) {
			addr = min(end, ALIGN(addr + 1, HPM_UNIT));
			continue;
		}
		pud = pud_get(mm, addr, true);
		if (!pud)
			return;
		/* Never walk below a leaf: a huge entry already maps this whole unit. */
		if (pud_devmap(*pud) || pud_trans_huge(*pud)) {
			addr = min(end, ALIGN(addr + 1, HPM_GIG));
			continue;
		}
		if (pud_none(*pud) && b->order == HPM_NORD - 1 && b->off == off &&
		    IS_ALIGNED(addr, HPM_GIG) && addr + HPM_GIG <= vma->vm_end) {
			vmf.pud = pud;
			vmf_insert_pfn_pud(&vmf, blk_pfn(b, off), write);
			addr += HPM_GIG;
			continue;
		}
		if (pud_none(*pud) && hpm_pmd_alloc(mm, pud, addr))
			return;
		pmd = pmd_offset(pud, addr);
		if (pmd_devmap(*pmd) || pmd_trans_huge(*pmd)) {
			addr = min(end, ALIGN(addr + 1, HPM_UNIT));
			continue;
		}
		if (pmd_none(*pmd) && IS_ALIGNED(addr, HPM_UNIT) && IS_ALIGNED(off, HPM_UNIT) &&
		    addr + HPM_UNIT <= vma->vm_end) {
			vmf.pmd = pmd;
			vmf_insert_pfn_pmd(&vmf, blk_pfn(b, off), write);
			addr += HPM_UNIT;
			continue;
		}
		next = min(end, ALIGN(addr + 1, HPM_UNIT));
		for (; addr < next; addr += PAGE_SIZE) {
			off = vma_off(vma, addr);
			b = blk_at(ctx, off);
			if (b)
				vmf_insert_mixed_mkwrite(vma, addr, blk_pfn(b, off));
		}
		cond_resched();
	}
}

/* Map what data VMAs lack in exactly [start, end). */
void hpm_repopulate_exact(struct hpm_ctx *ctx, unsigned long start, unsigned long end)
{
	struct mm_struct *mm = current->mm;
	struct vm_area_struct *vma;

	if (start >= end)
		return;
	mmap_read_lock(mm);
	{
		VMA_ITERATOR(vmi, mm, start);

		for_each_vma_range(vmi, vma, end)
			if (is_data(ctx, vma))
				populate_vma(vma, start, end);
	}
	mmap_read_unlock(mm);
}

/* Re-map, after Linux split or cleared entries, everything in [start, end). */
void hpm_repopulate(struct hpm_ctx *ctx, unsigned long start, unsigned long end)
{
	struct mm_struct *mm = current->mm;
	struct vm_area_struct *vma;

	if (start > end) /* wrapped below zero */
		start = 0;
	start = round_down(start, HPM_GIG);
	end = end > round_up(end, HPM_GIG) ? end : round_up(end, HPM_GIG);
	mmap_read_lock(mm);
	{
		VMA_ITERATOR(vmi, mm, start);

		for_each_vma_range(vmi, vma, end)
			if (is_data(ctx, vma))
				populate_vma(vma, start, end);
	}
	mmap_read_unlock(mm);
}

/*
 * How much around addr Linux clears when a munmap/mprotect/mremap boundary falls at addr:
 * a huge entry mapping addr is dropped whole (a 1 GiB PUD by zap, a 2 MiB devmap PMD by
 * split_huge_pmd on a file VMA); a PTE is not. Returns that entry's size, 0 for a PTE or
 * nothing. Read before the operation, so that only the dropped entries are mapped again
 * afterwards (issue 12.6: cutting a large mapping in 4 KiB pieces used to refill +-1 GiB
 * page by page on every call).
 */
static unsigned long huge_extent_locked(struct mm_struct *mm, unsigned long addr)
{
	pud_t *pud = pud_get(mm, addr, false);
	pmd_t *pmd;

	if (!pud || pud_none(*pud))
		return 0;
	if (pud_devmap(*pud) || pud_trans_huge(*pud))
		return HPM_GIG;
	if (pud_bad(*pud))
		return 0;
	pmd = pmd_offset(pud, addr);
	return pmd_devmap(*pmd) || pmd_trans_huge(*pmd) ? HPM_UNIT : 0;
}

unsigned long hpm_huge_extent(unsigned long addr)
{
	unsigned long ext;

	mmap_read_lock(current->mm);
	ext = huge_extent_locked(current->mm, addr);
	mmap_read_unlock(current->mm);
	return ext;
}

/* hpm_huge_extent() of both ends of a range under one lock (every munmap asks). */
void hpm_huge_extents(unsigned long start, unsigned long end, unsigned long *ext_start,
		      unsigned long *ext_end)
{
	mmap_read_lock(current->mm);
	*ext_start = huge_extent_locked(current->mm, start);
	*ext_end = huge_extent_locked(current->mm, end);
	mmap_read_unlock(current->mm);
}

/* Maps again what Linux dropped around [start, end), given hpm_huge_extent() of start
 * and end taken before. */
void hpm_repopulate_edges(struct hpm_ctx *ctx, unsigned long start, unsigned long end,
			  unsigned long ext_start, unsigned long ext_end)
{
	if (ext_start && !IS_ALIGNED(start, ext_start))
		hpm_repopulate_exact(ctx, round_down(start, ext_start), start);
	if (ext_end && !IS_ALIGNED(end, ext_end))
		hpm_repopulate_exact(ctx, end, round_up(end, ext_end));
}

/* ------------------------------------------------------------ vm operations */

static vm_fault_t hpm_fault(struct vm_fault *vmf)
{
	struct vm_area_struct *vma = vmf->vma;
	struct hpm_ctx *ctx = vma->vm_private_data;
	unsigned long addr = vmf->address & PAGE_MASK;
	struct hpm_blk *b;
	u64 off;

	atomic64_inc(&hpm_st.faults);
	if (!ctx)
		return VM_FAULT_SIGBUS;
	atomic64_inc(&ctx->acct.faults);
	off = vma_off(vma, addr);
	b = blk_at(ctx, off);
	if (!b)
		return VM_FAULT_SIGBUS; /* fork found the pool exhausted */
	return vmf_insert_mixed_mkwrite(vma, addr, blk_pfn(b, off));
}

/* Only reached where an entry was cleared (a split, a page walker): refill it. */
static vm_fault_t hpm_huge_fault(struct vm_fault *vmf, enum page_entry_size pe)
{
	struct vm_area_struct *vma = vmf->vma;
	struct hpm_ctx *ctx = vma->vm_private_data;
	bool write = vmf->flags & FAULT_FLAG_WRITE;
	unsigned long addr;
	struct hpm_blk *b;
	u64 off;

	if (!ctx)
		return VM_FAULT_SIGBUS;
	switch (pe) {
	case PE_SIZE_PUD:
		addr = vmf->address & HPAGE_PUD_MASK;
		if (addr < vma->vm_start || addr + HPM_GIG > vma->vm_end)
			return VM_FAULT_FALLBACK;
		off = vma_off(vma, addr);
		b = blk_at(ctx, off);
		if (!b || b->order != HPM_NORD - 1 || b->off != off)
			return VM_FAULT_FALLBACK;
		atomic64_inc(&hpm_st.faults);
		atomic64_inc(&ctx->acct.faults);
		return vmf_insert_pfn_pud(vmf, blk_pfn(b, off), write);
	case PE_SIZE_PMD:
		addr = vmf->address & HPAGE_PMD_MASK;
		if (addr < vma->vm_start || addr + HPM_UNIT > vma->vm_end)
			return VM_FAULT_FALLBACK;
		off = vma_off(vma, addr);
		b = blk_at(ctx, off);
		if (!b || !IS_ALIGNED(off, HPM_UNIT))
			return VM_FAULT_FALLBACK;
		atomic64_inc(&hpm_st.faults);
		atomic64_inc(&ctx->acct.faults);
		return vmf_insert_pfn_pmd(vmf, blk_pfn(b, off), write);
	default:
		return hpm_fault(vmf);
	}
}

static struct hpm_ctx *fork_ctx(struct hpm_ctx *parent, struct mm_struct *mm)
{
	struct hpm_ctx *ctx = ctx_alloc(mm);

	if (!ctx)
		return NULL;
	ctx->serving = false; /* set_serving() below counts it */
	put_pid(ctx->acct.pid); /* the child's pid does not exist yet: taken at its end */
	ctx->acct.pid = NULL;
	ctx->brk_served = parent->brk_served;
	ctx->flags = parent->flags;
	ctx->page_shift = parent->page_shift;
	ctx->node = parent->node;
	ctx->region_start = parent->region_start;
	ctx->region_end = parent->region_end;
	ctx->heap_base = parent->heap_base;
	ctx->heap_end = parent->heap_end;
	ctx->data_start = parent->data_start;
	ctx->hold_base = parent->hold_base;
	ctx->next_slot = parent->next_slot;
	ctx->small_cursor = parent->small_cursor;
	ctx->big_wrapped = parent->big_wrapped;
	ctx->small_wrapped = parent->small_wrapped;
	return ctx;
}

/* The child's ctx at fork, made by whichever of its VMAs dup_mmap() opens first.
 * Returns a reference for the caller's VMA. */
static struct hpm_ctx *child_ctx(struct hpm_ctx *parent, struct mm_struct *mm)
{
	struct hpm_ctx *ctx = hpm_ctx_get_mm(mm);

	if (ctx)
		return ctx;
	ctx = fork_ctx(parent, mm);
	if (!ctx)
		return NULL;
	refcount_inc(&ctx->ref); /* the caller's; the first one is the hash table's */
	ctx_hash_add(ctx);
	set_serving(ctx, parent->serving);
	return ctx;
}

/*
 * open() runs for the new half of a split, for mremap's copy, and for the child's
 * copy at fork (with both mm's write-locked by dup_mmap()).
 */
static void hpm_data_open(struct vm_area_struct *vma)
{
	struct hpm_ctx *parent = vma->vm_private_data, *ctx;
	u64 o1, o2, u;
	bool failed = false;

	if (!parent)
		return;
	if (parent->mm == vma->vm_mm) {
		refcount_inc(&parent->ref);
		return;
	}
	ctx = child_ctx(parent, vma->vm_mm);
	vma->vm_private_data = ctx;
	if (!ctx) {
		atomic64_inc(&hpm_st.fork_failures);
		atomic64_inc(&parent->acct.fork_failures);
		return;
	}
	o1 = vma_off(vma, vma->vm_start);
	o2 = o1 + (vma->vm_end - vma->vm_start);
	mutex_lock(&parent->obj_lock);
	mutex_lock_nested(&ctx->obj_lock, SINGLE_DEPTH_NESTING);
	for (u = round_down(o1, HPM_UNIT); u < o2;) {
		struct hpm_blk *pb = blk_at(parent, u);

		if (!pb || blk_at(ctx, u)) {
			u += HPM_UNIT;
			continue;
		}
		/* same block size as the parent where the pool allows, 2 MiB otherwise */
		if (pb->off == u && !blk_alloc(ctx, u, pb->order, true)) {
			u += hpm_blk_size(pb);
			continue;
		}
		if (blk_alloc(ctx, u, 0, true)) {
			failed = true;
			u += HPM_UNIT;
			continue;
		}
		u += HPM_UNIT;
	}
	/* MADV_WIPEONFORK: the child's blocks stay as allocated, zero */
	if (!(vma->vm_flags & VM_WIPEONFORK))
		obj_copy(ctx, o1, parent, o1, o2 - o1);
	mutex_unlock(&ctx->obj_lock);
	mutex_unlock(&parent->obj_lock);
	atomic64_inc(failed ? &hpm_st.fork_failures : &hpm_st.fork_copies);
	atomic64_inc(failed ? &parent->acct.fork_failures : &parent->acct.fork_copies);
	populate_vma(vma, vma->vm_start, vma->vm_end);
}

static void hpm_data_close(struct vm_area_struct *vma)
{
	struct hpm_ctx *ctx = vma->vm_private_data;
	u64 o1;

	if (!ctx)
		return;
	/* mm_users == 0: exit or exec tears the whole mm down; the last put frees all. */
	if (atomic_read(&vma->vm_mm->mm_users)) {
		o1 = vma_off(vma, vma->vm_start);
		mutex_lock(&ctx->obj_lock);
		obj_release(ctx, vma->vm_mm, o1, o1 + (vma->vm_end - vma->vm_start), vma);
		mutex_unlock(&ctx->obj_lock);
	}
	hpm_ctx_put(ctx);
}

static void hpm_anchor_open(struct vm_area_struct *vma)
{
	struct hpm_ctx *parent = vma->vm_private_data;

	if (!parent)
		return;
	if (parent->mm == vma->vm_mm) {
		refcount_inc(&parent->ref);
		return;
	}
	/* fork: children follow their parent */
	vma->vm_private_data = child_ctx(parent, vma->vm_mm);
}

static void hpm_anchor_close(struct vm_area_struct *vma)
{
	struct hpm_ctx *ctx = vma->vm_private_data;

	if (!ctx)
		return;
	if (ctx->region_start) /* a served address space, not a launcher's pending one */
		hpm_rank_record(ctx);
	ctx_unhash(ctx);
	hpm_ctx_put(ctx);
}

static vm_fault_t hpm_segv_fault(struct vm_fault *vmf)
{
	return VM_FAULT_SIGSEGV;
}

/*
 * Linux's mprotect calls this with the mmap lock held for writing, just before it
 * changes [start, end) of the VMA. 6.1's change_pud_range() mistakes a 1 GiB leaf for
 * a corrupt table ("bad pud") and drops it without a TLB flush, so the 1 GiB leaves
 * are zapped here first (with the flush); hpmmap's mprotect puts them back after.
 * Under the write lock no fault can re-insert one in between.
 */
static int hpm_data_mprotect(struct vm_area_struct *vma, unsigned long start,
			     unsigned long end, unsigned long newflags)
{
	unsigned long u;

	for (u = round_down(start, HPM_GIG); u < end; u += HPM_GIG) {
		pud_t *pud;

		if (u < vma->vm_start || u + HPM_GIG > vma->vm_end)
			continue;
		pud = pud_get(vma->vm_mm, u, false);
		if (pud && (pud_devmap(*pud) || pud_trans_huge(*pud)))
			zap_page_range(vma, u, HPM_GIG);
	}
	return 0;
}

static int hpm_hold_mprotect(struct vm_area_struct *vma, unsigned long start,
			     unsigned long end, unsigned long newflags)
{
	return -ENOMEM; /* reserved address space reads as unmapped */
}

static const struct vm_operations_struct hpm_data_ops = {
	.open = hpm_data_open,
	.close = hpm_data_close,
	.fault = hpm_fault,
	.huge_fault = hpm_huge_fault,
	.mprotect = hpm_data_mprotect,
};

static const struct vm_operations_struct hpm_anchor_ops = {
	.open = hpm_anchor_open,
	.close = hpm_anchor_close,
	.fault = hpm_segv_fault,
	.mprotect = hpm_hold_mprotect,
};

/* No open/close: adjacent placeholders merge back into one VMA. */
static const struct vm_operations_struct hpm_hold_ops = {
	.fault = hpm_segv_fault,
	.mprotect = hpm_hold_mprotect,
};

/* ------------------------------------------------------------ registration */

static int region_create(struct hpm_ctx *ctx)
{
	unsigned long addr, start, end, r;

	addr = hpm_vm_mmap(ctx, HPM_REQ_HOLD, 0, REGION_SIZE + HPM_GIG, PROT_NONE, false, 0);
	if (IS_ERR_VALUE(addr))
		return (long)addr;
	start = ALIGN(addr, HPM_GIG);
	end = start + REGION_SIZE;
	if (start > addr)
		vm_munmap(addr, start - addr);
	if (addr + REGION_SIZE + HPM_GIG > end)
		vm_munmap(end, addr + REGION_SIZE + HPM_GIG - end);
	ctx->hold_base = addr;
	ctx->region_start = start;
	ctx->region_end = end;
	ctx->heap_base = start + HPM_GIG;
	ctx->heap_end = ctx->heap_base + HEAP_MAX;
	ctx->data_start = ctx->heap_end;
	/* The anchor is the region's last page: exit_mmap() closes VMAs in address
	 * order, so every placeholder is gone before the anchor drops the last ref. */
	r = hpm_vm_mmap(ctx, HPM_REQ_ANCHOR, end - PAGE_SIZE, PAGE_SIZE, PROT_NONE, true,
			end - PAGE_SIZE - addr);
	if (IS_ERR_VALUE(r)) {
		vm_munmap(start, REGION_SIZE);
		return (long)r;
	}
	return 0;
}

static int check_params(unsigned int page_shift)
{
	return page_shift == 30 || page_shift == 21 ? 0 : -EINVAL;
}

int hpm_register_current(u32 flags, unsigned int page_shift, int node, bool on_exec)
{
	struct mm_struct *mm = current->mm;
	struct hpm_ctx *ctx;
	unsigned long r;
	int err;

	if (check_params(page_shift))
		return -EINVAL;
	ctx = hpm_ctx_get_mm(mm);
	if (ctx) {
		/* re-registering a deregistered address space re-enables it */
		err = -EBUSY;
		mutex_lock(&ctx->op_lock);
		if (!ctx->serving && ctx->region_start && !on_exec) {
			ctx->flags = flags;
			ctx->page_shift = page_shift;
			ctx->node = node;
			set_serving(ctx, true);
			err = 0;
		}
		mutex_unlock(&ctx->op_lock);
		hpm_ctx_put(ctx);
		return err;
	}
	ctx = ctx_alloc(mm);
	if (!ctx)
		return -ENOMEM;
	ctx->flags = flags;
	ctx->page_shift = page_shift;
	ctx->node = node;
	if (on_exec) {
		/* Only an anchor, so that exit or fork of the launcher is noticed. */
		r = hpm_vm_mmap(ctx, HPM_REQ_ANCHOR, 0, PAGE_SIZE, PROT_NONE, false, 0);
		err = IS_ERR_VALUE(r) ? (int)r : 0;
	} else {
		err = region_create(ctx);
	}
	if (err) {
		hpm_ctx_put(ctx);
		return err;
	}
	ctx_hash_add(ctx);
	if (!on_exec)
		set_serving(ctx, true);
	return 0;
}

int hpm_deregister_current(void)
{
	struct hpm_ctx *ctx = hpm_ctx_get_mm(current->mm);
	int err = -ENOENT;

	if (!ctx)
		return -ENOENT;
	mutex_lock(&ctx->op_lock);
	if (ctx->serving || (ctx->flags & HPMMAP_REG_ON_EXEC)) {
		/* Existing mappings stay valid and managed until unmapped or exit. */
		set_serving(ctx, false);
		ctx->flags &= ~HPMMAP_REG_ON_EXEC;
		err = 0;
	}
	mutex_unlock(&ctx->op_lock);
	hpm_ctx_put(ctx);
	return err;
}

/* A registered process finished execve: its new mm gets a region and the heap. */
int hpm_after_exec(u32 flags, unsigned int page_shift, int node)
{
	struct mm_struct *mm = current->mm;
	struct hpm_ctx *ctx = ctx_alloc(mm);
	int err;

	if (!ctx)
		return -ENOMEM;
	ctx->flags = flags & ~HPMMAP_REG_ON_EXEC;
	ctx->page_shift = page_shift;
	ctx->node = node;
	err = region_create(ctx);
	if (err) {
		hpm_ctx_put(ctx);
		return err;
	}
	mmap_write_lock(mm);
	mm->start_brk = mm->brk = ctx->heap_base;
	mmap_write_unlock(mm);
	ctx->brk_served = true;
	ctx_hash_add(ctx);
	set_serving(ctx, true);
	return 0;
}

bool hpm_in_region(struct hpm_ctx *ctx, unsigned long start, unsigned long end)
{
	return ctx->region_start && start < ctx->region_end && end > ctx->region_start;
}

/* ------------------------------------------------------------ operations */

static bool fallback_allowed(struct hpm_ctx *ctx)
{
	return READ_ONCE(hpm_fallback) && !(ctx->flags & HPMMAP_REG_NO_FALLBACK);
}

/* First fit among runs of placeholders in the data area. Caller holds the mmap lock. */
static unsigned long find_free_va(struct hpm_ctx *ctx, struct mm_struct *mm,
				  unsigned long len, unsigned long align)
{
	struct vm_area_struct *vma;
	unsigned long rs = 0, re = 0, a;
	bool run = false;
	VMA_ITERATOR(vmi, mm, ctx->data_start);

	for_each_vma_range(vmi, vma, ctx->region_end) {
		unsigned long vs = max(vma->vm_start, ctx->data_start);
		unsigned long ve = min(vma->vm_end, ctx->region_end - PAGE_SIZE);

		if (vma->vm_ops == &hpm_hold_ops && run && vs == re) {
			re = ve;
			continue;
		}
		if (run) {
			a = ALIGN(rs, align);
			if (a >= rs && a + len > a && a + len <= re)
				return a;
		}
		run = vma->vm_ops == &hpm_hold_ops;
		rs = vs;
		re = ve;
	}
	if (run) {
		a = ALIGN(rs, align);
		if (a >= rs && a + len > a && a + len <= re)
			return a;
	}
	return -ENOMEM;
}

static bool only_holds(struct mm_struct *mm, unsigned long a, unsigned long b)
{
	struct vm_area_struct *vma;
	unsigned long at = a;
	VMA_ITERATOR(vmi, mm, a);

	for_each_vma_range(vmi, vma, b) {
		if (vma->vm_ops != &hpm_hold_ops || vma->vm_start > at)
			return false;
		at = vma->vm_end;
	}
	return at >= b;
}

static int ivl_cmp(const void *x, const void *y)
{
	const struct ivl *a = x, *b = y;

	return a->a < b->a ? -1 : a->a > b->a;
}

static int ivl_push(struct ivl **iv, unsigned int *n, unsigned int *cap, u64 a, u64 b)
{
	if (*n == *cap) {
		struct ivl *nv = hpm_should_fail() ? NULL : kvrealloc(*iv, *cap * sizeof(**iv),
					   (*cap * 2 + 64) * sizeof(**iv), GFP_KERNEL);

		if (!nv)
			return -ENOMEM;
		*iv = nv;
		*cap = *cap * 2 + 64;
	}
	(*iv)[*n].a = a;
	(*iv)[*n].b = b;
	(*n)++;
	return 0;
}

/*
 * First fit: the lowest offset o in [lo, hi), o % align == 0, such that [o, o + need)
 * meets no data VMA's offsets and no block of the object. Caller holds op_lock (so no
 * other operation of this mm allocates offsets); takes the mmap lock and obj_lock.
 */
static int find_free_off(struct hpm_ctx *ctx, u64 lo, u64 hi, u64 need, u64 align, u64 *out)
{
	struct mm_struct *mm = current->mm;
	struct vm_area_struct *vma;
	struct ivl *iv = NULL;
	unsigned int n = 0, cap = 0, i;
	struct hpm_blk *b;
	unsigned long idx;
	u64 c;
	int err = 0;

	mmap_read_lock(mm);
	{
		VMA_ITERATOR(vmi, mm, 0);

		for_each_vma(vmi, vma) {
			u64 a, e;

			if (!is_data(ctx, vma))
				continue;
			a = vma_off(vma, vma->vm_start);
			e = a + (vma->vm_end - vma->vm_start);
			if (e <= lo || a >= hi)
				continue;
			err = ivl_push(&iv, &n, &cap, a, e);
			if (err)
				break;
		}
	}
	mmap_read_unlock(mm);
	mutex_lock(&ctx->obj_lock);
	xa_for_each_range(&ctx->blocks, idx, b, lo >> HPM_UNIT_SHIFT, (hi - 1) >> HPM_UNIT_SHIFT)
		if (!err && idx == b->off >> HPM_UNIT_SHIFT)
			err = ivl_push(&iv, &n, &cap, b->off, b->off + hpm_blk_size(b));
	mutex_unlock(&ctx->obj_lock);
	if (err) {
		kvfree(iv);
		return err;
	}
	sort(iv, n, sizeof(*iv), ivl_cmp, NULL);
	c = round_up(lo, align);
	for (i = 0; i < n && c < hi; i++) {
		if (iv[i].b <= c)
			continue;
		if (iv[i].a >= c + need)
			break;
		c = round_up(iv[i].b, align);
	}
	kvfree(iv);
	if (c < lo || c >= hi || need > hi - c)
		return -ENOMEM;
	*out = c;
	return 0;
}

/* Object offsets for a new mapping of len bytes at va. Caller holds op_lock. */
static int offset_for(struct hpm_ctx *ctx, unsigned long va, unsigned long len, u64 *off)
{
	u64 limit, lead = va & (HPM_GIG - 1), nslots, o;
	int err;

	if (len < HPM_UNIT) {
		limit = min_t(u64, READ_ONCE(small_space), SMALL_SPACE_MAX);
		if (!ctx->small_wrapped && ctx->small_cursor + len <= limit) {
			*off = OFF_SMALL + ctx->small_cursor;
			ctx->small_cursor += len;
			return 0;
		}
		ctx->small_wrapped = true;
		return find_free_off(ctx, OFF_SMALL, OFF_SMALL + limit, len, PAGE_SIZE, off);
	}
	/* Keep offset and address congruent modulo 1 GiB so large pages line up; the
	 * mapping owns every slot its offsets touch. */
	nslots = DIV_ROUND_UP(lead + len, 1ull << SLOT_SHIFT);
	limit = min_t(u64, READ_ONCE(big_slots), BIG_SLOTS_MAX);
	if (!ctx->big_wrapped && ctx->next_slot + nslots <= limit) {
		*off = OFF_BIG + (ctx->next_slot << SLOT_SHIFT) + lead;
		ctx->next_slot += nslots;
		return 0;
	}
	ctx->big_wrapped = true;
	err = find_free_off(ctx, OFF_BIG, OFF_BIG + (limit << SLOT_SHIFT), nslots << SLOT_SHIFT,
			    1ull << SLOT_SHIFT, &o);
	if (!err)
		*off = o + lead;
	return err;
}

/* Back and map [va, va + len) at object offset off. Caller holds op_lock. */
static long map_at(struct hpm_ctx *ctx, unsigned long va, unsigned long len,
		   unsigned long prot, u64 off)
{
	struct mm_struct *mm = current->mm;
	unsigned long r;
	int err;

	mutex_lock(&ctx->obj_lock);
	if (!obj_reusable(ctx, off, len)) {
		mutex_unlock(&ctx->obj_lock);
		return -EBUSY; /* nothing taken yet */
	}
	err = obj_fill(ctx, off, len);
	mutex_unlock(&ctx->obj_lock);
	if (!err) {
		r = hpm_vm_mmap(ctx, HPM_REQ_DATA, va, len, prot, true, off);
		if (IS_ERR_VALUE(r)) {
			err = (int)r;
			hold_range(ctx, va, va + len); /* MAP_FIXED may have unmapped it */
		}
	}
	if (err) {
		mmap_read_lock(mm);
		mutex_lock(&ctx->obj_lock);
		obj_release(ctx, mm, off, off + len, NULL);
		mutex_unlock(&ctx->obj_lock);
		mmap_read_unlock(mm);
		return err;
	}
	hpm_repopulate(ctx, va, va + len);
	atomic64_inc(&hpm_st.mappings);
	atomic64_inc(&ctx->acct.mappings);
	return va;
}

/*
 * map_at() at offsets the caller chose (mremap growing in place, brk: those following
 * the mapping's own), or, where a device still holds pages of a piece unmapped there
 * (map_at() says EBUSY), at new offsets: other memory, a VMA that does not merge with its
 * neighbour, the same addresses and contents (zero) for the program. Caller holds op_lock.
 */
static long map_at_or_new_offsets(struct hpm_ctx *ctx, unsigned long va, unsigned long len,
				  unsigned long prot, u64 off)
{
	long r = map_at(ctx, va, len, prot, off);
	int err;

	if (r != -EBUSY)
		return r;
	err = offset_for(ctx, va, len, &off);
	return err ? err : map_at(ctx, va, len, prot, off);
}

static long map_new(struct hpm_ctx *ctx, unsigned long addr, unsigned long len,
		    unsigned long prot, bool fixed, bool noreplace)
{
	struct mm_struct *mm = current->mm;
	unsigned long va = addr, align;

	if (fixed) {
		if (addr < ctx->region_start || addr + len > ctx->region_end - PAGE_SIZE)
			return -EINVAL;
		if (noreplace) {
			mmap_read_lock(mm);
			if (!only_holds(mm, addr, addr + len)) {
				mmap_read_unlock(mm);
				return -EEXIST;
			}
			mmap_read_unlock(mm);
		}
	} else {
		align = len >= HPM_GIG && ctx->page_shift == 30 ? HPM_GIG :
			len >= HPM_UNIT ? HPM_UNIT : PAGE_SIZE;
		mmap_read_lock(mm);
		va = find_free_va(ctx, mm, len, align);
		mmap_read_unlock(mm);
		if (IS_ERR_VALUE(va))
			return -ENOMEM;
	}
	{
		u64 off;
		int err = offset_for(ctx, va, len, &off);

		if (err)
			return err;
		return map_at(ctx, va, len, prot, off);
	}
}

long hpm_do_mmap(struct hpm_ctx *ctx, unsigned long addr, unsigned long len,
		 unsigned long prot, unsigned long flags)
{
	bool fixed = flags & (MAP_FIXED | MAP_FIXED_NOREPLACE);
	long ret;

	mutex_lock(&ctx->op_lock);
	ret = map_new(ctx, addr, len, prot, fixed, flags & MAP_FIXED_NOREPLACE);
	mutex_unlock(&ctx->op_lock);
	return ret;
}

long hpm_do_munmap(struct hpm_ctx *ctx, unsigned long start, unsigned long len,
		   bool *handled)
{
	unsigned long end = start + len, ext_s, ext_e;
	long ret = 0, r;

	*handled = hpm_in_region(ctx, start, end);
	if (!*handled)
		return 0;
	mutex_lock(&ctx->op_lock);
	hpm_huge_extents(start, end, &ext_s, &ext_e);
	if (start < ctx->region_start)
		ret = vm_munmap(start, ctx->region_start - start);
	if (end > ctx->region_end) {
		r = vm_munmap(ctx->region_end, end - ctx->region_end);
		ret = ret ?: r;
	}
	/* The anchor stays: the region remains reserved while the mm lives. */
	r = hold_range(ctx, max(start, ctx->region_start), min(end, ctx->region_end - PAGE_SIZE));
	ret = ret ?: r;
	hpm_repopulate_edges(ctx, start, end, ext_s, ext_e);
	mutex_unlock(&ctx->op_lock);
	return ret;
}


static unsigned long vma_prot(struct vm_area_struct *vma)
{
	return (vma->vm_flags & VM_READ ? PROT_READ : 0) |
	       (vma->vm_flags & VM_WRITE ? PROT_WRITE : 0) |
	       (vma->vm_flags & VM_EXEC ? PROT_EXEC : 0);
}

/*
 * Is [a, b) covered, without gaps, by data VMAs of ctx? One mapping can be several
 * VMAs (mprotect split it, mremap grew it in place). Caller holds the mmap lock.
 */
static bool data_covers(struct hpm_ctx *ctx, struct mm_struct *mm, unsigned long a,
			unsigned long b)
{
	struct vm_area_struct *vma;
	unsigned long at = a;
	VMA_ITERATOR(vmi, mm, a);

	for_each_vma_range(vmi, vma, b) {
		if (!is_data(ctx, vma) || vma->vm_start > at)
			return false;
		at = vma->vm_end;
	}
	return at >= b;
}

/* Copy the contents of [src, src + len) (data VMAs) to offset doff on. */
static void copy_range(struct hpm_ctx *ctx, struct mm_struct *mm, unsigned long src,
		       unsigned long len, u64 doff)
{
	struct vm_area_struct *vma;
	VMA_ITERATOR(vmi, mm, src);

	mutex_lock(&ctx->obj_lock);
	for_each_vma_range(vmi, vma, src + len) {
		unsigned long a = max(src, vma->vm_start), b = min(src + len, vma->vm_end);

		obj_copy(ctx, doff + (a - src), ctx, vma_off(vma, a), b - a);
	}
	mutex_unlock(&ctx->obj_lock);
}

long hpm_do_mremap(struct hpm_ctx *ctx, unsigned long old, unsigned long old_len,
		   unsigned long new_len, unsigned long flags, unsigned long new_addr)
{
	struct mm_struct *mm = current->mm;
	struct vm_area_struct *vma;
	unsigned long prot, dest;
	u64 o_end, o_new;
	long ret;

	if (flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP))
		return -EINVAL;
	if ((flags & MREMAP_FIXED) && !(flags & MREMAP_MAYMOVE))
		return -EINVAL;
	if (flags & MREMAP_DONTUNMAP)
		return -EINVAL; /* hpmmap memory cannot be left behind unbacked */
	if (offset_in_page(old))
		return -EINVAL;
	old_len = PAGE_ALIGN(old_len);
	new_len = PAGE_ALIGN(new_len);
	if (!new_len || !old_len || old + old_len < old)
		return -EINVAL;
	if ((flags & MREMAP_FIXED) &&
	    (offset_in_page(new_addr) || new_addr + new_len < new_addr ||
	     (new_addr < old + old_len && old < new_addr + new_len)))
		return -EINVAL;

	mutex_lock(&ctx->op_lock);
	mmap_read_lock(mm);
	if (!data_covers(ctx, mm, old, old + old_len)) {
		mmap_read_unlock(mm);
		ret = -EFAULT;
		goto out;
	}
	vma = find_vma(mm, old + old_len - 1);
	prot = vma_prot(vma);
	o_end = vma_off(vma, old + old_len);
	if (!(flags & MREMAP_FIXED) && new_len > old_len &&
	    old + old_len == vma->vm_end && old + new_len > old &&
	    old + new_len <= ctx->region_end - PAGE_SIZE &&
	    only_holds(mm, old + old_len, old + new_len) &&
	    offsets_free(ctx, mm, o_end, o_end + (new_len - old_len)) &&
	    (o_end < OFF_BIG ? o_end + (new_len - old_len) <= OFF_BIG :
	     (o_end + (new_len - old_len) - 1) >> SLOT_SHIFT == (o_end - 1) >> SLOT_SHIFT)) {
		mmap_read_unlock(mm);
		/* grow in place: the offsets after the mapping are its own */
		ret = map_at_or_new_offsets(ctx, old + old_len, new_len - old_len, prot, o_end);
		if (ret >= 0)
			ret = old;
		/*
		 * The small cursor hands out the offsets past it: never these again while
		 * this mapping lives (they may lie past it when it was the last one).
		 */
		if (ret >= 0 && o_end >= OFF_SMALL && o_end < OFF_BIG)
			ctx->small_cursor = max(ctx->small_cursor,
						o_end + (new_len - old_len) - OFF_SMALL);
		goto out;
	}
	prot = vma_prot(find_vma(mm, old));
	mmap_read_unlock(mm);
	if (!(flags & MREMAP_FIXED) && new_len <= old_len) {
		ret = hold_range(ctx, old + new_len, old + old_len);
		hpm_repopulate(ctx, old + new_len - HPM_GIG, old + new_len);
		if (!ret)
			ret = old;
		goto out;
	}
	if (!(flags & MREMAP_MAYMOVE)) {
		ret = -ENOMEM;
		goto out;
	}
	/* move: a new mapping, a copy, then the old range is given back */
	ret = map_new(ctx, new_addr, new_len, prot, flags & MREMAP_FIXED, false);
	if (ret < 0)
		goto out;
	dest = ret;
	mmap_read_lock(mm);
	vma = find_vma(mm, dest);
	if (vma && is_data(ctx, vma) && vma->vm_start <= dest) {
		o_new = vma_off(vma, dest);
		copy_range(ctx, mm, old, min(old_len, new_len), o_new);
	}
	mmap_read_unlock(mm);
	hold_range(ctx, old, old + old_len);
	hpm_repopulate(ctx, old - HPM_GIG, old);
	hpm_repopulate(ctx, old + old_len, old + old_len + HPM_GIG);
	ret = dest;
out:
	mutex_unlock(&ctx->op_lock);
	return ret;
}

/* Does a device or a pipe still reference a page behind [off, off + len)? */
static bool obj_referenced(struct hpm_ctx *ctx, u64 off, u64 len)
{
	while (len) {
		struct hpm_blk *b = blk_at(ctx, off);
		u64 chunk = min(len, round_up(off + 1, HPM_UNIT) - off);

		if (b && hpm_pool_referenced(b->pa + (off - b->off), chunk))
			return true;
		off += chunk;
		len -= chunk;
	}
	return false;
}

static long data_vma_flags(struct hpm_ctx *ctx, unsigned long start, unsigned long end,
			   unsigned long set, unsigned long clear);

/*
 * [a, b), one data VMA's stretch, must read zero (MADV_DONTNEED, a brk shrink) while a
 * device or a pipe still references pages of it. Linux would give the program new pages
 * and leave the old ones to their holder; zeroing in place would let the holder keep
 * writing into what the program reads. So the stretch is mapped again at new offsets
 * (new, zeroed memory, same protection and dump/fork flags), and the replaced piece goes
 * to the quarantine as an unmapped one does (obj_release). EAGAIN, nothing changed,
 * where the pool or the offsets cannot hold the copy. Caller holds op_lock.
 */
static long replace_referenced(struct hpm_ctx *ctx, unsigned long a, unsigned long b,
			       unsigned long prot, unsigned long flags)
{
	u64 off;
	long r = offset_for(ctx, a, b - a, &off);

	if (!r)
		r = map_at(ctx, a, b - a, prot, off);
	if (r < 0)
		return -EAGAIN;
	return flags ? data_vma_flags(ctx, a, b, flags, 0) : 0;
}

/*
 * Zero what data VMAs map in [start, end) (MADV_DONTNEED, the part of the heap's last
 * 2 MiB step above a lowered break): in place, or by replace_referenced() where pages
 * are still referenced. Caller holds op_lock.
 */
static long zero_va(struct hpm_ctx *ctx, unsigned long start, unsigned long end)
{
	struct mm_struct *mm = current->mm;
	unsigned long at, a, b = start, prot = 0, flags = 0;
	long err = 0;

	for (at = start; at < end && !err; at = b) {
		struct vm_area_struct *vma;
		bool replace = false;

		mmap_read_lock(mm);
		vma = find_vma(mm, at);
		if (!vma || vma->vm_start >= end) {
			mmap_read_unlock(mm);
			break;
		}
		a = max(at, vma->vm_start);
		b = min(end, vma->vm_end);
		if (is_data(ctx, vma)) {
			u64 off = vma_off(vma, a);

			mutex_lock(&ctx->obj_lock);
			replace = obj_referenced(ctx, off, b - a);
			if (!replace)
				obj_zero(ctx, off, b - a);
			mutex_unlock(&ctx->obj_lock);
			prot = vma_prot(vma);
			flags = vma->vm_flags & (VM_WIPEONFORK | VM_DONTDUMP);
		}
		mmap_read_unlock(mm);
		if (replace)
			err = replace_referenced(ctx, a, b, prot, flags);
	}
	return err;
}

enum seg_kind { SEG_HOLE, SEG_DATA, SEG_LINUX };

/* The kind of memory at addr and where that stretch ends (at most end). */
static enum seg_kind segment_at(struct hpm_ctx *ctx, unsigned long addr, unsigned long end,
				unsigned long *seg_end)
{
	struct mm_struct *mm = current->mm;
	struct vm_area_struct *vma;
	enum seg_kind k;

	mmap_read_lock(mm);
	vma = find_vma(mm, addr);
	if (!vma || vma->vm_start >= end) {
		*seg_end = end;
		k = SEG_HOLE;
	} else if (vma->vm_start > addr) {
		*seg_end = vma->vm_start;
		k = SEG_HOLE;
	} else {
		*seg_end = min(end, vma->vm_end);
		/* placeholders and the anchor read as unmapped to the program */
		k = is_data(ctx, vma) ? SEG_DATA :
		    vma->vm_ops == &hpm_hold_ops || vma->vm_ops == &hpm_anchor_ops ? SEG_HOLE :
										  SEG_LINUX;
	}
	mmap_read_unlock(mm);
	return k;
}

/*
 * mprotect over a range that may contain placeholders (holes to the program): Linux's
 * order, applied VMA by VMA from start, ENOMEM at the first hole (nothing changed when
 * start itself is in one). Linux alone would answer EACCES at a placeholder (it has no
 * VM_MAY* bits). Caller holds op_lock.
 */
long hpm_mprotect_walk(struct hpm_ctx *ctx, unsigned long start, unsigned long end,
		       unsigned long prot, long (*orig)(unsigned long, unsigned long, unsigned long))
{
	unsigned long at, next;
	long ret = 0;

	for (at = start; at < end && !ret; at = next)
		ret = segment_at(ctx, at, end, &next) == SEG_HOLE ? -ENOMEM :
								     orig(at, next - at, prot);
	return ret;
}

typedef int (*split_vma_fn)(struct mm_struct *mm, struct vm_area_struct *vma,
			    unsigned long addr, int new_below);

/*
 * VMA-flag advice that Linux refuses on hpmmap's shared file VMAs but gives private
 * anonymous memory: WIPEONFORK/KEEPONFORK (EINVAL on any file VMA) and DODUMP (EINVAL
 * because of VM_DONTEXPAND). Done as madvise_update_vma() does it, the VMA split at the
 * range's ends (split_vma, not exported: found through kallsyms), without re-merging.
 * [start, end) lies in one data VMA (segment_at); op_lock keeps it there.
 */
/* A 1 GiB leaf must not straddle a split (6.1 splits only PMDs there, as
 * hpm_data_mprotect() knows): clear the one around addr; it is mapped again after. */
static void zap_gig_around(struct vm_area_struct *vma, unsigned long addr)
{
	unsigned long g = round_down(addr, HPM_GIG);
	pud_t *pud;

	if (IS_ALIGNED(addr, HPM_GIG) || g < vma->vm_start || g + HPM_GIG > vma->vm_end)
		return;
	pud = pud_get(vma->vm_mm, g, false);
	if (pud && (pud_devmap(*pud) || pud_trans_huge(*pud)))
		zap_page_range(vma, g, HPM_GIG);
}

static long data_vma_flags(struct hpm_ctx *ctx, unsigned long start, unsigned long end,
			   unsigned long set, unsigned long clear)
{
	static split_vma_fn split;
	struct mm_struct *mm = current->mm;
	struct vm_area_struct *vma;
	unsigned long ext_s, ext_e;
	bool cut_s = false, cut_e = false;
	long ret = 0;

	if (!split)
		split = (split_vma_fn)hpm_lookup_name("split_vma");
	if (!split)
		return -ENOSYS;
	hpm_huge_extents(start, end, &ext_s, &ext_e);
	if (mmap_write_lock_killable(mm))
		return -EINTR;
	vma = find_vma(mm, start);
	if (!vma || vma->vm_start > start || vma->vm_end < end || !is_data(ctx, vma)) {
		ret = -ENOMEM;
		goto out;
	}
	if (((vma->vm_flags | set) & ~clear) == vma->vm_flags)
		goto out;
	if (vma->vm_start < start) {
		zap_gig_around(vma, start);
		cut_s = true;
		ret = split(mm, vma, start, 1); /* vma keeps the upper part */
		if (ret)
			goto out;
	}
	if (vma->vm_end > end) {
		zap_gig_around(vma, end);
		cut_e = true;
		ret = split(mm, vma, end, 0); /* vma keeps the lower part */
		if (ret)
			goto out;
	}
	vma->vm_flags = (vma->vm_flags | set) & ~clear;
out:
	mmap_write_unlock(mm);
	/* A split clears the huge entry around its address on both sides: map it again. */
	if (cut_s && ext_s && !IS_ALIGNED(start, ext_s))
		hpm_repopulate_exact(ctx, round_down(start, ext_s), round_up(start, ext_s));
	if (cut_e && ext_e && !IS_ALIGNED(end, ext_e))
		hpm_repopulate_exact(ctx, round_down(end, ext_e), round_up(end, ext_e));
	return ret;
}

/*
 * MADV_SOFT_OFFLINE / MADV_HWPOISON go to madvise_inject_error() in Linux, page by page
 * with get_user_pages_fast() before any VMA walk: a page that is not mapped answers
 * EFAULT (not ENOMEM), stopping there. Soft offline of hpmmap memory keeps the data in
 * place (Linux migrates it to another page: the program sees the same bytes, 0).
 *
 * MADV_HWPOISON on hpmmap memory is refused with EBUSY, the answer Linux's
 * memory_failure() gives for memory it cannot retire (kernel, reserved and device-dax
 * pages, these ZONE_DEVICE pages among them), and hpmmap does not hand it to Linux at
 * all. Linux would retire one 4 KiB page; here the page is part of a 2 MiB..1 GiB pool
 * block, and retiring it for good would take the whole block from the pool (a test
 * ioctl must not cost a GiB), while retiring it only until munmap would give the
 * poisoned page to the next process. So nothing is poisoned: the data stays, no signal
 * follows, the block goes back to the pool as usual. Linux memory before the first
 * hpmmap page of the range is still poisoned by Linux, as its page-by-page walk would.
 */
static long inject_error(struct hpm_ctx *ctx, unsigned long start, unsigned long end,
			 int advice, long (*orig)(unsigned long, unsigned long, int))
{
	unsigned long at, next;
	long ret = 0;

	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	mutex_lock(&ctx->op_lock);
	for (at = start; at < end && !ret; at = next) {
		switch (segment_at(ctx, at, end, &next)) {
		case SEG_HOLE:
			ret = -EFAULT;
			break;
		case SEG_DATA:
			if (advice == MADV_HWPOISON) {
				pr_info_ratelimited("hpmmap: MADV_HWPOISON at %#lx (pid %d) refused: pool memory is not poisoned (EBUSY)\n",
						    at, task_tgid_nr(current));
				ret = -EBUSY;
			}
			break;
		case SEG_LINUX:
			ret = orig(at, next - at, advice);
			break;
		}
	}
	mutex_unlock(&ctx->op_lock);
	return ret;
}

/*
 * madvise over a range that may mix hpmmap memory, Linux memory and holes (issue 12.6):
 * each stretch in address order, as Linux's madvise_walk_vmas() does: hpmmap memory
 * gets the result private anonymous memory would get (DONTNEED: reads zero; FREE, COLD,
 * PAGEOUT, WILLNEED, DODUMP, SOFT_OFFLINE: nothing to do, 0; REMOVE: EINVAL, data kept),
 * Linux memory goes to Linux (never hpmmap's huge entries, which its walkers take for
 * corrupt), a hole (placeholders included) makes the call return ENOMEM after the rest
 * is done, and the first other error stops the walk. Advice that only sets VMA flags or
 * populates goes to Linux stretch by stretch, holes left out; unknown advice to Linux
 * whole. WIPEONFORK, KEEPONFORK and DODUMP set hpmmap's own VMA flags (data_vma_flags);
 * COLLAPSE has nothing to collapse (already 2 MiB / 1 GiB pages): 0. MADV_HWPOISON:
 * EBUSY, nothing poisoned (inject_error).
 */
long hpm_do_madvise(struct hpm_ctx *ctx, unsigned long start, unsigned long len,
		    int advice, long (*orig)(unsigned long, unsigned long, int))
{
	unsigned long end, at, next;
	long ret = 0, hole = 0;
	bool zero = false, linux_too = false, inject = false;

	switch (advice) {
	case MADV_NORMAL:
	case MADV_RANDOM:
	case MADV_SEQUENTIAL:
	case MADV_DONTFORK:
	case MADV_DOFORK:
	case MADV_MERGEABLE:
	case MADV_UNMERGEABLE:
	case MADV_HUGEPAGE:
	case MADV_NOHUGEPAGE:
	case MADV_DONTDUMP:
	case MADV_POPULATE_READ:
	case MADV_POPULATE_WRITE:
		/* VMA flags and population: Linux's own code on our VMAs too, but never on
		 * the placeholders, which are holes to the program */
		linux_too = true;
		break;
	case MADV_DONTNEED:
	case MADV_DONTNEED_LOCKED:
		zero = true; /* private anonymous memory reads zero afterwards */
		break;
	case MADV_SOFT_OFFLINE:
	case MADV_HWPOISON:
		inject = true;
		break;
	case MADV_FREE:
	case MADV_COLD:
	case MADV_PAGEOUT:
	case MADV_WILLNEED:
	case MADV_REMOVE:
	case MADV_DODUMP:
	case MADV_WIPEONFORK:
	case MADV_KEEPONFORK:
	case MADV_COLLAPSE:
		break;
	default:
		return orig(start, len, advice);
	}
	if (offset_in_page(start))
		return -EINVAL;
	end = start + PAGE_ALIGN(len);
	if (end < start || (len && !PAGE_ALIGN(len)))
		return -EINVAL;
	if (end == start)
		return 0;
	if (inject) /* Linux's order: alignment, then capability, then pages to len */
		return inject_error(ctx, start, start + len, advice, orig);
	mutex_lock(&ctx->op_lock);
	for (at = start; at < end && !ret; at = next) {
		switch (segment_at(ctx, at, end, &next)) {
		case SEG_HOLE:
			hole = -ENOMEM;
			break;
		case SEG_DATA:
			if (linux_too)
				ret = orig(at, next - at, advice);
			else if (advice == MADV_REMOVE)
				ret = -EINVAL; /* needs a shared mapping */
			else if (advice == MADV_WIPEONFORK)
				ret = data_vma_flags(ctx, at, next, VM_WIPEONFORK, 0);
			else if (advice == MADV_KEEPONFORK)
				ret = data_vma_flags(ctx, at, next, 0, VM_WIPEONFORK);
			else if (advice == MADV_DODUMP)
				ret = data_vma_flags(ctx, at, next, 0, VM_DONTDUMP);
			else if (zero)
				ret = zero_va(ctx, at, next);
			break;
		case SEG_LINUX:
			ret = orig(at, next - at, advice);
			/* MADV_FREE on Linux's file mappings: EINVAL, as Linux says */
			break;
		}
	}
	mutex_unlock(&ctx->op_lock);
	return ret ?: hole;
}

unsigned long hpm_do_brk(struct hpm_ctx *ctx, unsigned long brk, bool *handled)
{
	struct mm_struct *mm = current->mm;
	unsigned long cur, top_old, top_new, ret;

	*handled = ctx->brk_served;
	if (!*handled)
		return 0;
	mutex_lock(&ctx->op_lock);
	cur = ret = mm->brk;
	if (brk < mm->start_brk || brk > ctx->heap_end)
		goto out;
	/* The heap is mapped in 2 MiB steps so it can use large pages. */
	top_old = ALIGN(cur, HPM_UNIT);
	top_new = ALIGN(brk, HPM_UNIT);
	if (top_new > top_old) {
		long r;

		mmap_read_lock(mm);
		if (!only_holds(mm, top_old, top_new)) { /* something was mapped there */
			mmap_read_unlock(mm);
			goto out;
		}
		mmap_read_unlock(mm);
		r = map_at_or_new_offsets(ctx, top_old, top_new - top_old, PROT_READ | PROT_WRITE,
					  OFF_HEAP + (top_old - ctx->heap_base));
		if (r < 0) {
			if (r == -ENOMEM) { /* malloc falls back to mmap */
				atomic64_inc(&hpm_st.fallbacks);
				atomic64_inc(&ctx->acct.fallbacks);
			}
			goto out;
		}
	}
	/* Memory between the break and the 2 MiB step is mapped but must read zero when
	 * the break moves over it again (and no device may write it meanwhile). */
	if (brk < cur && zero_va(ctx, PAGE_ALIGN(brk), min(top_new, top_old)))
		goto out;
	if (top_new < top_old) {
		hold_range(ctx, top_new, top_old);
		hpm_repopulate(ctx, top_new - HPM_GIG, top_new);
	}
	mmap_write_lock(mm);
	mm->brk = brk;
	mmap_write_unlock(mm);
	ret = brk;
out:
	mutex_unlock(&ctx->op_lock);
	return ret;
}

bool hpm_fallback_allowed(struct hpm_ctx *ctx)
{
	return fallback_allowed(ctx);
}

void hpm_ctx_count_blocks(struct hpm_ctx *ctx, u64 out[HPM_NORD])
{
	struct hpm_blk *b;
	unsigned long idx;

	memset(out, 0, sizeof(u64) * HPM_NORD);
	mutex_lock(&ctx->obj_lock);
	xa_for_each(&ctx->blocks, idx, b)
		if (idx == b->off >> HPM_UNIT_SHIFT)
			out[b->order]++;
	mutex_unlock(&ctx->obj_lock);
}
