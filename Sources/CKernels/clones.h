// HD_CLONES: compile a function for AVX-512, AVX2 and the baseline, and pick one when the program loads
// (x86-64 with target_clones support; elsewhere a plain function).
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

#endif
