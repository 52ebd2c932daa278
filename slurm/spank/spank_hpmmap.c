/*
 * spank_hpmmap: Slurm SPANK plugin that runs a job's steps in one hpmmap VM per node.
 *
 *   srun|sbatch|salloc --hpmmap-image=IMAGE [--hpmmap-mem=SIZE] [--hpmmap-vcpus=N]
 *                      [--hpmmap-vf=DEV]
 *
 * Submit side (local and allocator contexts): every option is checked where the user typed
 * it, so that a mistake is one line on the user's terminal and never a failed prolog or a
 * drained node: the image is a job image (manifest.json of format 1 and its files), sizes
 * parse, the VM lies on whole 1 GiB pages, and inside an existing allocation the sizes fit
 * it (SLURM_MEM_PER_NODE, SLURM_CPUS_ON_NODE).
 *
 * Node side (remote context, slurmstepd): the first step of a job that asks for a VM on a
 * node starts it through the node helper (hpmmap-slurm-node start: hpmmap-offline reserve
 * --job, hpmmap-vmm --job in the background); later steps find it running. Sizes default
 * from the job's allocation on the node and are checked against it again. A failure
 * there is recorded and reported by every task of the step on its stderr (the step fails,
 * the node stays up). Each task then becomes `hpmmap-slurm-node attach JOB TASK -- ARGV`,
 * which runs the task's command in the VM through the task channel (virtio-vsock, the guest
 * agent; slurm/README.md) and exits with its status.
 *
 * Job epilog (every node of every job): hpmmap-slurm-node stop, which ends the VM and runs
 * `hpmmap-offline recover --job ID`. It never fails the epilog: a failing epilog would
 * drain the node.
 *
 * Plugin arguments (plugstack.conf): helper=PATH (default below).
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <slurm/slurm.h>
#include <slurm/spank.h>

#include "hpmmap_opts.h"

SPANK_PLUGIN(hpmmap, 1);

#define DEFAULT_HELPER "/usr/libexec/hpmmap-slurm/hpmmap-slurm-node"

static char helper[PATH_MAX] = DEFAULT_HELPER;
static struct hpmmap_opts opts;
/* Why the node could not start the VM (remote context), reported by each task. */
static char start_error[512];

static int opt_image(int val, const char *arg, int remote);
static int opt_mem(int val, const char *arg, int remote);
static int opt_vcpus(int val, const char *arg, int remote);
static int opt_vf(int val, const char *arg, int remote);

/*
 * Registered in slurm_spank_init (spank_option_register): sbatch and salloc (allocator
 * context) were seen to ignore a static spank_options table in 22.05 ("unrecognized
 * option"), while srun took it.
 */
static struct spank_option hpmmap_options[] = {
	{ "hpmmap-image", "IMAGE",
	  "[hpmmap] Run the job in an hpmmap VM booted from job image IMAGE "
	  "(a directory from hpmmap-image build), one VM per node",
	  1, 0, opt_image },
	{ "hpmmap-mem", "SIZE",
	  "[hpmmap] VM memory per node, whole GiB (e.g. 4G; default: the "
	  "job's memory on the node, rounded down to GiB)",
	  1, 0, opt_mem },
	{ "hpmmap-vcpus", "N",
	  "[hpmmap] VM vCPUs per node (default: the job's CPUs on the node)",
	  1, 0, opt_vcpus },
	{ "hpmmap-vf", "DEV",
	  "[hpmmap] Pass SR-IOV VF DEV (ib0, mlx5_0, a PF or VF PCI address) "
	  "to the VM",
	  1, 0, opt_vf },
	SPANK_OPTIONS_TABLE_END
};

/*
 * An option's value is rejected by returning an error from its callback: srun, sbatch and
 * salloc then print "Invalid --hpmmap-... argument" after our own line and exit.
 */
static int reject(const char *opt, const char *why)
{
	slurm_error("hpmmap: --%s: %s", opt, why);
	return ESPANK_BAD_ARG;
}

static int opt_image(int val, const char *arg, int remote)
{
	char why[HPMMAP_WHY_LEN];
	(void)val;
	if (hpmmap_set_image(&opts, arg, why) != 0)
		return reject("hpmmap-image", why);
	/* The image is read on the node too; a shared file system is checked once, here. */
	if (!remote && hpmmap_check_image(opts.image, why) != 0)
		return reject("hpmmap-image", why);
	return ESPANK_SUCCESS;
}

static int opt_mem(int val, const char *arg, int remote)
{
	char why[HPMMAP_WHY_LEN];
	(void)val;
	(void)remote;
	if (hpmmap_set_mem(&opts, arg, why) != 0)
		return reject("hpmmap-mem", why);
	return ESPANK_SUCCESS;
}

static int opt_vcpus(int val, const char *arg, int remote)
{
	char why[HPMMAP_WHY_LEN];
	(void)val;
	(void)remote;
	if (hpmmap_set_vcpus(&opts, arg, why) != 0)
		return reject("hpmmap-vcpus", why);
	return ESPANK_SUCCESS;
}

