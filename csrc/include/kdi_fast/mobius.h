// kdi_fast: the Moebius (v -> I) and zeta (I -> v) transforms over the subsets of n players, torch-free.
//
// A row holds 2^n values indexed by the bit mask of a subset (bit i set = player i present).
//   subset butterfly   (superset = false): for each bit i, for each mask with bit i set:   a[mask]     += sign * a[mask ^ bit]
//   superset butterfly (superset = true):  for each bit i, for each mask with bit i clear: a[mask]     += sign * a[mask | bit]
// sign = -1 gives the Moebius transform (subset) or its transpose (superset); sign = +1 the zeta transform
// (subset) or its transpose (superset). All functions work in place on `rows` contiguous rows.
#pragma once
#include <cstdint>

namespace kdi {

// Dense layout: each row has 2^n entries. threads <= 0 means the OpenMP default.
template <typename T>
void transform_dense_cpu(T* data, int64_t rows, int n, int sign, bool superset, int threads);

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

}  // namespace kdi
