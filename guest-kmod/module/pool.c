// SPDX-License-Identifier: GPL-2.0
/*
 * The hpmmap pool: guest-physical ranges the guest kernel never got as RAM (E820
 * reserved: the VMM's pool, or a memmap=SIZE$BASE reservation), managed by a buddy
 * allocator whose smallest block is 2 MiB and largest 1 GiB, one set of free lists
 * per NUMA node.
 *
 * Why memremap_pages(MEMORY_DEVICE_GENERIC) for struct pages: the ranges must stay
 * out of Linux's page allocator (that isolation is the point of hpmmap), yet RDMA
 * registration of a rank's buffer calls pin_user_pages(), which needs a struct page
 * behind every PFN. add_memory_driver_managed() would give struct pages too, but it
 * onlines the memory as System RAM that the buddy allocator hands to anyone.
 * memremap_pages() creates ZONE_DEVICE struct pages and the direct mapping (what
 * device-dax does) without ever giving the memory to the page allocator; user
 * mappings then use devmap PUD/PMD/PTE entries, which GUP resolves through the
 * dev_pagemap. The pages keep their initial reference forever, so pin/unpin never
 * drop them to zero and they are never "freed" anywhere but in our own allocator.
 */
#include <linux/module.h>
#include <linux/io.h>
#include <linux/memremap.h>
#include <linux/ioport.h>
#include <linux/numa.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>
#include "hpmmap.h"
#include "hpmmap_pv.h"

static unsigned long pv;
module_param(pv, ulong, 0444);
MODULE_PARM_DESC(pv, "physical address of the hpmmap paravirtual device's MMIO page");
static unsigned long pool_base, pool_size;
module_param(pool_base, ulong, 0444);
MODULE_PARM_DESC(pool_base, "start of a reserved physical range to use as the pool (memmap=SIZE$BASE)");
module_param(pool_size, ulong, 0444);
MODULE_PARM_DESC(pool_size, "size in bytes of the range at pool_base");
static char *pool;
module_param(pool, charp, 0444);
MODULE_PARM_DESC(pool, "reserved ranges as SIZE@BASE[,SIZE@BASE...] (memmap= syntax without '$')");


struct hpm_range {
	phys_addr_t start, end; /* 2 MiB aligned */
	int nid;
	struct dev_pagemap pgmap;
	void *va;
	unsigned long nunits;
	u8 *state;		 /* per unit: order + 1 if head of a free block, else 0 */
	struct list_head *link;	 /* per unit: free list link of a free head */
};

static struct hpm_range ranges[PV_MAX_RANGES];
/* A pool page's count when nobody but hpmmap's mappings has it (1 on 6.1 for GENERIC
 * ZONE_DEVICE pages; read at init rather than assumed). */
static int idle_ref = 1;
static int nr_ranges;
static DEFINE_SPINLOCK(pool_lock);
static struct list_head free_lists[HPM_MAX_NODES][HPM_NORD];
static unsigned long nr_free[HPM_MAX_NODES][HPM_NORD];
static u64 total_bytes, free_bytes;
static void __iomem *pv_regs;
static unsigned int pv_page_shift;
static DEFINE_MUTEX(pv_lock);
/* Bytes the host zeroed for us through PV ZERO (sysfs pv_zero_bytes). */
static atomic64_t pv_zeroed = ATOMIC64_INIT(0);

static struct hpm_range *range_of(phys_addr_t pa)
{
	int i;

	for (i = 0; i < nr_ranges; i++)
		if (pa >= ranges[i].start && pa < ranges[i].end)
			return &ranges[i];
	return NULL;
}

static struct hpm_range *range_of_link(struct list_head *l)
{
	int i;

	for (i = 0; i < nr_ranges; i++)
		if (l >= ranges[i].link && l < ranges[i].link + ranges[i].nunits)
			return &ranges[i];
	return NULL;
}

bool hpm_pa_in_pool(phys_addr_t pa)
{
	return range_of(pa) != NULL;
}
EXPORT_SYMBOL_GPL(hpm_pa_in_pool); /* the test module's pin tests */