static int opt_vf(int val, const char *arg, int remote)
{
	char why[HPMMAP_WHY_LEN];
	(void)val;
	(void)remote;
	if (hpmmap_set_vf(&opts, arg, why) != 0)
		return reject("hpmmap-vf", why);
	return ESPANK_SUCCESS;
}

static void parse_plugin_args(int ac, char **av)
{
	for (int i = 0; i < ac; i++) {
		if (strncmp(av[i], "helper=", 7) == 0 && av[i][7] == '/')
			snprintf(helper, sizeof(helper), "%s", av[i] + 7);
		else
			slurm_error("hpmmap: unknown plugstack.conf argument \"%s\"", av[i]);
	}
}

int slurm_spank_init(spank_t sp, int ac, char **av)
{
	parse_plugin_args(ac, av);
	for (struct spank_option *o = hpmmap_options; o->name != NULL; o++) {
		spank_err_t rc = spank_option_register(sp, o);
		if (rc != ESPANK_SUCCESS) {
			slurm_error("hpmmap: cannot register --%s: %s", o->name, spank_strerror(rc));
			return rc;
		}
	}
	return ESPANK_SUCCESS;
}

/* A size or count from the environment of srun inside an allocation; 0 when unset. */
static uint64_t env_u64(const char *name)
{
	const char *v = getenv(name);
	char *end;
	unsigned long long n;
	if (v == NULL || *v == '\0')
		return 0;
	errno = 0;
	n = strtoull(v, &end, 10);
	/* SLURM_CPUS_ON_NODE is a plain count; SLURM_MEM_PER_NODE is MB. */
	if (errno != 0 || end == v)
		return 0;
	return n;
}

/* Local (srun) and allocator (sbatch, salloc) contexts: the submit-side checks. */
static int check_submit(void)
{
	char why[HPMMAP_WHY_LEN];
	if (opts.image[0] == '\0') {
		if (opts.mem_mib || opts.vcpus || opts.vf[0]) {
			slurm_error("hpmmap: --hpmmap-mem, --hpmmap-vcpus and --hpmmap-vf need --hpmmap-image");
			return ESPANK_BAD_ARG;
		}
		return ESPANK_SUCCESS;
	}
	/* Inside an allocation (srun in sbatch or salloc) the node's share is known now. */
	if (hpmmap_check_fit(&opts, env_u64("SLURM_MEM_PER_NODE"),
			     env_u64("SLURM_CPUS_ON_NODE"), "this allocation", why) != 0) {
		slurm_error("hpmmap: %s", why);
		return ESPANK_BAD_ARG;
	}
	return ESPANK_SUCCESS;
}

/* Runs the node helper with `args`, its stdout+stderr's last line into `out`. */
static int run_helper(char *const args[], char *out, size_t outlen)
{
	int fd[2];
	pid_t pid;
	int status;
	char buf[4096];
	size_t used = 0;
	ssize_t n;

	if (out && outlen)
		out[0] = '\0';
	if (pipe(fd) != 0)
		return -1;
	pid = fork();
	if (pid < 0) {
		close(fd[0]);
		close(fd[1]);
		return -1;
	}
	if (pid == 0) {
		int devnull = open("/dev/null", O_RDONLY);
		if (devnull >= 0)
			dup2(devnull, 0);
		dup2(fd[1], 1);
		dup2(fd[1], 2);
		close(fd[0]);
		close(fd[1]);
		execv(helper, args);
		fprintf(stderr, "cannot run %s: %s\n", helper, strerror(errno));
		_exit(127);
	}
	close(fd[1]);
	while ((n = read(fd[0], buf + used, sizeof(buf) - 1 - used)) > 0) {
		used += (size_t)n;
		if (used == sizeof(buf) - 1) {
			/* Keep the tail: the last line says why. */
			memmove(buf, buf + used / 2, used - used / 2);
			used -= used / 2;
		}
	}
	close(fd[0]);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	buf[used] = '\0';
	while (used > 0 && (buf[used - 1] == '\n' || buf[used - 1] == '\r'))
		buf[--used] = '\0';
	if (out && outlen) {
		/* Only the last line says why; a longer one is cut to fit. */
		const char *last = strrchr(buf, '\n');
		const char *from = last ? last + 1 : buf;
		size_t len = strlen(from);
		if (len >= outlen)
			len = outlen - 1;
		memcpy(out, from, len);
		out[len] = '\0';
	}
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

/* Remote context, once per step in slurmstepd (root): start this node's VM for the job. */
static void start_vm(spank_t sp)
{
	uint32_t job = 0, step = 0;
	uid_t uid = 0;
	gid_t gid = 0;
	uint64_t alloc_mem = 0;
	uint16_t ncpus = 0;
	char why[HPMMAP_WHY_LEN];
	char sjob[16], suid[16], sgid[16], smem[32], svcpus[16];

	if (spank_get_item(sp, S_JOB_ID, &job) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_JOB_STEPID, &step) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_JOB_UID, &uid) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_JOB_GID, &gid) != ESPANK_SUCCESS) {
		snprintf(start_error, sizeof(start_error), "cannot read the job's id and user");
		return;
	}
	/* The batch script and the extern step run on the node as usual; steps get the VM. */
	if (step == SLURM_BATCH_SCRIPT || step == SLURM_EXTERN_CONT) {
		opts.image[0] = '\0';
		return;
	}
	if (spank_get_item(sp, S_JOB_ALLOC_MEM, &alloc_mem) != ESPANK_SUCCESS)
		alloc_mem = 0;
	if (spank_get_item(sp, S_JOB_NCPUS, &ncpus) != ESPANK_SUCCESS)
		ncpus = 0;
	if (hpmmap_defaults(&opts, alloc_mem, ncpus, why) != 0 ||
	    hpmmap_check_fit(&opts, alloc_mem, ncpus, "the job on this node", why) != 0 ||
	    hpmmap_check_image(opts.image, why) != 0) {
		snprintf(start_error, sizeof(start_error), "%s", why);
		return;
	}
	snprintf(sjob, sizeof(sjob), "%" PRIu32, job);
	snprintf(suid, sizeof(suid), "%u", (unsigned)uid);
	snprintf(sgid, sizeof(sgid), "%u", (unsigned)gid);
	snprintf(smem, sizeof(smem), "%" PRIu64 "G", opts.mem_mib / 1024);
	snprintf(svcpus, sizeof(svcpus), "%u", opts.vcpus);
	{
		char *args[] = { "hpmmap-slurm-node", "start", sjob, suid, sgid, smem,
				 svcpus, opts.image, opts.vf[0] ? opts.vf : NULL, NULL };
		char last[400];
		int rc = run_helper(args, last, sizeof(last));
		if (rc != 0)
			snprintf(start_error, sizeof(start_error), "%s",
				 last[0] ? last : "the node helper failed");
	}
}

