/*
 * hpmmap-icount: a QEMU TCG plugin that counts, per guest CPU, the guest-kernel
 * instructions it executes, and globally the instructions of the measured rank's own code,
 * and prints both whenever the rank executes a marker instruction.
 *
 * Why: under `-accel tcg,thread=single -icount shift=0` every vCPU shares one clock that
 * advances with the instructions of whichever vCPU QEMU runs (round robin), so a rank's
 * elapsed time, and even its guest-accounted CPU time, grows when another vCPU merely
 * burns CPU (measured: 0.40 s -> 0.9-1.06 s). The instructions of the rank's code plus the
 * kernel instructions on the rank's CPU do not.
 *
 * Which CPU: QEMU 10.0 passes a vCPU index fixed when a block was translated when TCG runs
 * single-threaded (measured: a loop translated on vCPU 0 and run on vCPU 1 was counted on
 * 0), so the plugin tells CPUs apart at run time by the guest kernel's per-CPU base: GS
 * base in the kernel, KERNEL_GS_BASE in user mode and on kernel entry before swapgs.
 * Only kernel blocks pay for that (a register read); user blocks outside the rank's code
 * are not instrumented at all.
 *
 * Marker: `nopl 0x484d50NN(%rax)` (0f 1f 80 NN 50 4d 48) in the rank's code, NN the kind.
 * Output (QEMU's log, -d plugin -D FILE), one line per marker:
 *   HPMMAP-ICOUNT kind=NN cpu=0xPERCPU kern=K rank=R
 * K: kernel instructions so far on the CPU that executed the marker (blocks counted whole
 * when entered); R: rank-code instructions so far (all ranks).
 *
 * Arguments: rank_lo=ADDR,rank_hi=ADDR: the rank program's code (a static non-PIE binary
 * linked at a fixed address).
 *
 * Built by hpmmap-bench with `cc -shared -fPIC`; the few API declarations it needs are
 * below (QEMU's qemu-plugin.h is not packaged by Debian); they match QEMU 9.0 to 10.x.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
typedef struct {
    const char *target_name;
    struct {
        int min;
        int cur;
    } version;
    bool system_emulation;
    union {
        struct {
            int smp_vcpus;
            int max_vcpus;
        } system;
    };
} qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
struct qemu_plugin_register;
typedef struct {
    struct qemu_plugin_register *handle;
    const char *name;
    const char *feature;
} qemu_plugin_reg_descriptor;
/* glib's GArray and GByteArray: QEMU's own glib serves the calls. */
typedef struct {
    char *data;
    unsigned int len;
} GArray;
typedef struct {
    uint8_t *data;
    unsigned int len;
} GByteArray;
GByteArray *g_byte_array_new(void);
GByteArray *g_byte_array_set_size(GByteArray *, unsigned int);

enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t, struct qemu_plugin_tb *);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int, void *);
typedef void (*qemu_plugin_vcpu_simple_cb_t)(qemu_plugin_id_t, unsigned int);

#define EXPORT __attribute__((visibility("default")))
EXPORT int qemu_plugin_version = 2;

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t, qemu_plugin_vcpu_tb_trans_cb_t);
void qemu_plugin_register_vcpu_init_cb(qemu_plugin_id_t, qemu_plugin_vcpu_simple_cb_t);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *, size_t);
size_t qemu_plugin_insn_data(const struct qemu_plugin_insn *, void *, size_t);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *,
                                            qemu_plugin_vcpu_udata_cb_t,
                                            enum qemu_plugin_cb_flags, void *);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *, qemu_plugin_vcpu_udata_cb_t,
                                          enum qemu_plugin_cb_flags, void *);
GArray *qemu_plugin_get_registers(void);
int qemu_plugin_read_register(struct qemu_plugin_register *, GByteArray *);
void qemu_plugin_outs(const char *);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, void (*)(qemu_plugin_id_t, void *),
                                    void *);

/* Kernel half of the address space (4- or 5-level paging: -cpu max has LA57). */
#define KERNEL_START 0x8000000000000000ULL
#define MAX_CPUS 64
/* Single-threaded TCG runs every vCPU on one host thread: plain counters are exact. */
static struct {
    uint64_t base;
    uint64_t kern;
} cpus[MAX_CPUS];
static uint64_t rank_insns, unknown_kern;
static uint64_t rank_lo, rank_hi;
static struct qemu_plugin_register *gs_base, *k_gs_base;
static GByteArray *buf;

static uint64_t read_reg(struct qemu_plugin_register *r)
{
    uint64_t v = 0;
    g_byte_array_set_size(buf, 0);
    if (r && qemu_plugin_read_register(r, buf) == 8)
        memcpy(&v, buf->data, 8);
    return v;
}

