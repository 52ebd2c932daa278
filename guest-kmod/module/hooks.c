// SPDX-License-Identifier: GPL-2.0
/*
 * Syscall interposition. On 6.1 the syscall table is read-only and not even used for
 * dispatch (x64_sys_call() is a switch), so the __x64_sys_* entry points are hooked
 * with ftrace: an IPMODIFY callback moves the instruction pointer to our wrapper, but
 * only for address spaces that have hpmmap state; every other process never enters
 * this module. A wrapper calls the original through its address; the callback sees
 * the call coming from this module and lets it through.
 * kallsyms_lookup_name is not exported on 6.1: a kprobe on it yields its address.
 */
#include <linux/module.h>
#include <linux/ftrace.h>
#include <linux/kprobes.h>
#include <linux/mman.h>
#include <linux/ptrace.h>
#include <linux/sched.h>
#include <linux/uaccess.h>
#include "hpmmap.h"

typedef long (*sys_fn)(const struct pt_regs *);

int (*hpm_p4d_alloc)(struct mm_struct *, pgd_t *, unsigned long);
int (*hpm_pud_alloc)(struct mm_struct *, p4d_t *, unsigned long);
int (*hpm_pmd_alloc)(struct mm_struct *, pud_t *, unsigned long);
static unsigned long (*kln)(const char *name);

enum { H_MMAP, H_MUNMAP, H_MPROTECT, H_MREMAP, H_MADVISE, H_BRK, H_EXECVE, H_EXECVEAT,
       H_FORK, H_CLONE, H_CLONE3, H_NR };

struct hpm_hook {
	const char *name;
	void *wrapper;
	sys_fn orig;
	struct ftrace_ops ops;
	bool registered;
};

static long hpm_sys_mmap(const struct pt_regs *regs);
static long hpm_sys_munmap(const struct pt_regs *regs);
static long hpm_sys_mprotect(const struct pt_regs *regs);
static long hpm_sys_mremap(const struct pt_regs *regs);
static long hpm_sys_madvise(const struct pt_regs *regs);
static long hpm_sys_brk(const struct pt_regs *regs);
static long hpm_sys_execve(const struct pt_regs *regs);
static long hpm_sys_execveat(const struct pt_regs *regs);
static long hpm_sys_fork(const struct pt_regs *regs);
static long hpm_sys_clone(const struct pt_regs *regs);
static long hpm_sys_clone3(const struct pt_regs *regs);

static struct hpm_hook hooks[H_NR] = {
	[H_MMAP] = { "__x64_sys_mmap", hpm_sys_mmap },
	[H_MUNMAP] = { "__x64_sys_munmap", hpm_sys_munmap },
	[H_MPROTECT] = { "__x64_sys_mprotect", hpm_sys_mprotect },
	[H_MREMAP] = { "__x64_sys_mremap", hpm_sys_mremap },
	[H_MADVISE] = { "__x64_sys_madvise", hpm_sys_madvise },
	[H_BRK] = { "__x64_sys_brk", hpm_sys_brk },
	[H_EXECVE] = { "__x64_sys_execve", hpm_sys_execve },
	[H_EXECVEAT] = { "__x64_sys_execveat", hpm_sys_execveat },
	[H_FORK] = { "__x64_sys_fork", hpm_sys_fork },
	[H_CLONE] = { "__x64_sys_clone", hpm_sys_clone },
	[H_CLONE3] = { "__x64_sys_clone3", hpm_sys_clone3 },
};

#define ORIG(h, regs) hooks[h].orig(regs)

unsigned long hpm_lookup_name(const char *name)
{
	return kln ? kln(name) : 0;
}

static void notrace hpm_thunk(unsigned long ip, unsigned long parent_ip,
			      struct ftrace_ops *op, struct ftrace_regs *fregs)
{
	struct hpm_hook *h = container_of(op, struct hpm_hook, ops);
	struct pt_regs *regs = ftrace_get_regs(fregs);

