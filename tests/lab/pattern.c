/*
 * Guest-side helper of the two-tenants lab (tests/tests/two_tenants_lab.rs): writes or looks
 * for 8-byte patterns in guest-physical memory through /dev/mem (the hpmmap pool is
 * e820-reserved, so /dev/mem may map it).
 *   pattern fill BASE SIZE WORD       write WORD to every 8-byte word of [BASE, BASE+SIZE)
 *   pattern scan BASE SIZE WORD...    count words equal to each WORD, and non-zero words
 * Prints one line: "PATTERN-<fill|scan> base=.. size=.. [WORD=count ...] nonzero=N".
 */
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define CHUNK (64ul << 20)

int main(int argc, char **argv)
{
	if (argc < 5) {
		fprintf(stderr, "usage: pattern fill|scan BASE SIZE WORD...\n");
		return 2;
	}
	int fill = argv[1][0] == 'f';
	uint64_t base = strtoull(argv[2], NULL, 0), size = strtoull(argv[3], NULL, 0);
	int nwords = argc - 4;
	uint64_t words[8], counts[8] = { 0 }, nonzero = 0;

	if (nwords > 8)
		nwords = 8;
	for (int i = 0; i < nwords; i++)
		words[i] = strtoull(argv[4 + i], NULL, 0);
	int fd = open("/dev/mem", O_RDWR | O_SYNC);
	if (fd < 0) {
		perror("/dev/mem");
		return 1;
	}
	for (uint64_t off = 0; off < size; off += CHUNK) {
		uint64_t len = size - off < CHUNK ? size - off : CHUNK;
		volatile uint64_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
					    (off_t)(base + off));
		if (p == MAP_FAILED) {
			perror("mmap /dev/mem");
			return 1;
		}
		for (uint64_t i = 0; i < len / 8; i++) {
			if (fill) {
				p[i] = words[0];
				continue;
			}
			uint64_t v = p[i];
			if (v)
				nonzero++;
			for (int w = 0; w < nwords; w++)
				if (v == words[w])
					counts[w]++;
		}
		munmap((void *)p, len);
	}
	printf("PATTERN-%s base=%#" PRIx64 " size=%#" PRIx64, fill ? "fill" : "scan", base, size);
	for (int w = 0; w < nwords && !fill; w++)
		printf(" %#" PRIx64 "=%" PRIu64, words[w], counts[w]);
	printf(" nonzero=%" PRIu64 "\n", nonzero);
	return 0;
}