void *hpm_pa_to_va(phys_addr_t pa)
{
	struct hpm_range *r = range_of(pa);

	return r ? r->va + (pa - r->start) : NULL;
}

static void add_free(struct hpm_range *r, unsigned long unit, unsigned int order)
{
	r->state[unit] = order + 1;
	list_add(&r->link[unit], &free_lists[r->nid][order]);
	nr_free[r->nid][order]++;
}

static void del_free(struct hpm_range *r, unsigned long unit)
{
	unsigned int order = r->state[unit] - 1;

	list_del(&r->link[unit]);
	r->state[unit] = 0;
	nr_free[r->nid][order]--;
}

int hpm_pool_alloc(unsigned int order, int nid, phys_addr_t *pa)
{
	int n, tries;
	unsigned int o;

	if (order >= HPM_NORD)
		return -EINVAL;
	if (nid < 0 || nid >= HPM_MAX_NODES)
		nid = numa_node_id() < HPM_MAX_NODES ? numa_node_id() : 0;
	spin_lock(&pool_lock);
	/* The preferred node first, then every other node. */
	for (tries = 0; tries < HPM_MAX_NODES; tries++) {
		n = (nid + tries) % HPM_MAX_NODES;
		for (o = order; o < HPM_NORD; o++) {
			struct list_head *l = &free_lists[n][o];
			struct hpm_range *r;
			unsigned long unit;

			if (list_empty(l))
				continue;
			r = range_of_link(l->next);
			unit = l->next - r->link;
			del_free(r, unit);
			/* Split: keep the lower half, free the upper halves. */
			while (o > order) {
				o--;
				add_free(r, unit + (1ul << o), o);
			}
			free_bytes -= (u64)HPM_UNIT << order;
			spin_unlock(&pool_lock);
			*pa = r->start + ((phys_addr_t)unit << HPM_UNIT_SHIFT);
			return 0;
		}
	}
	spin_unlock(&pool_lock);
	return -ENOMEM;
}

void hpm_pool_free(phys_addr_t pa, unsigned int order)
{
	struct hpm_range *r = range_of(pa);
	unsigned long unit;

	if (WARN_ON_ONCE(!r || order >= HPM_NORD))
		return;
	unit = (pa - r->start) >> HPM_UNIT_SHIFT;
	spin_lock(&pool_lock);
	if (WARN_ON_ONCE(r->state[unit])) { /* double free */
		spin_unlock(&pool_lock);
		return;
	}
	free_bytes += (u64)HPM_UNIT << order;
	while (order + 1 < HPM_NORD) {
		phys_addr_t bpa = pa ^ ((phys_addr_t)HPM_UNIT << order);
		unsigned long bunit;

		/* Buddies pair on physical alignment; both halves must lie in this range. */
		if (bpa < r->start || bpa + ((phys_addr_t)HPM_UNIT << order) > r->end)
			break;
		bunit = (bpa - r->start) >> HPM_UNIT_SHIFT;
		if (r->state[bunit] != order + 1)
			break;
		del_free(r, bunit);
		pa = min(pa, bpa);
		order++;
	}
	add_free(r, (pa - r->start) >> HPM_UNIT_SHIFT, order);
	spin_unlock(&pool_lock);
}

/* Host-side zeroing through the PV device where the block covers whole host pages. */
static bool pv_zero(phys_addr_t pa, u64 len)
{
	bool ok;

	if (!pv_regs || !pv_page_shift || !IS_ALIGNED(pa | len, 1ull << pv_page_shift))
		return false;
	mutex_lock(&pv_lock);
	writeq(pa, pv_regs + PV_ARG_ADDR);
	writeq(len, pv_regs + PV_ARG_LEN);
	writel(PV_CMD_ZERO, pv_regs + PV_COMMAND);
	ok = readl(pv_regs + PV_STATUS) == PV_OK;
	mutex_unlock(&pv_lock);
	if (ok)
		atomic64_add(len, &pv_zeroed);
	return ok;
}

