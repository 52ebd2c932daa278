#include "hpmmap_opts.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define WHY(...) (snprintf(why, HPMMAP_WHY_LEN, __VA_ARGS__), -1)

int hpmmap_set_image(struct hpmmap_opts *o, const char *arg, char *why)
{
	if (arg == NULL || arg[0] == '\0')
		return WHY("needs a job image directory");
	if (arg[0] != '/')
		return WHY("\"%s\" must be an absolute path (the nodes read it too)", arg);
	if (strlen(arg) >= sizeof(o->image))
		return WHY("path too long");
	snprintf(o->image, sizeof(o->image), "%s", arg);
	return 0;
}

int hpmmap_set_mem(struct hpmmap_opts *o, const char *arg, char *why)
{
	char *end;
	unsigned long long n;
	uint64_t mib;

	if (arg == NULL || !isdigit((unsigned char)arg[0]))
		return WHY("\"%s\" is not a size like 4G or 4096M", arg ? arg : "");
	errno = 0;
	n = strtoull(arg, &end, 10);
	if (errno != 0)
		return WHY("\"%s\" is too large", arg);
	if (strcmp(end, "G") == 0 || strcmp(end, "g") == 0)
		mib = (uint64_t)n * 1024;
	else if (strcmp(end, "T") == 0 || strcmp(end, "t") == 0)
		mib = (uint64_t)n * 1024 * 1024;
	else if (strcmp(end, "M") == 0 || strcmp(end, "m") == 0 || *end == '\0')
		mib = n; /* Slurm's own --mem takes MB without a suffix */
	else
		return WHY("\"%s\" is not a size like 4G or 4096M", arg);
	if (n > (1ULL << 40) || mib == 0)
		return WHY("\"%s\" is out of range", arg);
	if (mib % 1024 != 0)
		return WHY("\"%s\" is not whole GiB (the VM lies on 1 GiB pages)", arg);
	o->mem_mib = mib;
	return 0;
}

int hpmmap_set_vcpus(struct hpmmap_opts *o, const char *arg, char *why)
{
	char *end;
	unsigned long n;
	if (arg == NULL || !isdigit((unsigned char)arg[0]))
		return WHY("\"%s\" is not a number of vCPUs", arg ? arg : "");
	errno = 0;
	n = strtoul(arg, &end, 10);
	if (errno != 0 || *end != '\0')
		return WHY("\"%s\" is not a number of vCPUs", arg);
	if (n < 1 || n > HPMMAP_MAX_VCPUS)
		return WHY("%lu is outside 1..%d", n, HPMMAP_MAX_VCPUS);
	o->vcpus = (unsigned)n;
	return 0;
}

int hpmmap_set_vf(struct hpmmap_opts *o, const char *arg, char *why)
{
	if (arg == NULL || arg[0] == '\0')
		return WHY("needs a device name or PCI address");
	if (strlen(arg) >= sizeof(o->vf))
		return WHY("\"%s\" is too long", arg);
	for (const char *p = arg; *p; p++)
		if (!isalnum((unsigned char)*p) && !strchr("_-.:", *p))
			return WHY("\"%s\" is not a device name or PCI address", arg);
	snprintf(o->vf, sizeof(o->vf), "%s", arg);
	return 0;
}

static int is_file(const char *dir, const char *name)
{
	char p[PATH_MAX + 64];
	struct stat st;
	snprintf(p, sizeof(p), "%s/%s", dir, name);
	return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

int hpmmap_check_image(const char *dir, char *why)
{
	struct stat st;
	char p[PATH_MAX + 64];
	char buf[8192];
	size_t n;
	FILE *f;

	if (stat(dir, &st) != 0)
		return WHY("image %s: %s", dir, strerror(errno));
	if (!S_ISDIR(st.st_mode))
		return WHY("image %s is not a directory (hpmmap-image build --out DIR)", dir);
	snprintf(p, sizeof(p), "%s/manifest.json", dir);
	f = fopen(p, "r");
	if (f == NULL)
		return WHY("image %s has no manifest.json: not a job image", dir);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* hpmmap-image writes pretty JSON; the VMM checks the rest when it boots. */
	if (strstr(buf, "\"format\": 1,") == NULL && strstr(buf, "\"format\":1,") == NULL)
		return WHY("image %s: manifest.json is not a format 1 job image manifest", dir);
	if (!is_file(dir, "vmlinux") && !is_file(dir, "bzImage"))
		return WHY("image %s has no kernel (vmlinux)", dir);
	if (!is_file(dir, "initramfs.cpio.gz"))
		return WHY("image %s has no initramfs.cpio.gz", dir);
	return 0;
}

int hpmmap_check_fit(const struct hpmmap_opts *o, uint64_t mem_mib, uint64_t cpus,
		     const char *where, char *why)
{
	if (o->mem_mib && mem_mib && o->mem_mib > mem_mib)
		return WHY("--hpmmap-mem=%" PRIu64 "G is more than the %" PRIu64
			   " MB %s holds (ask for more with --mem)",
			   o->mem_mib / 1024, mem_mib, where);
	if (o->vcpus && cpus && o->vcpus > cpus)
		return WHY("--hpmmap-vcpus=%u is more than the %" PRIu64
			   " CPUs %s holds (ask for more with -c or --exclusive)",
			   o->vcpus, cpus, where);
	return 0;
}

int hpmmap_defaults(struct hpmmap_opts *o, uint64_t alloc_mem_mib, uint64_t cpus, char *why)
{
	if (o->mem_mib == 0) {
		if (alloc_mem_mib < 1024)
			return WHY("the job holds %" PRIu64 " MB on this node, less than the 1 GiB"
				   " a VM needs (ask for --mem=1G or more, or give --hpmmap-mem)",
				   alloc_mem_mib);
		o->mem_mib = alloc_mem_mib / 1024 * 1024;
	}
	if (o->vcpus == 0)
		o->vcpus = cpus ? (unsigned)cpus : 1;
	return 0;
}
