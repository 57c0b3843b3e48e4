// The leaf kernels of the CPU transform, compiled once per instruction set (simd_<isa>.cpp) and picked at run
// time by mobius.cpp, which plans the passes over a row and splits them between OpenMP threads. Plain function
// pointers and PODs only: the ISA-specific translation units must not instantiate shared inline code (see
// simd_kernels.inc).
#pragma once
#include <cstdint>

namespace kdi {
namespace simd {

// Function pointers for one element type T, indexed [superset][negate] (negate: sign == -1).
template <typename T>
struct Leaves {
  // `count` contiguous chunks of 2^c values: apply bits 0..c-1 to every chunk (cache-blocked inside).
  void (*low[2][2])(T* data, int64_t count, int c);
  // Bits [b, b+r) of the span of 2^(b+r) values at `span`, columns [begin, end) of its 2^r segments (each
  // 2^b long; begin and end multiples of `lanes`): one in-place sweep holding 2^r vectors in registers.
  void (*high[2][2])(T* span, int b, int r, int64_t begin, int64_t end);
  int lanes;      // values per vector register
  int max_radix;  // the most bits `high` applies in one sweep
};

struct LeafSet {
  const char* isa;  // "avx512", "avx2" or "baseline" (x86-64 SSE2; the compiler's default vectors elsewhere)
  Leaves<float> f32;
  Leaves<double> f64;
};

const LeafSet& baseline_leaves();
#ifdef KDI_FAST_WITH_X86_SIMD
const LeafSet& avx2_leaves();
const LeafSet& avx512_leaves();
#endif

}  // namespace simd
}  // namespace kdi
