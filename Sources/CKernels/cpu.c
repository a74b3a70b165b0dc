// hd_cpu_features: the CPU's vector extensions from the compiler's cpuid check (__builtin_cpu_supports).
#include "cpu.h"

int hd_cpu_features(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    int f = 0;
    if (__builtin_cpu_supports("avx2")) f |= HD_CPU_AVX2;
    if (__builtin_cpu_supports("fma")) f |= HD_CPU_FMA;
    if (__builtin_cpu_supports("avx512f")) f |= HD_CPU_AVX512F;
    if (__builtin_cpu_supports("avx512bw")) f |= HD_CPU_AVX512BW;
    if (__builtin_cpu_supports("avx512vl")) f |= HD_CPU_AVX512VL;
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
    if (__builtin_cpu_supports("avx512bf16")) f |= HD_CPU_AVX512BF16;
#endif
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
    if (__builtin_cpu_supports("amx-bf16")) f |= HD_CPU_AMX_BF16;
#endif
    return f;
#else
    return 0;
#endif
}

// A thread's own parallel width: model replicas running side by side each keep their kernels on their own thread.
static _Thread_local int thread_width;

int hd_thread_width(void) { return thread_width; }

void hd_set_thread_width(int width) { thread_width = width; }