	if (!regs || within_module(parent_ip, THIS_MODULE) || !hpm_mm_hooked(current->mm))
		return;
	regs->ip = (unsigned long)h->wrapper;
}

/* ---- wrappers: each one is entered only with hpmmap state for current->mm ---- */

static long hpm_sys_mmap(const struct pt_regs *regs)
{
	unsigned long addr = regs->di, len = regs->si, prot = regs->dx;
	unsigned long flags = regs->r10, off = regs->r9, plen;
	bool fixed = flags & (MAP_FIXED | MAP_FIXED_NOREPLACE);
	struct hpm_ctx *ctx = hpm_ctx_get_mm(current->mm);
	long ret;

	if (!ctx)
		return ORIG(H_MMAP, regs);
	if (!ctx->serving || !(flags & MAP_ANONYMOUS) || (flags & MAP_TYPE) != MAP_PRIVATE ||
	    (flags & (MAP_GROWSDOWN | MAP_STACK | MAP_HUGETLB | MAP_32BIT)) ||
	    (prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC)))
		goto to_linux; /* stacks, file and shared mappings stay with Linux */
	if (offset_in_page(off) || !len) {
		ret = -EINVAL;
		goto out;
	}
	plen = PAGE_ALIGN(len);
	if (!plen) {
		ret = -ENOMEM;
		goto out;
	}
	if (fixed) {
		if (offset_in_page(addr)) {
			ret = -EINVAL;
			goto out;
		}
		if (addr + plen < addr || addr < ctx->region_start ||
		    addr + plen > ctx->region_end - PAGE_SIZE)
			goto to_linux; /* MAP_FIXED outside the region: Linux memory there */
	}
	ret = hpm_do_mmap(ctx, addr, plen, prot, flags);
	if (ret == -ENOMEM && hpm_fallback_allowed(ctx)) {
		atomic64_inc(&hpm_st.fallbacks);
		atomic64_inc(&ctx->acct.fallbacks);
		goto to_linux;
	}
	goto out;
to_linux:
	/* the anchor page is what keeps the region registered: never map over it */
	if (fixed && ctx->region_start && addr < ctx->region_end &&
	    addr + PAGE_ALIGN(len) > ctx->region_end - PAGE_SIZE) {
		ret = -EINVAL;
		goto out;
	}
	ret = ORIG(H_MMAP, regs);
out:
	hpm_ctx_put(ctx);
	return ret;
}

static long hpm_sys_munmap(const struct pt_regs *regs)
{
	unsigned long start = regs->di, len = regs->si;
	struct hpm_ctx *ctx = hpm_ctx_get_mm(current->mm);
	bool handled = false;
	long ret = 0;

	if (!ctx)
		return ORIG(H_MUNMAP, regs);
	/* Malformed ranges get Linux's own answer (EINVAL). */
	if (!offset_in_page(start) && len && PAGE_ALIGN(len) &&
	    start + PAGE_ALIGN(len) > start && start + PAGE_ALIGN(len) <= TASK_SIZE)
		ret = hpm_do_munmap(ctx, start, PAGE_ALIGN(len), &handled);
	if (!handled)
		ret = ORIG(H_MUNMAP, regs);
	hpm_ctx_put(ctx);
	return ret;
}

static long mprotect_orig(unsigned long start, unsigned long len, unsigned long prot)
{
	struct pt_regs r = {};

	r.di = start;
	r.si = len;
	r.dx = prot;
	return ORIG(H_MPROTECT, &r);
}

