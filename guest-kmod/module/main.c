// SPDX-License-Identifier: GPL-2.0
/*
 * hpmmap: a lightweight-kernel style memory manager inside the guest's Linux 6.1
 * (HPMMAP, Kocoloski and Lange, sections 2 and 3). /dev/hpmmap, the statistics in
 * /sys/kernel/hpmmap/, module setup. See ctx.c for the memory model, pool.c for the
 * pool, hooks.c for the interposition.
 */
#include <linux/module.h>
#include <linux/miscdevice.h>
#include <linux/fs.h>
#include <linux/uaccess.h>
#include <linux/kobject.h>
#include <linux/sysfs.h>
#include <linux/mm.h>
#include <linux/highmem.h>
#include <linux/pid.h>
#include <linux/sched.h>
#include <linux/nodemask.h>
#include <linux/capability.h>
#include <linux/cred.h>
#include "hpmmap.h"

struct hpm_stats hpm_st;
bool hpm_fallback = true;
module_param_named(fallback, hpm_fallback, bool, 0644);
MODULE_PARM_DESC(fallback, "pool exhausted: serve from Linux (1, counted) or fail with ENOMEM (0)");

/*
 * Failure injection (issue 12.3): with fail_nth=N (written at run time), the Nth
 * allocation from then on at an injection point (ctx, block struct, pool block, block
 * map, data VMA, offset search) fails with ENOMEM, once; fail_nth reads 0 after it fired.
 * 0 (the default) costs one read per point.
 */
static int fail_nth;
module_param(fail_nth, int, 0644);
MODULE_PARM_DESC(fail_nth, "debug: make the Nth allocation from now on fail once (0: off)");

bool hpm_should_fail(void)
{
	for (;;) {
		int n = READ_ONCE(fail_nth);

		if (likely(n <= 0))
			return false;
		if (cmpxchg(&fail_nth, n, n - 1) == n)
			return n == 1;
	}
}

/* Only the caller itself can be named: pid 0 or its own pid. */
static int check_pid(s32 pid)
{
	struct pid *p;
	bool exists;

	if (pid == 0 || pid == task_tgid_vnr(current))
		return 0;
	if (pid < 0)
		return -EINVAL;
	rcu_read_lock();
	p = find_vpid(pid);
	exists = p && pid_task(p, PIDTYPE_PID);
	rcu_read_unlock();
	return exists ? -EPERM : -ESRCH;
}

/*
 * Who may register: whoever can open /dev/hpmmap (its mode is dev_mode, root's group
 * by default), and, when register_gid is set, only members of that group (or
 * CAP_SYS_ADMIN). Statistics stay readable to anyone who can open the device.
 */
static ushort dev_mode = 0660;
module_param(dev_mode, ushort, 0444);
MODULE_PARM_DESC(dev_mode, "mode of /dev/hpmmap (default 0660: root and root's group)");
static int register_gid = -1;
module_param(register_gid, int, 0644);
MODULE_PARM_DESC(register_gid, "only this group (or CAP_SYS_ADMIN) may register; -1: anyone who can open the device");

static bool may_register(void)
{
	int gid = READ_ONCE(register_gid);

	if (gid < 0 || capable(CAP_SYS_ADMIN))
		return true;
	return in_group_p(make_kgid(current_user_ns(), gid));
}

static long ioc_register(void __user *up)
{
	struct hpmmap_register r;
	unsigned int shift;

	if (copy_from_user(&r, up, sizeof(r)))
		return -EFAULT;
	if (!may_register())
		return -EACCES;
	if ((r.flags & ~HPMMAP_REG_FLAGS) || r.reserved)
		return -EINVAL;
	shift = r.page_shift ? r.page_shift : 30;
	if (shift != 30 && shift != 21)
		return -EINVAL;
	if (r.node < -1 || r.node >= MAX_NUMNODES || (r.node >= 0 && !node_online(r.node)))
		return -EINVAL;
	{
		int err = check_pid(r.pid);

		if (err)
			return err;
	}
	if (!current->mm)
		return -EINVAL;
	return hpm_register_current(r.flags, shift, r.node, r.flags & HPMMAP_REG_ON_EXEC);
}