int slurm_spank_init_post_opt(spank_t sp, int ac, char **av)
{
	(void)ac;
	(void)av;
	switch (spank_context()) {
	case S_CTX_LOCAL:
	case S_CTX_ALLOCATOR:
		return check_submit();
	case S_CTX_REMOTE:
		if (opts.image[0] != '\0')
			start_vm(sp);
		return ESPANK_SUCCESS;
	default:
		return ESPANK_SUCCESS;
	}
}

/* In each task, as the job's user, just before its command would be exec'd. */
int slurm_spank_task_init(spank_t sp, int ac, char **av)
{
	uint32_t job = 0;
	int task = 0;
	int targc = 0;
	char **targv = NULL;
	char **tenv = NULL;
	char sjob[16], stask[16];
	char **args;
	int i;
	(void)ac;
	(void)av;
	if (opts.image[0] == '\0')
		return ESPANK_SUCCESS;
	if (start_error[0] != '\0') {
		fprintf(stderr, "hpmmap: %s\n", start_error);
		fflush(stderr);
		_exit(1);
	}
	if (spank_get_item(sp, S_JOB_ID, &job) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_TASK_ID, &task) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_JOB_ARGV, &targc, &targv) != ESPANK_SUCCESS ||
	    targc < 1 ||
	    spank_get_item(sp, S_JOB_ENV, &tenv) != ESPANK_SUCCESS) {
		fprintf(stderr, "hpmmap: cannot read the job, task id, command and environment\n");
		_exit(1);
	}
	snprintf(sjob, sizeof(sjob), "%" PRIu32, job);
	snprintf(stask, sizeof(stask), "%d", task);
	/* The task becomes `attach JOB TASK -- ARGV...`: the command runs in the VM. */
	args = calloc((size_t)targc + 6, sizeof(*args));
	if (!args) {
		fprintf(stderr, "hpmmap: out of memory\n");
		_exit(1);
	}
	args[0] = "hpmmap-slurm-node";
	args[1] = "attach";
	args[2] = sjob;
	args[3] = stask;
	args[4] = "--";
	for (i = 0; i < targc; i++)
		args[5 + i] = targv[i];
	/* The task's environment (SLURM_*, PMI*) is slurmstepd's array for the task's execve,
	 * not this process's environ yet. */
	execve(helper, args, tenv);
	fprintf(stderr, "hpmmap: cannot run %s: %s\n", helper, strerror(errno));
	_exit(1);
}

/* Every node of every job, as root: nothing of the job's VM may outlive it. */
int slurm_spank_job_epilog(spank_t sp, int ac, char **av)
{
	uint32_t job = 0;
	char sjob[16];
	char last[400];
	int rc;

	(void)ac;
	(void)av;
	if (spank_get_item(sp, S_JOB_ID, &job) != ESPANK_SUCCESS) {
		slurm_error("hpmmap: epilog: cannot read the job id");
		return ESPANK_SUCCESS;
	}
	snprintf(sjob, sizeof(sjob), "%" PRIu32, job);
	{
		char *args[] = { "hpmmap-slurm-node", "stop", sjob, NULL };
		rc = run_helper(args, last, sizeof(last));
	}
	if (rc != 0)
		slurm_error("hpmmap: epilog of job %s: %s (exit %d)", sjob, last, rc);
	else if (last[0] != '\0')
		slurm_info("hpmmap: epilog of job %s: %s", sjob, last);
	/* Never fail: a failing epilog drains the node. */
	return ESPANK_SUCCESS;
}
