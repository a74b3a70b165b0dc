// HD_CLONES: compile a function for AVX-512, AVX2 and the baseline, and pick one when the program loads
// (x86-64 with target_clones support; elsewhere a plain function). hd_has_avx512: the runtime check for
// functions written with AVX-512 intrinsics.
#ifndef HISTODISTILL_CLONES_H
#define HISTODISTILL_CLONES_H

#if defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define HD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef HD_CLONES
#define HD_CLONES
#endif

#include "cpu.h"

/// 1 when this CPU runs AVX-512F code (for kernels written with AVX-512 intrinsics), else 0.
static inline int hd_has_avx512(void) { return (hd_cpu_features() & HD_CPU_AVX512F) ? 1 : 0; }

#endif