static long ioc_deregister(void __user *up)
{
	struct hpmmap_deregister d;
	int err;

	if (copy_from_user(&d, up, sizeof(d)))
		return -EFAULT;
	if (d.flags)
		return -EINVAL;
	err = check_pid(d.pid);
	return err ?: hpm_deregister_current();
}

static void fill_stats(struct hpmmap_stats *s)
{
	struct hpm_ctx *ctx;

	s->pool_bytes = hpm_pool_bytes();
	s->free_bytes = hpm_pool_free_bytes();
	s->bytes_mapped = s->pool_bytes - s->free_bytes;
	s->registered = hpm_nr_serving();
	s->mappings = atomic64_read(&hpm_st.mappings);
	s->fallbacks = atomic64_read(&hpm_st.fallbacks);
	s->faults = atomic64_read(&hpm_st.faults);
	s->fork_copies = atomic64_read(&hpm_st.fork_copies);
	s->fork_failures = atomic64_read(&hpm_st.fork_failures);
	hpm_pool_free_blocks(s->free_blocks);
	ctx = current->mm ? hpm_ctx_get_mm(current->mm) : NULL;
	s->self = ctx && ctx->serving;
	if (ctx) {
		hpm_ctx_count_blocks(ctx, s->self_blocks);
		hpm_ctx_put(ctx);
	}
}

static long ioc_stats(void __user *up)
{
	struct hpmmap_stats s = { .size = sizeof(s), .version = HPMMAP_UAPI_VERSION };

	fill_stats(&s);
	return copy_to_user(up, &s, sizeof(s)) ? -EFAULT : 0;
}

static long hpm_ioctl(struct file *f, unsigned int cmd, unsigned long arg)
{
	void __user *up = (void __user *)arg;
	static const u32 sizes[] = {
		[1] = sizeof(struct hpmmap_register),
		[2] = sizeof(struct hpmmap_deregister),
		[3] = sizeof(struct hpmmap_stats),
		[5] = sizeof(struct hpmmap_rank_stats),
	};
	u32 hdr[2];
	unsigned int nr = _IOC_NR(cmd);

	/* The size is checked from the struct's own field, not the command number, so
	 * that a wrong size gets EINVAL rather than ENOTTY. */
	if (_IOC_TYPE(cmd) != HPMMAP_IOC_MAGIC || nr < 1 || nr >= ARRAY_SIZE(sizes) || !sizes[nr])
		return -ENOTTY;
	if (copy_from_user(hdr, up, sizeof(hdr)))
		return -EFAULT;
	if (hdr[0] != sizes[nr])
		return -EINVAL;
	if (hdr[1] != HPMMAP_UAPI_VERSION)
		return -EPROTO;
	switch (nr) {
	case 1:
		return ioc_register(up);
	case 2:
		return ioc_deregister(up);
	case 5:
		return hpm_ioc_rank(up);
	default:
		return ioc_stats(up);
	}
}

static const struct file_operations hpm_dev_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = hpm_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

static struct miscdevice hpm_dev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "hpmmap",
	.fops = &hpm_dev_fops,
};

/* ---- sysfs ---- */

#define STAT_ATTR(name, expr)                                                            \
	static ssize_t name##_show(struct kobject *k, struct kobj_attribute *a, char *buf) \
	{                                                                                 \
		struct hpmmap_stats s = {};                                               \
		fill_stats(&s);                                                           \
		return sysfs_emit(buf, "%llu\n", (unsigned long long)(expr));             \
	}                                                                                 \
	static struct kobj_attribute name##_attr = __ATTR_RO(name)

STAT_ATTR(pool_bytes, s.pool_bytes);
STAT_ATTR(free_bytes, s.free_bytes);
STAT_ATTR(bytes_mapped, s.bytes_mapped);
STAT_ATTR(registered, s.registered);
STAT_ATTR(mappings, s.mappings);
STAT_ATTR(fallbacks, s.fallbacks);
STAT_ATTR(faults, s.faults);
STAT_ATTR(fork_copies, s.fork_copies);
STAT_ATTR(fork_failures, s.fork_failures);

/* Pool bytes out of the pool because a device or pipe still references them after
 * their mapping went (issue 12.1); they return when the last reference goes. */