static long hpm_sys_mprotect(const struct pt_regs *regs)
{
	unsigned long start = regs->di, len = regs->si, end, ext_s, ext_e;
	struct hpm_ctx *ctx = hpm_ctx_get_mm(current->mm);
	long ret;

	if (!ctx)
		return ORIG(H_MPROTECT, regs);
	end = start + PAGE_ALIGN(len);
	if (offset_in_page(start) || !len || end <= start || !hpm_in_region(ctx, start, end)) {
		ret = ORIG(H_MPROTECT, regs);
		goto out;
	}
	mutex_lock(&ctx->op_lock);
	hpm_huge_extents(start, end, &ext_s, &ext_e);
	/* Linux changes VMAs and entries and flushes TLBs (1 GiB leaves inside the range:
	 * see hpm_data_mprotect()); what it cleared is mapped again below: the range itself
	 * and the huge entries that straddled its ends (not +-1 GiB page by page). */
	ret = hpm_mprotect_walk(ctx, start, end, regs->dx, mprotect_orig);
	hpm_repopulate_exact(ctx, start, end);
	hpm_repopulate_edges(ctx, start, end, ext_s, ext_e);
	mutex_unlock(&ctx->op_lock);
out:
	hpm_ctx_put(ctx);
	return ret;
}

static long hpm_sys_mremap(const struct pt_regs *regs)
{
	unsigned long old = regs->di, old_len = regs->si, new_len = regs->dx;
	unsigned long flags = regs->r10, new_addr = regs->r8;
	struct hpm_ctx *ctx = hpm_ctx_get_mm(current->mm);
	long ret;

	if (!ctx)
		return ORIG(H_MREMAP, regs);
	if (!hpm_in_region(ctx, old, old + max(PAGE_ALIGN(old_len), PAGE_SIZE)))
		ret = ORIG(H_MREMAP, regs);
	else
		ret = hpm_do_mremap(ctx, old, old_len, new_len, flags, new_addr);
	hpm_ctx_put(ctx);
	return ret;
}

static long madvise_orig(unsigned long start, unsigned long len, int advice)
{
	struct pt_regs r = {};

	r.di = start;
	r.si = len;
	r.dx = advice;
	return ORIG(H_MADVISE, &r);
}

static long hpm_sys_madvise(const struct pt_regs *regs)
{
	unsigned long start = regs->di, len = regs->si;
	struct hpm_ctx *ctx = hpm_ctx_get_mm(current->mm);
	long ret;

	if (!ctx)
		return ORIG(H_MADVISE, regs);
	if (!hpm_in_region(ctx, start, start + max(PAGE_ALIGN(len), PAGE_SIZE)))
		ret = ORIG(H_MADVISE, regs);
	else
		ret = hpm_do_madvise(ctx, start, len, (int)regs->dx, madvise_orig);
	hpm_ctx_put(ctx);
	return ret;
}

static long hpm_sys_brk(const struct pt_regs *regs)
{
	struct hpm_ctx *ctx = hpm_ctx_get_mm(current->mm);
	bool handled = false;
	long ret = 0;

	if (!ctx)
		return ORIG(H_BRK, regs);
	ret = hpm_do_brk(ctx, regs->di, &handled);
	if (!handled)
		ret = ORIG(H_BRK, regs);
	hpm_ctx_put(ctx);
	return ret;
}

/* exec: the registration follows the process into its new address space */
static long exec_common(int h, const struct pt_regs *regs)
{
	struct hpm_ctx *ctx = hpm_ctx_get_mm(current->mm);
	bool carry;
	u32 flags;
	unsigned int shift;
	int node, err;
	long ret;

	if (!ctx)
		return ORIG(h, regs);
	carry = ctx->serving || (ctx->flags & HPMMAP_REG_ON_EXEC);
	flags = ctx->flags;
	shift = ctx->page_shift;
	node = ctx->node;
	hpm_ctx_put(ctx);
	ret = ORIG(h, regs);
	if (ret == 0 && carry) {
		err = hpm_after_exec(flags, shift, node);
		if (err)
			pr_warn_ratelimited("hpmmap: pid %d runs on Linux memory: registration after exec failed (%d)\n",
					    task_tgid_nr(current), err);
	}
	return ret;
}

static long hpm_sys_execve(const struct pt_regs *regs)
{
	return exec_common(H_EXECVE, regs);
}