static int zero_range(phys_addr_t pa, u64 len, bool killable)
{
	u64 done;
	char *va = hpm_pa_to_va(pa);

	if (!va)
		return -EINVAL;
	if (pv_zero(pa, len))
		return 0;
	for (done = 0; done < len; done += PAGE_SIZE) {
		clear_page(va + done);
		if (!(done & (HPM_UNIT - 1))) {
			cond_resched();
			if (killable && fatal_signal_pending(current))
				return -EINTR;
		}
	}
	return 0;
}

/* Zeroes a block about to be handed out: a killed caller may give up (-EINTR). */
int hpm_zero(phys_addr_t pa, u64 len)
{
	return zero_range(pa, len, true);
}

/*
 * Zeroes memory that stays mapped or stays in the object (an uncovered part of a held
 * block, MADV_DONTNEED): it must read zero afterwards whoever asks, so a fatal signal
 * does not cut it short (another process sharing the mm with CLONE_VM lives on).
 * Bounded by the block size (1 GiB at most).
 */
void hpm_zero_all(phys_addr_t pa, u64 len)
{
	WARN_ON_ONCE(zero_range(pa, len, false));
}

u64 hpm_pool_pv_zero_bytes(void)
{
	return atomic64_read(&pv_zeroed);
}

/* Where the pool came from: "pv@ADDR,page_shift=N,ranges=N" or "memmap,ranges=N". */
int hpm_pool_show_source(char *buf)
{
	if (pv_regs)
		return sysfs_emit(buf, "pv@%#lx,page_shift=%u,ranges=%d\n", pv, pv_page_shift,
				  nr_ranges);
	return sysfs_emit(buf, "memmap,ranges=%d\n", nr_ranges);
}

u64 hpm_pool_bytes(void)
{
	return total_bytes;
}

u64 hpm_pool_free_bytes(void)
{
	u64 v;

	spin_lock(&pool_lock);
	v = free_bytes;
	spin_unlock(&pool_lock);
	return v;
}

void hpm_pool_free_blocks(u64 out[HPM_NORD])
{
	int n, o;

	spin_lock(&pool_lock);
	for (o = 0; o < HPM_NORD; o++) {
		out[o] = 0;
		for (n = 0; n < HPM_MAX_NODES; n++)
			out[o] += nr_free[n][o];
	}
	spin_unlock(&pool_lock);
}

int hpm_pool_show_nodes(char *buf, size_t len)
{
	int n, o, w = 0;
	bool used[HPM_MAX_NODES] = { false };

	for (n = 0; n < nr_ranges; n++)
		used[ranges[n].nid] = true;
	spin_lock(&pool_lock);
	for (n = 0; n < HPM_MAX_NODES; n++) {
		if (!used[n])
			continue;
		w += scnprintf(buf + w, len - w, "node%d", n);
		for (o = 0; o < HPM_NORD; o++)
			w += scnprintf(buf + w, len - w, " %luM:%lu", 2ul << o, nr_free[n][o]);
		w += scnprintf(buf + w, len - w, "\n");
	}
	spin_unlock(&pool_lock);
	return w;
}

