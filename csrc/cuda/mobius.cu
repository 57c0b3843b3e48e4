// The dense transform on the GPU: the low 12 bits in shared memory, the high bits in global passes of up to
// 5 bits in registers, on the caller's stream. The index arithmetic lives in mobius_steps.h (also run by a
// CPU emulation in the tests); this file only launches it.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "kdi_fast/mobius.h"
#include "mobius_steps.h"

namespace kdi {
namespace {

using namespace cuda_steps;

constexpr int64_t kMaxBlocks = int64_t{1} << 16;  // grid-stride loops cover the rest

void check(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("kdi_fast CUDA transform: ") + what + " failed: " +
                             cudaGetErrorString(err));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) low_bits_kernel(T* data, int64_t total, int nb, T sign,
                                                            bool superset) {
  __shared__ T smem[kSmemSize];
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t chunks = (total + (int64_t{1} << kChunkBits) - 1) >> kChunkBits;
  for (int64_t chunk = blockIdx.x; chunk < chunks; chunk += gridDim.x) {
    const int64_t g0 = chunk << kChunkBits;
    low_load(tid, data, g0, total, smem, nb, sign, superset);
    __syncthreads();
    for (int a = kLoadOffset - kRegBits; a >= 0; a -= kRegBits) {
      if (a < nb) {  // uniform across the block
        low_middle(tid, smem, a, nb, sign, superset);
        __syncthreads();
      }
    }
    low_store(tid, data, g0, total, smem);
    __syncthreads();  // the next chunk overwrites smem
  }
}

template <typename T, int R>
__global__ void __launch_bounds__(kHighThreads) high_bits_kernel(T* data, int64_t total, int b, T sign,
                                                                 bool superset) {
  const int64_t groups = total >> R;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += stride) {
    high_group<T, R>(data, g, b, sign, superset);
  }
}

unsigned blocks_for(int64_t work, int64_t per_block) {
  const int64_t blocks = (work + per_block - 1) / per_block;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

template <typename T, int R>
void launch_high(T* data, int64_t total, int b, T sign, bool superset, cudaStream_t stream) {
  high_bits_kernel<T, R><<<blocks_for(total >> R, kHighThreads), kHighThreads, 0, stream>>>(data, total, b, sign,
                                                                                            superset);
}

}  // namespace

template <typename T>
void transform_dense_cuda(T* data, int64_t rows, int n, int sign, bool superset, std::uintptr_t stream_handle) {
  if (rows <= 0 || n <= 0) return;
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const int64_t total = rows << n;
  const T s = static_cast<T>(sign);
  const int nb = low_bits(n);
  low_bits_kernel<T><<<blocks_for(total, int64_t{1} << kChunkBits), kThreads, 0, stream>>>(data, total, nb, s,
                                                                                         superset);
  check("low-bits kernel launch");
  int b = nb;
  for (int p = 0; p < high_passes(n); ++p) {
    const int r = high_pass_bits(n, p);
    switch (r) {
      case 1: launch_high<T, 1>(data, total, b, s, superset, stream); break;
      case 2: launch_high<T, 2>(data, total, b, s, superset, stream); break;
      case 3: launch_high<T, 3>(data, total, b, s, superset, stream); break;
      case 4: launch_high<T, 4>(data, total, b, s, superset, stream); break;
      case 5: launch_high<T, 5>(data, total, b, s, superset, stream); break;
      default: throw std::logic_error("kdi_fast CUDA transform: bad pass width " + std::to_string(r));
    }
    check("high-bits kernel launch");
    b += r;
  }
}

template void transform_dense_cuda<float>(float*, int64_t, int, int, bool, std::uintptr_t);
template void transform_dense_cuda<double>(double*, int64_t, int, int, bool, std::uintptr_t);

}  // namespace kdi