static long hpm_sys_execveat(const struct pt_regs *regs)
{
	return exec_common(H_EXECVEAT, regs);
}

/*
 * fork policy: the child gets its own eagerly populated copy from the pool. When the
 * pool cannot hold the copy, fork fails with ENOMEM up front rather than leaving the
 * child with memory it cannot touch.
 */
static long fork_common(int h, const struct pt_regs *regs, u64 clone_flags)
{
	struct hpm_ctx *ctx = hpm_ctx_get_mm(current->mm);
	long ret = 0;

	if (ctx && !(clone_flags & CLONE_VM) &&
	    (u64)atomic64_read(&ctx->held_bytes) > hpm_pool_free_bytes())
		ret = -ENOMEM;
	if (ctx)
		hpm_ctx_put(ctx);
	return ret ?: ORIG(h, regs);
}

static long hpm_sys_fork(const struct pt_regs *regs)
{
	return fork_common(H_FORK, regs, 0);
}

static long hpm_sys_clone(const struct pt_regs *regs)
{
	return fork_common(H_CLONE, regs, regs->di);
}

static long hpm_sys_clone3(const struct pt_regs *regs)
{
	u64 flags = CLONE_VM; /* unreadable args: let clone3 itself report the error */
	const u64 __user *uflags = (const u64 __user *)regs->di;

	if (regs->si >= sizeof(u64) && get_user(flags, uflags))
		flags = CLONE_VM;
	return fork_common(H_CLONE3, regs, flags);
}

/* ---- setup ---- */

static int resolve(void)
{
	struct kprobe kp = { .symbol_name = "kallsyms_lookup_name" };
	int err = register_kprobe(&kp);

	if (err) {
		pr_err("hpmmap: cannot find kallsyms_lookup_name through a kprobe: %d\n", err);
		return err;
	}
	kln = (void *)kp.addr;
	unregister_kprobe(&kp);
	hpm_p4d_alloc = (void *)kln("__p4d_alloc");
	hpm_pud_alloc = (void *)kln("__pud_alloc");
	hpm_pmd_alloc = (void *)kln("__pmd_alloc");
	if (!hpm_p4d_alloc || !hpm_pud_alloc || !hpm_pmd_alloc) {
		pr_err("hpmmap: page table allocators not found\n");
		return -ENOENT;
	}
	return 0;
}

void hpm_hooks_exit(void)
{
	int i;

	for (i = 0; i < H_NR; i++) {
		struct hpm_hook *h = &hooks[i];

		if (!h->registered)
			continue;
		unregister_ftrace_function(&h->ops);
		ftrace_set_filter_ip(&h->ops, (unsigned long)h->orig, 1, 0);
		h->registered = false;
	}
}

int hpm_hooks_init(void)
{
	int i, err = resolve();

	if (err)
		return err;
	for (i = 0; i < H_NR; i++) {
		struct hpm_hook *h = &hooks[i];
		unsigned long addr = kln(h->name);

		if (!addr) {
			pr_err("hpmmap: symbol %s not found\n", h->name);
			err = -ENOENT;
			goto fail;
		}
		h->orig = (sys_fn)addr;
		h->ops.func = hpm_thunk;
		h->ops.flags = FTRACE_OPS_FL_SAVE_REGS | FTRACE_OPS_FL_RECURSION |
			       FTRACE_OPS_FL_IPMODIFY;
		err = ftrace_set_filter_ip(&h->ops, addr, 0, 0);
		if (err) {
			pr_err("hpmmap: ftrace filter on %s: %d\n", h->name, err);
			goto fail;
		}
		err = register_ftrace_function(&h->ops);
		if (err) {
			ftrace_set_filter_ip(&h->ops, addr, 1, 0);
			pr_err("hpmmap: ftrace hook on %s: %d\n", h->name, err);
			goto fail;
		}
		h->registered = true;
	}
	return 0;
fail:
	hpm_hooks_exit();
	return err;
}
