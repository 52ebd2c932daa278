/* hpmmap-triad: the image's built-in HPC workload until bench/'s workloads land.
 * A STREAM-style triad a[i] = b[i] + s*c[i] over three arrays, timed per pass; prints the
 * best bandwidth. Ranks come from HPMMAP_RANK/HPMMAP_RANKS (set by the image's job runner).
 *   hpmmap-triad [MiB per array, default 32] [passes, default 5]
 * Exit status: 0 when the result checks out, 1 on a wrong result, 2 on bad arguments. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static long arg(const char *s, const char *what)
{
	char *end;
	long v = strtol(s, &end, 10);
	if (*s == 0 || *end != 0 || v <= 0) {
		fprintf(stderr, "hpmmap-triad: %s must be a positive integer, not '%s'\n", what, s);
		exit(2);
	}
	return v;
}

int main(int argc, char **argv)
{
	long mib = argc > 1 ? arg(argv[1], "MiB per array") : 32;
	long passes = argc > 2 ? arg(argv[2], "passes") : 5;
	const char *rank = getenv("HPMMAP_RANK");
	size_t n = (size_t)mib * 1024 * 1024 / sizeof(double);
	double *a = malloc(n * sizeof(double)), *b = malloc(n * sizeof(double)),
	       *c = malloc(n * sizeof(double));
	if (!a || !b || !c) {
		fprintf(stderr, "hpmmap-triad: cannot allocate 3 x %ld MiB\n", mib);
		return 2;
	}
	double t0 = now();
	for (size_t i = 0; i < n; i++) {
		a[i] = 0.0;
		b[i] = 1.0;
		c[i] = 2.0;
	}
	double first_touch = now() - t0, best = 1e30;
	const double s = 3.0;
	for (long p = 0; p < passes; p++) {
		double t = now();
		for (size_t i = 0; i < n; i++)
			a[i] = b[i] + s * c[i];
		t = now() - t;
		if (t < best)
			best = t;
	}
	for (size_t i = 0; i < n; i += 4096)
		if (a[i] != 7.0) {
			fprintf(stderr, "hpmmap-triad: wrong result a[%zu]=%f\n", i, a[i]);
			return 1;
		}
	double mb = 3.0 * n * sizeof(double) / 1e6;
	printf("hpmmap-triad rank %s: %ld MiB x 3, %ld passes: best triad %.1f MB/s, first touch %.3f s\n",
	       rank ? rank : "0", mib, passes, mb / best, first_touch);
	return 0;
}
