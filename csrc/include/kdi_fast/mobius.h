// kdi_fast: the Moebius (v -> I) and zeta (I -> v) transforms over the subsets of n players, torch-free.
//
// A row holds 2^n values indexed by the bit mask of a subset (bit i set = player i present).
//   subset butterfly   (superset = false): for each bit i, for each mask with bit i set:   a[mask]     += sign * a[mask ^ bit]
//   superset butterfly (superset = true):  for each bit i, for each mask with bit i clear: a[mask]     += sign * a[mask | bit]
// sign = -1 gives the Moebius transform (subset) or its transpose (superset); sign = +1 the zeta transform
// (subset) or its transpose (superset). All functions work in place on `rows` contiguous rows.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace kdi {

// Dense layout: each row has 2^n entries. threads <= 0 means the OpenMP default. Cache-blocked: the low bits of
// each row in blocks that fit L1/L2/L3, the high bits in in-place sweeps of 3-4 bits each, so a row of 2^24
// floats takes two passes over memory. Small inputs, and calls from inside an OpenMP parallel
// region, run on the calling thread. Results are bitwise identical for any number of threads.
template <typename T>
void transform_dense_cpu(T* data, int64_t rows, int n, int sign, bool superset, int threads);

// The instruction set the CPU kernels use ("avx512", "avx2" or "baseline"): the best one this CPU supports,
// at most KDI_FAST_SIMD when that environment variable is set when first used.
std::string cpu_simd_isa();
// The instruction sets compiled in and supported by this CPU, best first.
std::vector<std::string> cpu_simd_isas();
// Switch the CPU kernels to `isa` (one of cpu_simd_isas(); throws std::invalid_argument otherwise).
void set_cpu_simd_isa(const std::string& isa);

// Compact layout (subsets of size <= k only): each row has `len` entries. For each bit b, the pairs
// (dst[j], src[j]) for j in [offsets[b], offsets[b+1]) give the position of a subset S containing b and of
// S without b. Subset butterfly: a[dst] += sign * a[src]; superset butterfly: a[src] += sign * a[dst].
template <typename T>
void transform_compact_cpu(T* data, int64_t rows, int64_t len, const int64_t* dst, const int64_t* src,
                           const int64_t* offsets, int nbits, int sign, bool superset, int threads);

#ifdef KDI_FAST_WITH_CUDA
// Dense layout on the GPU, enqueued on `stream` (a cudaStream_t passed as an integer; 0 = default stream).
template <typename T>
void transform_dense_cuda(T* data, int64_t rows, int n, int sign, bool superset, std::uintptr_t stream);
#endif

// The CUDA kernels' index arithmetic run on the CPU, block by block and thread by thread (always compiled):
// lets the tests check transform_dense_cuda's indexing on a machine without a GPU.
template <typename T>
void emulate_transform_dense_cuda(T* data, int64_t rows, int n, int sign, bool superset);

}  // namespace kdi
