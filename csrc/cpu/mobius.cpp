// Plain first version of the CPU transforms: correct, OpenMP over rows. (Cache blocking comes next.)
#include "kdi_fast/mobius.h"

#ifdef KDI_FAST_WITH_OPENMP
#include <omp.h>
#endif

namespace kdi {

template <typename T>
static void dense_row(T* a, int n, T s, bool superset) {
  const int64_t size = int64_t{1} << n;
  for (int i = 0; i < n; ++i) {
    const int64_t h = int64_t{1} << i;
    for (int64_t base = 0; base < size; base += 2 * h) {
      T* lo = a + base;
      T* hi = a + base + h;
      if (!superset) {
        for (int64_t j = 0; j < h; ++j) hi[j] += s * lo[j];
      } else {
        for (int64_t j = 0; j < h; ++j) lo[j] += s * hi[j];
      }
    }
  }
}

template <typename T>
void transform_dense_cpu(T* data, int64_t rows, int n, int sign, bool superset, int threads) {
  const int64_t size = int64_t{1} << n;
  const T s = static_cast<T>(sign);
#ifdef KDI_FAST_WITH_OPENMP
  if (threads <= 0) threads = omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(threads)
#endif
  for (int64_t r = 0; r < rows; ++r) dense_row(data + r * size, n, s, superset);
  (void)threads;
}

template <typename T>
void transform_compact_cpu(T* data, int64_t rows, int64_t len, const int64_t* dst, const int64_t* src,
                           const int64_t* offsets, int nbits, int sign, bool superset, int threads) {
  const T s = static_cast<T>(sign);
#ifdef KDI_FAST_WITH_OPENMP
  if (threads <= 0) threads = omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(threads)
#endif
  for (int64_t r = 0; r < rows; ++r) {
    T* a = data + r * len;
    for (int b = 0; b < nbits; ++b) {
      for (int64_t j = offsets[b]; j < offsets[b + 1]; ++j) {
        if (!superset) a[dst[j]] += s * a[src[j]];
        else a[src[j]] += s * a[dst[j]];
      }
    }
  }
  (void)threads;
}

template void transform_dense_cpu<float>(float*, int64_t, int, int, bool, int);
template void transform_dense_cpu<double>(double*, int64_t, int, int, bool, int);
template void transform_compact_cpu<float>(float*, int64_t, int64_t, const int64_t*, const int64_t*,
                                           const int64_t*, int, int, bool, int);
template void transform_compact_cpu<double>(double*, int64_t, int64_t, const int64_t*, const int64_t*,
                                            const int64_t*, int, int, bool, int);

}  // namespace kdi