static int pool_add_range(phys_addr_t base, u64 size)
{
	struct hpm_range *r;
	phys_addr_t start = ALIGN(base, HPM_UNIT), end = ALIGN_DOWN(base + size, HPM_UNIT);
	unsigned long unit;
	void *va;
	int nid;

	if (size == 0 || base + size < base || end <= start) {
		pr_err("hpmmap: pool range %pa+%#llx holds no 2 MiB block\n", &base, size);
		return -EINVAL;
	}
	if (nr_ranges == PV_MAX_RANGES)
		return -E2BIG;
	/* Never take memory the kernel is using: the range must be reserved, not RAM. */
	if (region_intersects(start, end - start, IORESOURCE_SYSTEM_RAM, IORES_DESC_NONE) !=
	    REGION_DISJOINT) {
		pr_err("hpmmap: pool range %pa-%pa overlaps System RAM; reserve it (memmap=SIZE$BASE)\n",
		       &start, &end);
		return -EBUSY;
	}
	for (nid = 0; nid < nr_ranges; nid++)
		if (start < ranges[nid].end && ranges[nid].start < end)
			return -EEXIST;
	r = &ranges[nr_ranges];
	memset(r, 0, sizeof(*r));
	r->start = start;
	r->end = end;
	nid = phys_to_target_node(start);
	if (nid == NUMA_NO_NODE)
		nid = 0;
	r->nid = nid < HPM_MAX_NODES ? nid : 0;
	r->nunits = (end - start) >> HPM_UNIT_SHIFT;
	r->state = vzalloc(r->nunits);
	r->link = vzalloc(r->nunits * sizeof(*r->link));
	if (!r->state || !r->link)
		goto nomem;
	r->pgmap.type = MEMORY_DEVICE_GENERIC;
	r->pgmap.range.start = start;
	r->pgmap.range.end = end - 1;
	r->pgmap.nr_range = 1;
	va = memremap_pages(&r->pgmap, r->nid);
	if (!IS_ERR(va))
		idle_ref = page_ref_count(pfn_to_page(PHYS_PFN(start))); /* before any use */
	if (IS_ERR(va)) {
		pr_err("hpmmap: memremap_pages(%pa-%pa) failed: %ld\n", &start, &end, PTR_ERR(va));
		vfree(r->state);
		vfree(r->link);
		return PTR_ERR(va);
	}
	r->va = va;
	nr_ranges++;
	/* Carve the largest naturally aligned blocks. */
	spin_lock(&pool_lock);
	for (unit = 0; unit < r->nunits;) {
		unsigned int o = HPM_NORD - 1;

		while (o && (!IS_ALIGNED(start + ((phys_addr_t)unit << HPM_UNIT_SHIFT),
					 (phys_addr_t)HPM_UNIT << o) ||
			     unit + (1ul << o) > r->nunits))
			o--;
		add_free(r, unit, o);
		unit += 1ul << o;
	}
	total_bytes += end - start;
	free_bytes += end - start;
	spin_unlock(&pool_lock);
	pr_info("hpmmap: pool range %pa-%pa node %d\n", &start, &end, r->nid);
	return 0;
nomem:
	vfree(r->state);
	vfree(r->link);
	return -ENOMEM;
}

static int parse_pool(const char *spec)
{
	char *buf = kstrdup(spec, GFP_KERNEL), *cur, *tok;
	int err = 0;

	if (!buf)
		return -ENOMEM;
	cur = buf;
	while (!err && (tok = strsep(&cur, ",")) != NULL) {
		char *at = tok;
		u64 size = memparse(tok, &at), base;

		if (*at != '@') {
			pr_err("hpmmap: pool=: expected SIZE@BASE, got \"%s\"\n", tok);
			err = -EINVAL;
			break;
		}
		base = memparse(at + 1, &at);
		if (*at) {
			pr_err("hpmmap: pool=: trailing \"%s\"\n", at);
			err = -EINVAL;
			break;
		}
		err = pool_add_range(base, size);
	}
	kfree(buf);
	return err;
}

/*
 * Touch one byte of every host page behind the pool, so that the hypervisor maps each one in
 * its nested page tables now (one exit per 1 GiB page, at module load) rather than on some
 * rank's first access: registered ranks then take no fault at either level. With 4 KiB host
 * pages that would be a read per 4 KiB; there the first access maps them, as before.
 */
static void pv_map_ahead(void)
{
	u64 step = 1ull << pv_page_shift, off, n = 0;
	int i;

	if (pv_page_shift < 21)
		return;
	for (i = 0; i < nr_ranges; i++)
		for (off = 0; off < ranges[i].end - ranges[i].start; off += step, n++)
			(void)READ_ONCE(*((u8 *)ranges[i].va + off));
	pr_info("hpmmap: %llu host page(s) of the pool mapped ahead\n", (unsigned long long)n);
}

