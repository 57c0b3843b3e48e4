// The CPU leaf kernels for avx2; compiler flags set in CMakeLists.txt.
#define KDI_SIMD_ISA "avx2"
#define KDI_SIMD_EXPORT avx2_leaves
#define KDI_VECTOR_BYTES 32
#include "simd_kernels.inc"
