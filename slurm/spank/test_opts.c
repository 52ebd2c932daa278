/* Unit tests of the option checks (make test): every rejection names its cause. */
#include "hpmmap_opts.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int failures;

#define CHECK(cond, ...)                                                       \
	do {                                                                   \
		if (!(cond)) {                                                 \
			failures++;                                            \
			fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);  \
			fprintf(stderr, __VA_ARGS__);                          \
			fputc('\n', stderr);                                   \
		}                                                              \
	} while (0)

static void rejects(int rc, const char *why, const char *want)
{
	CHECK(rc == -1, "expected a rejection naming \"%s\"", want);
	CHECK(strstr(why, want) != NULL, "\"%s\" does not name \"%s\"", why, want);
}

static void write_file(const char *dir, const char *name, const char *text)
{
	char p[512];
	FILE *f;
	snprintf(p, sizeof(p), "%s/%s", dir, name);
	f = fopen(p, "w");
	if (!f) {
		perror(p);
		exit(1);
	}
	fputs(text, f);
	fclose(f);
}

int main(void)
{
	struct hpmmap_opts o;
	char why[HPMMAP_WHY_LEN] = "";
	char dir[] = "/tmp/hpmmap-spank-test-XXXXXX";

	memset(&o, 0, sizeof(o));
	CHECK(hpmmap_set_mem(&o, "4G", why) == 0 && o.mem_mib == 4096, "4G: %s", why);
	CHECK(hpmmap_set_mem(&o, "2048M", why) == 0 && o.mem_mib == 2048, "2048M");
	CHECK(hpmmap_set_mem(&o, "1024", why) == 0 && o.mem_mib == 1024, "MB like --mem");
	CHECK(hpmmap_set_mem(&o, "1T", why) == 0 && o.mem_mib == 1048576, "1T");
	rejects(hpmmap_set_mem(&o, "1536M", why), why, "whole GiB");
	rejects(hpmmap_set_mem(&o, "4X", why), why, "not a size");
	rejects(hpmmap_set_mem(&o, "-1G", why), why, "not a size");
	rejects(hpmmap_set_mem(&o, "", why), why, "not a size");
	rejects(hpmmap_set_mem(&o, "0G", why), why, "out of range");
	rejects(hpmmap_set_mem(&o, "99999999999999999999G", why), why, "too large");

	CHECK(hpmmap_set_vcpus(&o, "2", why) == 0 && o.vcpus == 2, "2 vcpus");
	rejects(hpmmap_set_vcpus(&o, "0", why), why, "outside 1..");
	rejects(hpmmap_set_vcpus(&o, "2x", why), why, "not a number");
	rejects(hpmmap_set_vcpus(&o, "5000", why), why, "outside 1..");

	CHECK(hpmmap_set_vf(&o, "0000:01:10.0", why) == 0, "PCI address");
	CHECK(hpmmap_set_vf(&o, "ib0", why) == 0, "ib0");
	rejects(hpmmap_set_vf(&o, "ib0;reboot", why), why, "not a device name");

	rejects(hpmmap_set_image(&o, "img", why), why, "absolute path");
	CHECK(mkdtemp(dir) != NULL, "mkdtemp");
	CHECK(hpmmap_set_image(&o, dir, why) == 0, "absolute image path");
	rejects(hpmmap_check_image("/nonexistent/img", why), why, "No such file");
	rejects(hpmmap_check_image(dir, why), why, "no manifest.json");
	write_file(dir, "manifest.json", "{\n  \"format\": 2,\n}\n");
	rejects(hpmmap_check_image(dir, why), why, "not a format 1");
	write_file(dir, "manifest.json", "{\n  \"format\": 1,\n  \"kernel\": \"vmlinux\"\n}\n");
	rejects(hpmmap_check_image(dir, why), why, "no kernel");
	write_file(dir, "vmlinux", "");
	rejects(hpmmap_check_image(dir, why), why, "no initramfs");
	write_file(dir, "initramfs.cpio.gz", "");
	CHECK(hpmmap_check_image(dir, why) == 0, "a job image: %s", why);
	write_file(dir, "x", "");
	{
		char f[600];
		snprintf(f, sizeof(f), "%s/x", dir);
		rejects(hpmmap_check_image(f, why), why, "not a directory");
		unlink(f);
	}

	memset(&o, 0, sizeof(o));
	o.mem_mib = 4096;
	o.vcpus = 4;
	rejects(hpmmap_check_fit(&o, 2048, 8, "this allocation", why), why,
		"--hpmmap-mem=4G is more than the 2048 MB this allocation holds");
	rejects(hpmmap_check_fit(&o, 8192, 2, "this allocation", why), why,
		"--hpmmap-vcpus=4 is more than the 2 CPUs");
	CHECK(hpmmap_check_fit(&o, 0, 0, "x", why) == 0, "unknown limits are not checked");
	CHECK(hpmmap_check_fit(&o, 4096, 4, "x", why) == 0, "exact fit");

	memset(&o, 0, sizeof(o));
	CHECK(hpmmap_defaults(&o, 3000, 2, why) == 0 && o.mem_mib == 2048 && o.vcpus == 2,
	      "defaults round memory down to GiB: %" PRIu64 " %u", o.mem_mib, o.vcpus);
	memset(&o, 0, sizeof(o));
	rejects(hpmmap_defaults(&o, 1000, 2, why), why, "less than the 1 GiB");

	{
		char c[600];
		snprintf(c, sizeof(c), "rm -rf '%s'", dir);
		if (system(c) != 0)
			failures++;
	}
	if (failures) {
		fprintf(stderr, "%d check(s) failed\n", failures);
		return 1;
	}
	printf("test_opts: all checks passed\n");
	return 0;
}