static int pv_probe(void)
{
	u32 magic, ver, n, i;

	pv_regs = ioremap(pv, PAGE_SIZE);
	if (!pv_regs)
		return -ENOMEM;
	magic = readl(pv_regs + PV_MAGIC);
	ver = readl(pv_regs + PV_VERSION);
	if (magic != PV_MAGIC_VAL || ver != PV_VERSION_VAL) {
		pr_err("hpmmap: no hpmmap PV device v1 at %#lx (magic %#x version %u)\n", pv,
		       magic, ver);
		goto bad;
	}
	writel(PV_VERSION_VAL, pv_regs + PV_GUEST_VERSION);
	if (readl(pv_regs + PV_STATUS) != PV_OK) {
		pr_err("hpmmap: PV device refused guest version 1\n");
		goto bad;
	}
	n = readl(pv_regs + PV_NR_RANGES);
	pv_page_shift = readl(pv_regs + PV_PAGE_SHIFT);
	if (n > PV_MAX_RANGES || (pv_page_shift != 30 && pv_page_shift != 21 && pv_page_shift != 12)) {
		pr_err("hpmmap: PV device reports %u ranges, page shift %u: unsupported\n", n,
		       pv_page_shift);
		goto bad;
	}
	for (i = 0; i < n; i++) {
		u64 base = readq(pv_regs + PV_RANGE + PV_RANGE_STRIDE * i);
		u64 size = readq(pv_regs + PV_RANGE + PV_RANGE_STRIDE * i + 8);
		int err = pool_add_range(base, size);

		if (err)
			pr_warn("hpmmap: PV range %u (%#llx+%#llx) skipped: %d\n", i, base, size, err);
	}
	pr_info("hpmmap: pool from PV device at %#lx: %u ranges, %llu MiB on %u KiB host pages\n",
		pv, n, (unsigned long long)(total_bytes >> 20), 1u << (pv_page_shift - 10));
	pv_map_ahead();
	return 0;
bad:
	iounmap(pv_regs);
	pv_regs = NULL;
	return -ENODEV;
}

int hpm_pool_init(void)
{
	int n, o, err = 0;

	for (n = 0; n < HPM_MAX_NODES; n++)
		for (o = 0; o < HPM_NORD; o++)
			INIT_LIST_HEAD(&free_lists[n][o]);
	if (pv)
		err = pv_probe();
	if (!err && pool_size)
		err = pool_add_range(pool_base, pool_size);
	if (!err && pool)
		err = parse_pool(pool);
	if (err)
		goto fail;
	if (!nr_ranges) {
		pr_err("hpmmap: no pool: give pv=<mmio address>, pool=SIZE@BASE or pool_base= and pool_size=\n");
		err = -EINVAL;
		goto fail;
	}
	return 0;
fail:
	hpm_pool_exit();
	return err;
}

/* ------------------------------------------------------------ quarantine
 *
 * A block whose pages someone still references when its last mapping goes (pinned by
 * RDMA or io_uring fixed buffers, held by a pipe after vmsplice, by a bio of O_DIRECT
 * in flight) must not go back to the pool: the next owner's memory would be read and
 * written by that device or pipe. Such blocks wait here until every page is back at its
 * idle count (idle_ref: ZONE_DEVICE GENERIC pages are born at 1 and mapped without
 * refcount, pins add GUP_PIN_COUNTING_BIAS, gets add 1); a delayed work polls them, and readers of
 * the counters poll first. While blocks wait, the module holds a reference to itself.
 *
 * Pieces (issue 12.1): part of a block can leave its address space while the rest stays
 * mapped there; the block stays with its address space, which would zero that part and
 * map it again if the same object offsets are mapped later (mremap growth in place, brk).
 * A referenced piece is watched here instead (hpm_pool_retire), counted in the same
 * quarantined bytes, and its address space maps none of it again while any page of it is
 * referenced (hpm_pool_reusable): it takes other offsets, hence other memory. Sound
 * because an unmapped piece cannot gain references (GUP, vmsplice and O_DIRECT need a
 * mapping; a pipe's tee only copies a reference that is already counted), so once its
 * pages are idle no device or pipe can reach them any more, and zeroing then is final.
 * Pieces never overlap one another nor mapped memory; a block that leaves entirely takes
 * its pieces' place in the list (hpm_pool_release).
 */
