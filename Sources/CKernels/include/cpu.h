// What this CPU can run, as the compiler's runtime check (cpuid) sees it: the one source the C kernels
// dispatch on and TensorCore's CPUCapabilities reports.
#ifndef HISTODISTILL_CPU_H
#define HISTODISTILL_CPU_H

#ifdef __cplusplus
extern "C" {
#endif

/// Bits of `hd_cpu_features`.
enum {
    HD_CPU_AVX2 = 1 << 0,
    HD_CPU_FMA = 1 << 1,
    HD_CPU_AVX512F = 1 << 2,
    HD_CPU_AVX512BW = 1 << 3,
    HD_CPU_AVX512VL = 1 << 4,
    HD_CPU_AVX512BF16 = 1 << 5,
    HD_CPU_AMX_BF16 = 1 << 6,
};

/// The HD_CPU_* bits this CPU supports (0 on other architectures).
int hd_cpu_features(void);
/// The calling thread's own width for the engine's parallel loops (0: none, use the process-wide width).
int hd_thread_width(void);
/// Sets the calling thread's own width (0 clears it).
void hd_set_thread_width(int width);

#ifdef __cplusplus
}
#endif
#endif
