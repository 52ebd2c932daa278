/*
 * The hpmmap SPANK options: parsing and checks, apart from Slurm so that tests can drive
 * them (test_opts.c). Every function that can fail writes one line naming the problem
 * into `why` (HPMMAP_WHY_LEN bytes) and returns -1.
 */
#ifndef HPMMAP_OPTS_H
#define HPMMAP_OPTS_H

#include <limits.h>
#include <stdint.h>

#define HPMMAP_WHY_LEN 256
/* The VMM's vCPU ceiling is KVM's; this only catches typos. */
#define HPMMAP_MAX_VCPUS 1024

struct hpmmap_opts {
	char image[PATH_MAX];
	/* 0: not given (defaults from the allocation on the node). */
	uint64_t mem_mib;
	unsigned vcpus;
	char vf[64];
};

int hpmmap_set_image(struct hpmmap_opts *o, const char *arg, char *why);
int hpmmap_set_mem(struct hpmmap_opts *o, const char *arg, char *why);
int hpmmap_set_vcpus(struct hpmmap_opts *o, const char *arg, char *why);
int hpmmap_set_vf(struct hpmmap_opts *o, const char *arg, char *why);
/* A job image directory: manifest.json of format 1 and the kernel and initramfs. */
int hpmmap_check_image(const char *dir, char *why);
/* Sizes against what the job holds (MiB, CPUs); a 0 limit is unknown and not checked. */
int hpmmap_check_fit(const struct hpmmap_opts *o, uint64_t mem_mib, uint64_t cpus,
		     const char *where, char *why);
/* Fills sizes not given from the allocation: memory rounded down to whole GiB. */
int hpmmap_defaults(struct hpmmap_opts *o, uint64_t alloc_mem_mib, uint64_t cpus, char *why);

#endif
