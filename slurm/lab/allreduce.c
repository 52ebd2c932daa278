/*
 * The Slurm lab's MPI check (tests/tests/slurm_lab.rs): every rank contributes rank + 1 to
 * an MPI_Allreduce and prints what it got, so a wrong wire-up (ranks that do not see each
 * other, a wrong size) shows in the sum.
 */
#include <mpi.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	int rank, size;
	long mine, sum = 0;
	char host[64] = "";

	MPI_Init(&argc, &argv);
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);
	mine = rank + 1;
	MPI_Allreduce(&mine, &sum, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
	gethostname(host, sizeof(host) - 1);
	printf("allreduce rank=%d size=%d sum=%ld host=%s\n", rank, size, sum, host);
	MPI_Finalize();
	return sum == (long)size * (size + 1) / 2 ? 0 : 1;
}
