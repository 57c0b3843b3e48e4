// The per-thread steps of the CUDA transform and their index arithmetic, shared by the kernels (mobius.cu)
// and by a CPU emulation (cpu/cuda_emulation.cpp) that runs the same steps block by block and thread by
// thread, with a barrier between steps, so the indexing is tested on machines without a GPU.
//
// Plan for rows of 2^n values (the flat buffer holds rows * 2^n values):
//   low kernel   bits 0..nb-1, nb = min(n, 12). A block takes a chunk of 4096 consecutive values of the flat
//                buffer (several whole rows when n < 12; the last chunk may be partial, and its missing values
//                only pair with each other since the buffer ends on a row boundary). 256 threads hold 16
//                values each in registers; in the layout with offset a, register k of thread tid holds value
//                layout(a, tid, k): the 4 bits of k sit at bits [a, a+4) of the index, the 8 bits of tid
//                around them. Three layouts (a = 8, 4, 0) each apply 4 bits in registers, exchanging values
//                through shared memory (padded one slot per 32 to avoid bank conflicts) in between. Global
//                loads and stores use layout 8, where consecutive threads touch consecutive values.
//   high kernel  bits nb..n-1 in global passes of up to 5 bits: thread group g loads the 2^r values
//                base(g) + k * 2^b (k < 2^r) into registers (consecutive g -> consecutive addresses), applies
//                bits [b, b+r) and stores them back.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define KDI_HD __host__ __device__ __forceinline__
#define KDI_UNROLL _Pragma("unroll")
#else
#define KDI_HD inline
#define KDI_UNROLL _Pragma("GCC unroll 32")
#endif

namespace kdi {
namespace cuda_steps {

constexpr int kChunkBits = 12;                         // values per block in the low kernel: 4096
constexpr int kRegBits = 4;                            // values per thread: 16
constexpr int kThreads = 1 << (kChunkBits - kRegBits);  // 256
constexpr int kValues = 1 << kRegBits;
constexpr int kLoadOffset = kChunkBits - kRegBits;     // layout of the global loads and stores: 8
constexpr int kSmemSize = (1 << kChunkBits) + ((1 << kChunkBits) >> 5);
constexpr int kMaxHighBits = 5;                        // bits per global pass of the high kernel
constexpr int kHighThreads = 256;

KDI_HD int padded(int e) { return e + (e >> 5); }

// Index in the chunk of register k of thread tid in the layout with offset a (a multiple of kRegBits).
KDI_HD int layout(int a, int tid, int k) {
  return ((tid >> a) << (a + kRegBits)) | (k << a) | (tid & ((1 << a) - 1));
}

KDI_HD int clamp_bits(int bits, int most) { return bits < 0 ? 0 : (bits > most ? most : bits); }

// Bits [0, bits) of the register index: x[k] pairs with x[k | 2^t] for k without bit t.
template <typename T, int R>
KDI_HD void register_bits(T* x, int bits, T sign, bool superset) {
KDI_UNROLL
  for (int t = 0; t < R; ++t) {
    if (t < bits) {
KDI_UNROLL
      for (int k = 0; k < (1 << R); ++k) {
        if (!(k & (1 << t))) {
          if (superset) x[k] += sign * x[k | (1 << t)];
          else x[k | (1 << t)] += sign * x[k];
        }
      }
    }
  }
}

// Low kernel, step 1: load the chunk starting at g0 (layout kLoadOffset), apply its bits [8, 12) ∩ [0, nb),
// write to shared memory.
template <typename T>
KDI_HD void low_load(int tid, const T* data, int64_t g0, int64_t total, T* smem, int nb, T sign, bool superset) {
  T x[kValues];
KDI_UNROLL
  for (int k = 0; k < kValues; ++k) {
    const int64_t g = g0 + layout(kLoadOffset, tid, k);
    x[k] = g < total ? data[g] : T(0);
  }
  register_bits<T, kRegBits>(x, clamp_bits(nb - kLoadOffset, kRegBits), sign, superset);
KDI_UNROLL
  for (int k = 0; k < kValues; ++k) smem[padded(layout(kLoadOffset, tid, k))] = x[k];
}

// Low kernel, middle steps (a = 4, 0, only when a < nb): bits [a, a+4) ∩ [0, nb) through shared memory. Each
// thread reads and writes only its own 16 slots.
template <typename T>
KDI_HD void low_middle(int tid, T* smem, int a, int nb, T sign, bool superset) {
  T x[kValues];
KDI_UNROLL
  for (int k = 0; k < kValues; ++k) x[k] = smem[padded(layout(a, tid, k))];
  register_bits<T, kRegBits>(x, clamp_bits(nb - a, kRegBits), sign, superset);
KDI_UNROLL
  for (int k = 0; k < kValues; ++k) smem[padded(layout(a, tid, k))] = x[k];
}

// Low kernel, last step: write the chunk back (layout kLoadOffset).
template <typename T>
KDI_HD void low_store(int tid, T* data, int64_t g0, int64_t total, const T* smem) {
KDI_UNROLL
  for (int k = 0; k < kValues; ++k) {
    const int e = layout(kLoadOffset, tid, k);
    if (g0 + e < total) data[g0 + e] = smem[padded(e)];
  }
}

// High kernel: group g of the pass over bits [b, b+R) (groups = total / 2^R).
template <typename T, int R>
KDI_HD void high_group(T* data, int64_t g, int b, T sign, bool superset) {
  const int64_t low = g & ((int64_t{1} << b) - 1);
  const int64_t base = ((g >> b) << (b + R)) | low;
  T x[1 << R];
KDI_UNROLL
  for (int k = 0; k < (1 << R); ++k) x[k] = data[base + (int64_t{k} << b)];
  register_bits<T, R>(x, R, sign, superset);
KDI_UNROLL
  for (int k = 0; k < (1 << R); ++k) data[base + (int64_t{k} << b)] = x[k];
}

// The global passes for bits nb..n-1: how many, and how many bits pass p takes (split evenly).
KDI_HD int low_bits(int n) { return n < kChunkBits ? n : kChunkBits; }
KDI_HD int high_passes(int n) { return (n - low_bits(n) + kMaxHighBits - 1) / kMaxHighBits; }
KDI_HD int high_pass_bits(int n, int p) {
  const int high = n - low_bits(n), passes = high_passes(n);
  return high / passes + (p < high % passes ? 1 : 0);
}

}  // namespace cuda_steps
}  // namespace kdi
