/*
 * An AVX-512 machine that tells programs it has AVX2 only, so that every runtime picks its AVX2 kernels.
 *
 * ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA hold torch and oneDNN to AVX2, but ONNX Runtime (MLAS) and LiteRT
 * (XNNPACK) choose kernels from the `cpuid` instruction itself. Preloaded (LD_PRELOAD), this library turns on
 * Linux's CPUID faulting for the process (arch_prctl ARCH_SET_CPUID; /proc/cpuinfo flag `cpuid_fault`): every
 * `cpuid` then raises SIGSEGV, which the handler here answers with the real result, AVX-512 (and AVX-VNNI, AMX)
 * bits cleared, the way an AVX2-only EPYC answers. The setting is per thread, inherited by new threads and
 * dropped at execve, where the preload arms it again.
 *
 * Other SIGSEGV handlers (Python's faulthandler, Ray's) are kept and chained: sigaction and signal calls for
 * SIGSEGV record the program's handler instead of replacing this one, and every fault that is not a cpuid goes to
 * it (or to the default action, a crash as before).
 *
 * Build: gcc -O2 -shared -fPIC -o avx2_cpuid.so avx2_cpuid.c -ldl    (infra/cpu/as-avx2 builds and uses it)
 * POSEPIPE_AVX2_CPUID_LOG=1 prints how many cpuid calls were answered, at exit, to stderr.
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);

static sigaction_fn real_sigaction;
static struct sigaction program_handler;   /* what the program asked for on SIGSEGV; SIG_DFL at first */
static int armed;
static atomic_ulong answered;

static long set_cpuid_enabled(int enabled) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, enabled); }

/* Leaf 7: AVX-512 foundation and extensions, AMX, AVX-VNNI and AVX512-BF16 cleared; AVX2, FMA, BMI kept. */
static void as_avx2(unsigned leaf, unsigned subleaf, unsigned *a, unsigned *b, unsigned *c, unsigned *d) {
    if (leaf == 7 && subleaf == 0) {
        /* EBX: avx512f 16, dq 17, ifma 21, pf 26, er 27, cd 28, bw 30, vl 31 */
        *b &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) |
                (1u << 31));
        /* ECX: vbmi 1, vbmi2 6, vnni 11, bitalg 12, vpopcntdq 14 */
        *c &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        /* EDX: 4vnniw 2, 4fmaps 3, vp2intersect 8, amx-bf16 22, avx512-fp16 23, amx-tile 24, amx-int8 25 */
        *d &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25));
    } else if (leaf == 7 && subleaf == 1) {
        /* EAX: avx-vnni 4, avx512-bf16 5 */
        *a &= ~((1u << 4) | (1u << 5));
    }
}

static void to_program(int sig, siginfo_t *info, void *context) {
    struct sigaction handler = program_handler;
    if (handler.sa_handler == SIG_IGN && info->si_code > 0)
        handler.sa_handler = SIG_DFL;      /* a real fault cannot be ignored: it would repeat forever */
    if (handler.sa_handler == SIG_DFL || handler.sa_handler == SIG_IGN) {
        struct sigaction plain = {0};
        plain.sa_handler = handler.sa_handler;
        real_sigaction(sig, &plain, NULL);
        if (info->si_code <= 0 && handler.sa_handler == SIG_DFL)
            raise(sig);                    /* sent by kill/raise: delivered when this handler returns */
        return;                            /* a fault: the instruction runs again and the default action follows */
    }
    if (handler.sa_flags & SA_RESETHAND)
        memset(&program_handler, 0, sizeof program_handler);
    if (handler.sa_flags & SA_SIGINFO)
        handler.sa_sigaction(sig, info, context);
    else
        handler.sa_handler(sig);
}

static void on_segv(int sig, siginfo_t *info, void *context) {
    greg_t *regs = ((ucontext_t *)context)->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)regs[REG_RIP];
    /* CPUID faulting raises a general-protection fault: SIGSEGV with si_code SI_KERNEL, at the instruction */
    if (info->si_code != SI_KERNEL || ip[0] != 0x0f || ip[1] != 0xa2) {
        to_program(sig, info, context);
        return;
    }
    unsigned leaf = (unsigned)regs[REG_RAX], subleaf = (unsigned)regs[REG_RCX], a, b, c, d;
    set_cpuid_enabled(1);
    __cpuid_count(leaf, subleaf, a, b, c, d);
    set_cpuid_enabled(0);
    as_avx2(leaf, subleaf, &a, &b, &c, &d);
    regs[REG_RAX] = a;
    regs[REG_RBX] = b;
    regs[REG_RCX] = c;
    regs[REG_RDX] = d;
    regs[REG_RIP] += 2;
    atomic_fetch_add_explicit(&answered, 1, memory_order_relaxed);
}

int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (!real_sigaction)
        real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    if (sig != SIGSEGV || !armed)
        return real_sigaction(sig, act, old);
    if (old)
        *old = program_handler;
    if (act)
        program_handler = *act;
    return 0;
}

sighandler_t signal(int sig, sighandler_t handler) {
    struct sigaction act = {0}, old;
    act.sa_handler = handler;
    act.sa_flags = SA_RESTART;
    sigemptyset(&act.sa_mask);
    return sigaction(sig, &act, &old) == 0 ? old.sa_handler : SIG_ERR;
}

static void report(void) {
    fprintf(stderr, "avx2_cpuid: pid %d answered %lu cpuid calls as an AVX2-only CPU\n", getpid(),
            atomic_load(&answered));
}

__attribute__((constructor)) static void arm(void) {
    real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    struct sigaction act = {0};
    act.sa_sigaction = on_segv;
    act.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&act.sa_mask);
    if (real_sigaction(SIGSEGV, &act, &program_handler) != 0 || set_cpuid_enabled(0) != 0) {
        fprintf(stderr, "avx2_cpuid: this kernel or CPU has no CPUID faulting (cpuid_fault in /proc/cpuinfo); "
                        "cpuid is left as it is\n");
        real_sigaction(SIGSEGV, &program_handler, NULL);
        return;
    }
    armed = 1;
    const char *log = getenv("POSEPIPE_AVX2_CPUID_LOG");
    if (log && *log && strcmp(log, "0") != 0)
        atexit(report);
}
