// The CPU leaf kernels for avx512; compiler flags set in CMakeLists.txt.
#define KDI_SIMD_ISA "avx512"
#define KDI_SIMD_EXPORT avx512_leaves
#define KDI_VECTOR_BYTES 64
#include "simd_kernels.inc"