static ssize_t quarantined_bytes_show(struct kobject *k, struct kobj_attribute *a, char *buf)
{
	return sysfs_emit(buf, "%llu\n", (unsigned long long)hpm_pool_quarantined_bytes());
}
static struct kobj_attribute quarantined_bytes_attr = __ATTR_RO(quarantined_bytes);

static ssize_t free_blocks_show(struct kobject *k, struct kobj_attribute *a, char *buf)
{
	u64 fb[HPM_NORD];
	int o, w = 0;

	hpm_pool_free_blocks(fb);
	for (o = 0; o < HPM_NORD; o++)
		w += sysfs_emit_at(buf, w, "%luM %llu\n", 2ul << o, fb[o]);
	return w;
}
static struct kobj_attribute free_blocks_attr = __ATTR_RO(free_blocks);

static ssize_t nodes_show(struct kobject *k, struct kobj_attribute *a, char *buf)
{
	return hpm_pool_show_nodes(buf, PAGE_SIZE);
}
static struct kobj_attribute nodes_attr = __ATTR_RO(nodes);

static ssize_t pool_source_show(struct kobject *k, struct kobj_attribute *a, char *buf)
{
	return hpm_pool_show_source(buf);
}
static struct kobj_attribute pool_source_attr = __ATTR_RO(pool_source);

static ssize_t pv_zero_bytes_show(struct kobject *k, struct kobj_attribute *a, char *buf)
{
	return sysfs_emit(buf, "%llu\n", (unsigned long long)hpm_pool_pv_zero_bytes());
}
static struct kobj_attribute pv_zero_bytes_attr = __ATTR_RO(pv_zero_bytes);

static ssize_t policy_show(struct kobject *k, struct kobj_attribute *a, char *buf)
{
	return sysfs_emit(buf, "%s\n", READ_ONCE(hpm_fallback) ? "fallback" : "enomem");
}

static ssize_t policy_store(struct kobject *k, struct kobj_attribute *a, const char *buf,
			    size_t n)
{
	if (sysfs_streq(buf, "fallback"))
		WRITE_ONCE(hpm_fallback, true);
	else if (sysfs_streq(buf, "enomem"))
		WRITE_ONCE(hpm_fallback, false);
	else
		return -EINVAL;
	return n;
}
static struct kobj_attribute policy_attr = __ATTR_RW(policy);

static struct attribute *hpm_attrs[] = {
	&pool_bytes_attr.attr, &free_bytes_attr.attr, &bytes_mapped_attr.attr,
	&registered_attr.attr, &mappings_attr.attr, &fallbacks_attr.attr,
	&faults_attr.attr, &fork_copies_attr.attr, &fork_failures_attr.attr,
	&free_blocks_attr.attr, &nodes_attr.attr, &policy_attr.attr, &pool_source_attr.attr,
	&pv_zero_bytes_attr.attr, &quarantined_bytes_attr.attr, NULL,
};
static const struct attribute_group hpm_group = { .attrs = hpm_attrs };
static struct kobject *hpm_kobj;

static int __init hpm_init(void)
{
	int err = hpm_pool_init();

	if (err)
		return err;
	err = hpm_ctx_init();
	if (err)
		goto pool;
	hpm_kobj = kobject_create_and_add("hpmmap", kernel_kobj);
	if (!hpm_kobj) {
		err = -ENOMEM;
		goto ctx;
	}
	err = sysfs_create_group(hpm_kobj, &hpm_group);
	if (err)
		goto kobj;
	hpm_dev.mode = dev_mode & 0666;
	err = misc_register(&hpm_dev);
	if (err)
		goto kobj;
	err = hpm_hooks_init();
	if (err)
		goto misc;
	pr_info("hpmmap: ready, pool %llu MiB\n", hpm_pool_bytes() >> 20);
	return 0;
misc:
	misc_deregister(&hpm_dev);
kobj:
	kobject_put(hpm_kobj);
ctx:
	hpm_ctx_exit();
pool:
	hpm_pool_exit();
	return err;
}

static void __exit hpm_exit(void)
{
	hpm_hooks_exit();
	misc_deregister(&hpm_dev);
	kobject_put(hpm_kobj);
	hpm_ctx_exit();
	hpm_rank_exit();
	hpm_pool_exit();
	pr_info("hpmmap: unloaded\n");
}

module_init(hpm_init);
module_exit(hpm_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("HPMMAP: eager large-page memory for registered HPC processes");