struct hpm_quar {
	struct list_head l;
	phys_addr_t pa;
	u64 len;
	bool piece; /* part of a block its address space still holds: watched, never freed */
};
static LIST_HEAD(quar_list);
static DEFINE_MUTEX(quar_lock);
static u64 quar_bytes;
static bool quar_ref; /* the module reference the quarantine holds */
static void quar_work_fn(struct work_struct *w);
static DECLARE_DELAYED_WORK(quar_work, quar_work_fn);

static bool range_referenced(phys_addr_t pa, u64 len)
{
	unsigned long pfn = PHYS_PFN(pa), n = len >> PAGE_SHIFT, i;

	for (i = 0; i < n; i++) {
		if (page_ref_count(pfn_to_page(pfn + i)) != idle_ref)
			return true;
		if (!(i & 4095))
			cond_resched();
	}
	return false;
}

/* Narrows [*pa, *pa + *len) to its first through last referenced page; false if none. */
static bool referenced_span(phys_addr_t *pa, u64 *len)
{
	unsigned long pfn = PHYS_PFN(*pa), n = *len >> PAGE_SHIFT, i, first = n, last = 0;

	for (i = 0; i < n; i++) {
		if (page_ref_count(pfn_to_page(pfn + i)) != idle_ref) {
			first = min(first, i);
			last = i;
		}
		if (!(i & 4095))
			cond_resched();
	}
	if (first == n)
		return false;
	*pa += (phys_addr_t)first << PAGE_SHIFT;
	*len = (u64)(last + 1 - first) << PAGE_SHIFT;
	return true;
}

bool hpm_pool_referenced(phys_addr_t pa, u64 len)
{
	return range_referenced(pa, len);
}

static void quar_del(struct hpm_quar *q)
{
	list_del(&q->l);
	quar_bytes -= q->len;
	kfree(q);
}

/* Frees idle quarantined blocks and forgets idle pieces; true if entries remain. */
static bool quar_scan(void)
{
	struct hpm_quar *q, *t;
	bool left;

	mutex_lock(&quar_lock);
	list_for_each_entry_safe(q, t, &quar_list, l) {
		if (range_referenced(q->pa, q->len))
			continue;
		if (!q->piece)
			hpm_pool_free(q->pa, ilog2(q->len >> HPM_UNIT_SHIFT));
		quar_del(q);
	}
	left = !list_empty(&quar_list);
	mutex_unlock(&quar_lock);
	return left;
}

static void quar_work_fn(struct work_struct *w)
{
	bool put = false;

	if (quar_scan()) {
		schedule_delayed_work(&quar_work, HZ / 10);
		return;
	}
	mutex_lock(&quar_lock);
	if (list_empty(&quar_list) && quar_ref) {
		quar_ref = false;
		put = true;
	}
	mutex_unlock(&quar_lock);
	if (put)
		module_put(THIS_MODULE);
}

/* Adds an entry; caller holds quar_lock. */
static void quar_add_locked(struct hpm_quar *q, phys_addr_t pa, u64 len, bool piece)
{
	q->pa = pa;
	q->len = len;
	q->piece = piece;
	list_add_tail(&q->l, &quar_list);
	quar_bytes += len;
	if (!quar_ref) {
		quar_ref = true;
		__module_get(THIS_MODULE); /* no unload while a device holds pool memory */
	}
}

static inline bool overlaps(const struct hpm_quar *q, phys_addr_t pa, u64 len)
{
	return q->pa < pa + len && pa < q->pa + q->len;
}

