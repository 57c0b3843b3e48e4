// The CPU leaf kernels for baseline; compiler flags set in CMakeLists.txt.
#define KDI_SIMD_ISA "baseline"
#define KDI_SIMD_EXPORT baseline_leaves
#define KDI_VECTOR_BYTES 16
#include "simd_kernels.inc"
