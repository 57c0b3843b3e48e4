// Runs the CUDA transform's steps (cuda/mobius_steps.h) on the CPU in the order the kernels run them: block
// by block, and within a block each step for every thread before the next step (where the kernel has a
// __syncthreads). Slow and single-threaded: for tests of the indexing on machines without a GPU.
#include <stdexcept>
#include <string>
#include <vector>

#include "../cuda/mobius_steps.h"
#include "kdi_fast/mobius.h"

namespace kdi {
namespace {

using namespace cuda_steps;

template <typename T, int R>
void high_pass(T* data, int64_t total, int b, T sign, bool superset) {
  for (int64_t g = 0; g < (total >> R); ++g) high_group<T, R>(data, g, b, sign, superset);
}

}  // namespace

template <typename T>
void emulate_transform_dense_cuda(T* data, int64_t rows, int n, int sign, bool superset) {
  if (rows <= 0 || n <= 0) return;
  const int64_t total = rows << n;
  const T s = static_cast<T>(sign);
  const int nb = low_bits(n);
  std::vector<T> smem(kSmemSize);
  const int64_t chunks = (total + (int64_t{1} << kChunkBits) - 1) >> kChunkBits;
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {  // one block each
    const int64_t g0 = chunk << kChunkBits;
    for (int tid = 0; tid < kThreads; ++tid) low_load(tid, data, g0, total, smem.data(), nb, s, superset);
    for (int a = kLoadOffset - kRegBits; a >= 0; a -= kRegBits) {
      if (a < nb) {
        for (int tid = 0; tid < kThreads; ++tid) low_middle(tid, smem.data(), a, nb, s, superset);
      }
    }
    for (int tid = 0; tid < kThreads; ++tid) low_store(tid, data, g0, total, smem.data());
  }
  int b = nb;
  for (int p = 0; p < high_passes(n); ++p) {
    const int r = high_pass_bits(n, p);
    switch (r) {
      case 1: high_pass<T, 1>(data, total, b, s, superset); break;
      case 2: high_pass<T, 2>(data, total, b, s, superset); break;
      case 3: high_pass<T, 3>(data, total, b, s, superset); break;
      case 4: high_pass<T, 4>(data, total, b, s, superset); break;
      case 5: high_pass<T, 5>(data, total, b, s, superset); break;
      default: throw std::logic_error("kdi_fast CUDA emulation: bad pass width " + std::to_string(r));
    }
    b += r;
  }
}

template void emulate_transform_dense_cuda<float>(float*, int64_t, int, int, bool);
template void emulate_transform_dense_cuda<double>(double*, int64_t, int, int, bool);

}  // namespace kdi