/*
 * A block leaves its address space (munmap, exit, exec): back to the pool, or into the
 * quarantine while its pages are still referenced. Zeroed when allocated again.
 */
void hpm_pool_release(phys_addr_t pa, unsigned int order)
{
	u64 len = (u64)HPM_UNIT << order;
	struct hpm_quar *q, *t;

	/* The block answers for its pieces from now on (its check covers their pages). */
	mutex_lock(&quar_lock);
	list_for_each_entry_safe(q, t, &quar_list, l)
		if (q->piece && overlaps(q, pa, len))
			quar_del(q);
	mutex_unlock(&quar_lock);
	if (!range_referenced(pa, len)) {
		hpm_pool_free(pa, order);
		return;
	}
	q = kmalloc(sizeof(*q), GFP_KERNEL | __GFP_NOFAIL);
	mutex_lock(&quar_lock);
	quar_add_locked(q, pa, len, false);
	mutex_unlock(&quar_lock);
	schedule_delayed_work(&quar_work, HZ / 10);
}

/*
 * [pa, pa + len), part of a block its address space keeps, was just unmapped there (no
 * mapping of any mm reaches it now). If pages of it are still referenced, watch the span
 * from the first to the last of them as a piece (merged with the pieces it touches,
 * which are unmapped too) until none is; the idle pages around it can never be reached
 * again and are free to reuse at once.
 */
void hpm_pool_retire(phys_addr_t pa, u64 len)
{
	struct hpm_quar *n, *q, *t;
	phys_addr_t lo, hi;

	if (!len || !referenced_span(&pa, &len))
		return;
	lo = pa;
	hi = pa + len;
	n = kmalloc(sizeof(*n), GFP_KERNEL | __GFP_NOFAIL);
	mutex_lock(&quar_lock);
	list_for_each_entry_safe(q, t, &quar_list, l) {
		if (!q->piece || !overlaps(q, pa, len))
			continue;
		lo = min(lo, q->pa);
		hi = max_t(phys_addr_t, hi, q->pa + q->len);
		quar_del(q);
	}
	quar_add_locked(n, lo, hi - lo, true);
	mutex_unlock(&quar_lock);
	schedule_delayed_work(&quar_work, HZ / 10);
}

/*
 * May [pa, pa + len), unmapped part of a block its address space keeps, be zeroed and
 * mapped again? Not while any page of it or of a piece it touches is referenced; idle
 * pieces it touches are forgotten. Their address space serializes its own calls.
 */
bool hpm_pool_reusable(phys_addr_t pa, u64 len)
{
	struct hpm_quar *q, *t;
	bool ok = true;

	mutex_lock(&quar_lock);
	list_for_each_entry_safe(q, t, &quar_list, l) {
		if (!q->piece || !overlaps(q, pa, len))
			continue;
		if (range_referenced(q->pa, q->len))
			ok = false;
		else
			quar_del(q);
	}
	mutex_unlock(&quar_lock);
	return ok && !range_referenced(pa, len);
}

/* Bytes in quarantine now (after a scan, so a reader sees what is really held). */
u64 hpm_pool_quarantined_bytes(void)
{
	u64 v;

	quar_scan();
	mutex_lock(&quar_lock);
	v = quar_bytes;
	mutex_unlock(&quar_lock);
	return v;
}

void hpm_pool_exit(void)
{
	int i;

	cancel_delayed_work_sync(&quar_work); /* empty: the module could not go otherwise */

	if (total_bytes && free_bytes != total_bytes)
		pr_err("hpmmap: leak: %llu of %llu pool bytes not returned\n",
		       total_bytes - free_bytes, total_bytes);
	for (i = 0; i < nr_ranges; i++) {
		memunmap_pages(&ranges[i].pgmap);
		vfree(ranges[i].state);
		vfree(ranges[i].link);
	}
	nr_ranges = 0;
	total_bytes = free_bytes = 0;
	if (pv_regs)
		iounmap(pv_regs);
	pv_regs = NULL;
}
