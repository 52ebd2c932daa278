// SPDX-License-Identifier: GPL-2.0
/*
 * Counters per address space (issue 15: counters per rank). Every registered address
 * space counts its own faults, mappings, fallbacks, fork copies and peak pool bytes
 * beside the pool-wide counters. When it ends (exit, or exec into a new one) its final
 * counters go into a small table of records, the last `rank_records` of them, keyed by
 * the process: the launcher (hpmmap-run), which stays the rank's parent, reads and
 * removes its child's record with HPMMAP_IOC_RANK_STATS after the child was reaped. The
 * record is written from the address space's teardown, which exit runs before the
 * parent can reap the child, so the record is there when wait() returns (unless
 * something else still held the mm then, e.g. a reader of /proc/PID/mem: then moments
 * later).
 */
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/list.h>
#include <linux/spinlock.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/cred.h>
#include <linux/capability.h>
#include <linux/uaccess.h>
#include <linux/pid_namespace.h>
#include "hpmmap.h"

static uint rank_records = 256;
module_param(rank_records, uint, 0644);
MODULE_PARM_DESC(rank_records, "records of ended address spaces kept for HPMMAP_IOC_RANK_STATS (oldest dropped)");

struct hpm_rank_rec {
	struct list_head l;
	struct pid *pid;
	kuid_t uid;
	u64 faults, mappings, fallbacks, fork_copies, fork_failures, bytes, peak;
};

static LIST_HEAD(recs); /* oldest first */
static DEFINE_SPINLOCK(rec_lock);
static unsigned int nr_recs;

/* A fork child's pid is not known while dup_mmap() builds its address space (the
 * parent runs it, before the child's pid exists): it is taken at the end instead. */
void hpm_acct_init(struct hpm_acct *a, bool known_pid)
{
	a->pid = known_pid ? get_pid(task_tgid(current)) : NULL;
	a->uid = current_uid();
}

void hpm_acct_peak(struct hpm_acct *a, u64 held)
{
	s64 old = atomic64_read(&a->peak_bytes);

	while ((u64)old < held && !atomic64_try_cmpxchg(&a->peak_bytes, &old, held))
		;
}

static void rec_free(struct hpm_rank_rec *r)
{
	put_pid(r->pid);
	kfree(r);
}

/* The end of a registered address space (its anchor's close): keep its counters. */
void hpm_rank_record(struct hpm_ctx *ctx)
{
	struct hpm_acct *a = &ctx->acct;
	struct hpm_rank_rec *r, *old, *n;
	struct pid *pid = a->pid;
	LIST_HEAD(gone);

	/* Exit and exec tear the address space down in its own process; anywhere else (the
	 * last mmput by another process) the fork child's pid stays unknown. */
	if (!pid && ((current->flags & PF_EXITING) || current->in_execve))
		pid = task_tgid(current);
	if (!pid || !READ_ONCE(rank_records))
		return;
	r = kzalloc(sizeof(*r), GFP_KERNEL);
	if (!r)
		return;
	r->pid = get_pid(pid);
	r->uid = a->uid;
	r->faults = atomic64_read(&a->faults);
	r->mappings = atomic64_read(&a->mappings);
	r->fallbacks = atomic64_read(&a->fallbacks);
	r->fork_copies = atomic64_read(&a->fork_copies);
	r->fork_failures = atomic64_read(&a->fork_failures);
	r->bytes = atomic64_read(&ctx->held_bytes);
	r->peak = atomic64_read(&a->peak_bytes);
	spin_lock(&rec_lock);
	list_add_tail(&r->l, &recs);
	nr_recs++;
	while (nr_recs > READ_ONCE(rank_records)) {
		old = list_first_entry(&recs, struct hpm_rank_rec, l);
		list_move(&old->l, &gone);
		nr_recs--;
	}
	spin_unlock(&rec_lock);
	list_for_each_entry_safe(old, n, &gone, l)
		rec_free(old);
}

/* admin: CAP_SYS_ADMIN, asked before rec_lock is taken (the check may audit) */
static bool may_read(kuid_t owner, bool admin)
{
	return admin || uid_eq(owner, current_uid()) || uid_eq(owner, current_euid());
}

static long rank_live(struct hpmmap_rank_stats *s)
{
	struct hpm_ctx *ctx = current->mm ? hpm_ctx_get_mm(current->mm) : NULL;
	struct hpm_acct *a;

	if (!ctx)
		return -ENOENT;
	if (!ctx->region_start) { /* only registered for its next exec */
		hpm_ctx_put(ctx);
		return -ENOENT;
	}
	a = &ctx->acct;
	s->state = HPMMAP_RANK_LIVE;
	s->uid = from_kuid_munged(current_user_ns(), a->uid);
	s->faults = atomic64_read(&a->faults);
	s->mappings = atomic64_read(&a->mappings);
	s->fallbacks = atomic64_read(&a->fallbacks);
	s->fork_copies = atomic64_read(&a->fork_copies);
	s->fork_failures = atomic64_read(&a->fork_failures);
	s->bytes_mapped = atomic64_read(&ctx->held_bytes);
	s->bytes_peak = atomic64_read(&a->peak_bytes);
	hpm_ctx_put(ctx);
	return 0;
}

/* The newest record of the process the caller calls `nr` in its pid namespace. */
static long rank_ended(struct hpmmap_rank_stats *s, bool take)
{
	struct pid_namespace *ns = task_active_pid_ns(current);
	struct hpm_rank_rec *r, *found = NULL;
	bool admin = ns_capable_noaudit(&init_user_ns, CAP_SYS_ADMIN);
	long err = -ENOENT;

	spin_lock(&rec_lock);
	list_for_each_entry_reverse(r, &recs, l) {
		if (pid_nr_ns(r->pid, ns) == s->pid) {
			found = r;
			break;
		}
	}
	if (found) {
		err = may_read(found->uid, admin) ? 0 : -EPERM;
		if (!err && take) {
			list_del(&found->l);
			nr_recs--;
		}
	}
	if (!err) {
		s->state = HPMMAP_RANK_ENDED;
		s->uid = from_kuid_munged(current_user_ns(), found->uid);
		s->faults = found->faults;
		s->mappings = found->mappings;
		s->fallbacks = found->fallbacks;
		s->fork_copies = found->fork_copies;
		s->fork_failures = found->fork_failures;
		s->bytes_mapped = found->bytes;
		s->bytes_peak = found->peak;
	}
	spin_unlock(&rec_lock);
	if (!err && take)
		rec_free(found);
	return err;
}

long hpm_ioc_rank(void __user *up)
{
	struct hpmmap_rank_stats s;
	bool take;
	long err;

	if (copy_from_user(&s, up, sizeof(s)))
		return -EFAULT;
	take = s.flags & HPMMAP_RANK_TAKE;
	if ((s.flags & ~HPMMAP_RANK_TAKE) || s.reserved[0] || s.reserved[1] || s.pid < 0 ||
	    (take && !s.pid))
		return -EINVAL;
	err = s.pid ? rank_ended(&s, take) : rank_live(&s);
	if (err)
		return err;
	return copy_to_user(up, &s, sizeof(s)) ? -EFAULT : 0;
}

void hpm_rank_exit(void)
{
	struct hpm_rank_rec *r, *n;

	list_for_each_entry_safe(r, n, &recs, l)
		rec_free(r);
	INIT_LIST_HEAD(&recs);
	nr_recs = 0;
}
