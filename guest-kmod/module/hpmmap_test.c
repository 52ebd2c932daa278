// SPDX-License-Identifier: GPL-2.0
/*
 * hpmmap_test: test-only hooks for the semantics suite (guest-kmod/tests), kept out of
 * the production module (issue 12.4). Built only with `make HPMMAP_TEST=m`; its device
 * is root's alone (0600). See hpmmap_test_uapi.h.
 */
#include <linux/module.h>
#include <linux/miscdevice.h>
#include <linux/fs.h>
#include <linux/mm.h>
#include <linux/highmem.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>
#include "hpmmap.h"
#include "hpmmap_test_uapi.h"

#define PIN_BATCH 512
#define PIN_MAX (4ull << 30)

struct held {
	struct mutex lock;
	struct page **pages;
	unsigned long n;
};

static int check_range(struct hpmmap_pin_test *t)
{
	if (!t->len || offset_in_page(t->addr) || offset_in_page(t->len) ||
	    t->addr + t->len < t->addr || t->len > PIN_MAX)
		return -EINVAL;
	return 0;
}

/* Pins [addr, addr + len) into pages[] (all or nothing). */
static long pin_range(struct hpmmap_pin_test *t, struct page **pages)
{
	unsigned long addr = t->addr, left = t->len >> PAGE_SHIFT, done = 0;

	t->pinned = t->in_pool = 0;
	while (left) {
		int i, n = pin_user_pages_fast(addr, min_t(unsigned long, left, PIN_BATCH),
					       FOLL_WRITE | FOLL_LONGTERM, pages + done);

		if (n <= 0) {
			unpin_user_pages(pages, done);
			return n ? n : -EFAULT;
		}
		for (i = 0; i < n; i++)
			if (hpm_pa_in_pool(PFN_PHYS(page_to_pfn(pages[done + i]))))
				t->in_pool++;
		done += n;
		addr += (unsigned long)n << PAGE_SHIFT;
		left -= n;
	}
	t->pinned = done;
	return 0;
}

static void put_word(struct page *p, int idx, u64 v)
{
	u64 *kva = kmap_local_page(p);

	kva[idx] = v;
	kunmap_local(kva);
}

static u64 get_word(struct page *p, int idx)
{
	u64 *kva = kmap_local_page(p), v;

	v = kva[idx];
	kunmap_local(kva);
	return v;
}

static long ioc_pin_test(struct hpmmap_pin_test *t)
{
	struct page **pages;
	unsigned long i;
	long err = check_range(t);

	if (err)
		return err;
	pages = kvmalloc_array(t->len >> PAGE_SHIFT, sizeof(*pages), GFP_KERNEL);
	if (!pages)
		return -ENOMEM;
	err = pin_range(t, pages);
	if (!err) {
		for (i = 0; i < t->pinned; i++)
			put_word(pages[i], 1, HPMMAP_PIN_MARK(t->addr + (i << PAGE_SHIFT)));
		unpin_user_pages(pages, t->pinned);
	}
	kvfree(pages);
	return err;
}

static void release(struct held *h)
{
	if (h->pages) {
		unpin_user_pages(h->pages, h->n);
		kvfree(h->pages);
	}
	h->pages = NULL;
	h->n = 0;
}

static long ioc_pin_hold(struct held *h, struct hpmmap_pin_test *t)
{
	struct page **pages;
	long err = check_range(t);

	if (err)
		return err;
	if (h->pages)
		return -EBUSY;
	pages = kvmalloc_array(t->len >> PAGE_SHIFT, sizeof(*pages), GFP_KERNEL);
	if (!pages)
		return -ENOMEM;
	err = pin_range(t, pages);
	if (err) {
		kvfree(pages);
		return err;
	}
	h->pages = pages;
	h->n = t->pinned;
	return 0;
}

static long ioc_pin_dma(struct held *h, struct hpmmap_pin_test *t)
{
	unsigned long i, bad = 0;

	if (!h->pages)
		return -ENOENT;
	for (i = 0; i < h->n; i++) {
		if (t->len)
			put_word(h->pages[i], 2, t->value);
		else if (get_word(h->pages[i], 2) != t->value)
			bad++;
		if (!(i & 1023))
			cond_resched();
	}
	t->pinned = h->n;
	if (!t->len)
		t->value = bad;
	return 0;
}

static long hpmt_ioctl(struct file *f, unsigned int cmd, unsigned long arg)
{
	struct held *h = f->private_data;
	struct hpmmap_pin_test t;
	long err;

	if (_IOC_TYPE(cmd) != HPMMAP_TEST_IOC_MAGIC)
		return -ENOTTY;
	if (copy_from_user(&t, (void __user *)arg, sizeof(t)))
		return -EFAULT;
	if (t.size != sizeof(t))
		return -EINVAL;
	if (t.version != HPMMAP_UAPI_VERSION)
		return -EPROTO;
	mutex_lock(&h->lock);
	switch (cmd) {
	case HPMMAP_IOC_PIN_TEST:
		err = ioc_pin_test(&t);
		break;
	case HPMMAP_IOC_PIN_HOLD:
		err = ioc_pin_hold(h, &t);
		break;
	case HPMMAP_IOC_PIN_DMA:
		err = ioc_pin_dma(h, &t);
		break;
	case HPMMAP_IOC_PIN_RELEASE:
		release(h);
		err = 0;
		break;
	default:
		err = -ENOTTY;
	}
	mutex_unlock(&h->lock);
	if (copy_to_user((void __user *)arg, &t, sizeof(t)))
		return -EFAULT;
	return err;
}

static int hpmt_open(struct inode *i, struct file *f)
{
	struct held *h = kzalloc(sizeof(*h), GFP_KERNEL);

	if (!h)
		return -ENOMEM;
	mutex_init(&h->lock);
	f->private_data = h;
	return 0;
}

static int hpmt_release(struct inode *i, struct file *f)
{
	struct held *h = f->private_data;

	release(h);
	kfree(h);
	return 0;
}

static const struct file_operations hpmt_fops = {
	.owner = THIS_MODULE,
	.open = hpmt_open,
	.release = hpmt_release,
	.unlocked_ioctl = hpmt_ioctl,
	.llseek = noop_llseek,
};

static struct miscdevice hpmt_dev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "hpmmap-test",
	.fops = &hpmt_fops,
	.mode = 0600,
};

module_misc_device(hpmt_dev);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("hpmmap test hooks (semantics suite only)");
