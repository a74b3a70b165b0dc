// Imports OpenBLAS's CBLAS interface and its runtime controls (thread count, core type, build config).
#ifndef HISTODISTILL_COPENBLAS_SHIM_H
#define HISTODISTILL_COPENBLAS_SHIM_H
#include <cblas.h>
#endif