/* The running CPU's per-CPU base (0 when it cannot be told). */
static uint64_t percpu_base(void)
{
    uint64_t g = read_reg(gs_base);
    return g >= KERNEL_START ? g : read_reg(k_gs_base);
}

static int cpu_slot(uint64_t base)
{
    if (base < KERNEL_START)
        return -1;
    for (int i = 0; i < MAX_CPUS; i++) {
        if (cpus[i].base == base)
            return i;
        if (!cpus[i].base) {
            cpus[i].base = base;
            return i;
        }
    }
    return -1;
}

static void on_kernel_tb(unsigned int vcpu, void *udata)
{
    int s = cpu_slot(percpu_base());
    (void)vcpu;
    if (s < 0)
        unknown_kern += (uintptr_t)udata;
    else
        cpus[s].kern += (uintptr_t)udata;
}

static void on_rank_tb(unsigned int vcpu, void *udata)
{
    (void)vcpu;
    rank_insns += (uintptr_t)udata;
}

static void on_mark(unsigned int vcpu, void *udata)
{
    char line[160];
    uint64_t base = percpu_base();
    int s = cpu_slot(base);
    (void)vcpu;
    snprintf(line, sizeof line,
             "HPMMAP-ICOUNT kind=%u cpu=0x%" PRIx64 " kern=%" PRIu64 " rank=%" PRIu64 "\n",
             (unsigned)(uintptr_t)udata, base, s < 0 ? 0 : cpus[s].kern, rank_insns);
    qemu_plugin_outs(line);
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    uint64_t pc = qemu_plugin_tb_vaddr(tb);
    size_t n = qemu_plugin_tb_n_insns(tb);
    (void)id;
    if (pc >= KERNEL_START) {
        qemu_plugin_register_vcpu_tb_exec_cb(tb, on_kernel_tb, QEMU_PLUGIN_CB_R_REGS,
                                             (void *)(uintptr_t)n);
        return;
    }
    if (pc < rank_lo || pc >= rank_hi)
        return;
    qemu_plugin_register_vcpu_tb_exec_cb(tb, on_rank_tb, QEMU_PLUGIN_CB_NO_REGS,
                                         (void *)(uintptr_t)n);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        unsigned char b[7];
        if (qemu_plugin_insn_size(insn) != 7 || qemu_plugin_insn_data(insn, b, 7) != 7)
            continue;
        if (b[0] == 0x0f && b[1] == 0x1f && b[2] == 0x80 && b[4] == 0x50 && b[5] == 0x4d &&
            b[6] == 0x48)
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_mark, QEMU_PLUGIN_CB_R_REGS,
                                                   (void *)(uintptr_t)b[3]);
    }
}

static void on_vcpu_init(qemu_plugin_id_t id, unsigned int vcpu)
{
    GArray *regs;
    (void)id;
    (void)vcpu;
    if (gs_base)
        return;
    regs = qemu_plugin_get_registers();
    for (unsigned i = 0; regs && i < regs->len; i++) {
        qemu_plugin_reg_descriptor *d = &((qemu_plugin_reg_descriptor *)regs->data)[i];
        if (!strcmp(d->name, "gs_base"))
            gs_base = d->handle;
        else if (!strcmp(d->name, "k_gs_base"))
            k_gs_base = d->handle;
    }
}

static void on_exit_dump(qemu_plugin_id_t id, void *udata)
{
    char line[200];
    (void)id;
    (void)udata;
    snprintf(line, sizeof line,
             "HPMMAP-ICOUNT-END gs_base=%d k_gs_base=%d unknown_kern=%" PRIu64 " rank=%" PRIu64
             "\n",
             gs_base != NULL, k_gs_base != NULL, unknown_kern, rank_insns);
    qemu_plugin_outs(line);
    for (int i = 0; i < MAX_CPUS && cpus[i].base; i++) {
        snprintf(line, sizeof line, "HPMMAP-ICOUNT-CPU cpu=0x%" PRIx64 " kern=%" PRIu64 "\n",
                 cpus[i].base, cpus[i].kern);
        qemu_plugin_outs(line);
    }
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
                               char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (!strncmp(argv[i], "rank_lo=", 8))
            rank_lo = strtoull(argv[i] + 8, NULL, 0);
        else if (!strncmp(argv[i], "rank_hi=", 8))
            rank_hi = strtoull(argv[i] + 8, NULL, 0);
        else {
            fprintf(stderr, "hpmmap-icount: unknown argument %s\n", argv[i]);
            return -1;
        }
    }
    buf = g_byte_array_new();
    qemu_plugin_register_vcpu_init_cb(id, on_vcpu_init);
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_exit_dump, NULL);
    return 0;
}
