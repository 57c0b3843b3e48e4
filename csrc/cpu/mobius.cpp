// The CPU transforms: plans the passes over memory, splits them between OpenMP threads, and calls the leaf
// kernels of the instruction set picked at run time (simd.h).
//
// Dense layout, a row of 2^n values:
//   pass 0      bits 0..c-1 of every chunk of 2^c values (4 MiB, meant to stay in L3), blocked inside for L2
//               (256 KiB) and L1 (16 KiB); the first sweep of each L1 block reads memory and fuses the bits
//               inside a vector register with the next 3-4 bits;
//   pass 1, ... the remaining bits, 4 (AVX-512) or 3 per pass, each an in-place sweep over memory that holds
//               2^r vectors (one per segment, segments 2^b apart) in registers. Such a sweep costs about one
//               copy of the buffer; copying tiles into a buffer to do more bits per pass was measured slower.
// So a row of 2^24 floats (2^23 doubles) takes two passes over memory. Work items (chunks; column ranges of sweeps) of all
// rows are split evenly between the threads; a barrier separates the passes.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "kdi_fast/mobius.h"
#include "simd.h"

#ifdef KDI_FAST_WITH_OPENMP
#include <omp.h>
#endif

namespace kdi {
namespace {

constexpr int64_t kChunkBytes = int64_t{4} << 20;  // pass 0's chunks: a share of L3 (n=24 float: 20 bits)
constexpr int64_t kL1Bytes = int64_t{16} << 10;
constexpr int64_t kSweepColumns = 4096;  // the columns of a sweep are split between threads in ranges this long
// Below this many values (~0.1 ms on one core) the calling thread works alone: a second thread saves little, and
// on a busy machine a team waits a whole scheduler tick (4-12 ms measured) whenever one member is preempted.
constexpr int64_t kParallelMinValues = int64_t{1} << 17;

// ------------------------------------------------------------------------------ instruction set dispatch

std::vector<const simd::LeafSet*> supported_sets() {
  std::vector<const simd::LeafSet*> sets;
#ifdef KDI_FAST_WITH_X86_SIMD
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) sets.push_back(&simd::avx512_leaves());
  if (__builtin_cpu_supports("avx2")) sets.push_back(&simd::avx2_leaves());
#endif
  sets.push_back(&simd::baseline_leaves());
  return sets;
}

const simd::LeafSet* initial_set() {
  const auto sets = supported_sets();
  const char* cap = std::getenv("KDI_FAST_SIMD");
  if (cap != nullptr && *cap != '\0') {  // KDI_FAST_SIMD=avx2 etc. picks that set if supported, else ignored
    const std::string want = cap;
    for (size_t i = 0; i < sets.size(); ++i) {
      if (want == sets[i]->isa) return sets[i];
    }
  }
  return sets.front();
}

std::atomic<const simd::LeafSet*> active_set{nullptr};

const simd::LeafSet& active() {
  const simd::LeafSet* set = active_set.load(std::memory_order_acquire);
  if (set == nullptr) {
    set = initial_set();
    active_set.store(set, std::memory_order_release);
  }
  return *set;
}

template <typename T>
const simd::Leaves<T>& leaves_of(const simd::LeafSet& set);
template <>
const simd::Leaves<float>& leaves_of<float>(const simd::LeafSet& set) { return set.f32; }
template <>
const simd::Leaves<double>& leaves_of<double>(const simd::LeafSet& set) { return set.f64; }

// ------------------------------------------------------------------------------ threads and buffers

int team_size(int threads, int64_t values) {
#ifdef KDI_FAST_WITH_OPENMP
  if (omp_in_parallel()) return 1;  // never open a nested region
  if (values < kParallelMinValues) return 1;
  return threads > 0 ? threads : omp_get_max_threads();
#else
  (void)threads;
  (void)values;
  return 1;
#endif
}

// [begin, end) of `items` for thread t of m: contiguous, sizes differ by at most one.
inline void share(int64_t items, int t, int m, int64_t& begin, int64_t& end) {
  begin = items * t / m;
  end = items * (t + 1) / m;
}

struct Sweep {
  int b, r;
  int64_t columns, units_per_row;  // a unit: one span of 2^(b+r) values, `columns` of its 2^b columns
};

int log2_floor(int64_t x) { return 63 - __builtin_clzll(static_cast<unsigned long long>(x)); }

}  // namespace

template <typename T>
void transform_dense_cpu(T* data, int64_t rows, int n, int sign, bool superset, int threads) {
  if (rows <= 0 || n <= 0) return;  // n = 0: one value per row, the transform is the identity
  const simd::Leaves<T>& leaves = leaves_of<T>(active());
  const auto low = leaves.low[superset][sign < 0];
  const auto high = leaves.high[superset][sign < 0];
  const int64_t size = int64_t{1} << n;
  const int64_t total = rows * size;
  const int team = team_size(threads, total);

  // Pass 0: chunks of 2^c values; smaller chunks when there are too few to give every thread one.
  const int chunk_bits = log2_floor(kChunkBytes / static_cast<int64_t>(sizeof(T)));
  const int l1_bits = log2_floor(kL1Bytes / static_cast<int64_t>(sizeof(T)));
  int c = std::min(n, chunk_bits);
  while (team > 1 && (total >> c) < team && c > l1_bits) --c;

  // Passes 1, ...: the high bits, split evenly into sweeps of at most max_radix bits.
  std::vector<Sweep> sweeps;
  const int high_bits = n - c;
  if (high_bits > 0) {
    const int count = (high_bits + leaves.max_radix - 1) / leaves.max_radix;
    int b = c;
    for (int p = 0; p < count; ++p) {
      const int r = high_bits / count + (p < high_bits % count ? 1 : 0);
      const int64_t columns = std::min(int64_t{1} << b, kSweepColumns);
      sweeps.push_back(Sweep{b, r, columns, (size >> (b + r)) * ((int64_t{1} << b) / columns)});
      b += r;
    }
  }

  auto run = [&](int stage, int t, int m) {
    int64_t begin, end;
    if (stage == 0) {
      share(total >> c, t, m, begin, end);
      if (end > begin) low(data + (begin << c), end - begin, c);
      return;
    }
    const Sweep& sw = sweeps[stage - 1];
    const int64_t per_span = (int64_t{1} << sw.b) / sw.columns;
    share(rows * sw.units_per_row, t, m, begin, end);
    for (int64_t u = begin; u < end; ++u) {  // unit u: span u / per_span (counting across rows), columns u % per_span
      T* span = data + (u / per_span) * (int64_t{1} << (sw.b + sw.r));
      const int64_t first = (u % per_span) * sw.columns;
      high(span, sw.b, sw.r, first, first + sw.columns);
    }
  };
  const int stages = 1 + static_cast<int>(sweeps.size());
  if (team <= 1) {
    for (int s = 0; s < stages; ++s) run(s, 0, 1);
    return;
  }
#ifdef KDI_FAST_WITH_OPENMP
#pragma omp parallel num_threads(team)
  {
    const int t = omp_get_thread_num();
    const int m = omp_get_num_threads();
    for (int s = 0; s < stages; ++s) {
      if (s > 0) {
#pragma omp barrier
      }
      run(s, t, m);
    }
  }
#endif
}

template <typename T>
void transform_compact_cpu(T* data, int64_t rows, int64_t len, const int64_t* dst, const int64_t* src,
                           const int64_t* offsets, int nbits, int sign, bool superset, int threads) {
  const T s = static_cast<T>(sign);
  const int team = team_size(threads, rows * len);
  auto row = [&](T* a) {
    for (int b = 0; b < nbits; ++b) {
      for (int64_t j = offsets[b]; j < offsets[b + 1]; ++j) {
        if (!superset) a[dst[j]] += s * a[src[j]];
        else a[src[j]] += s * a[dst[j]];
      }
    }
  };
  if (team <= 1) {
    for (int64_t r = 0; r < rows; ++r) row(data + r * len);
    return;
  }
#ifdef KDI_FAST_WITH_OPENMP
#pragma omp parallel for schedule(static) num_threads(team)
  for (int64_t r = 0; r < rows; ++r) row(data + r * len);
#endif
}

std::string cpu_simd_isa() { return active().isa; }

std::vector<std::string> cpu_simd_isas() {
  std::vector<std::string> names;
  for (const simd::LeafSet* set : supported_sets()) names.push_back(set->isa);
  return names;
}

void set_cpu_simd_isa(const std::string& isa) {
  for (const simd::LeafSet* set : supported_sets()) {
    if (isa == set->isa) {
      active_set.store(set, std::memory_order_release);
      return;
    }
  }
  std::string known;
  for (const std::string& name : cpu_simd_isas()) known += (known.empty() ? "" : ", ") + name;
  throw std::invalid_argument("instruction set '" + isa + "' is not available here; choose one of: " + known);
}

template void transform_dense_cpu<float>(float*, int64_t, int, int, bool, int);
template void transform_dense_cpu<double>(double*, int64_t, int, int, bool, int);
template void transform_compact_cpu<float>(float*, int64_t, int64_t, const int64_t*, const int64_t*,
                                           const int64_t*, int, int, bool, int);
template void transform_compact_cpu<double>(double*, int64_t, int64_t, const int64_t*, const int64_t*,
                                            const int64_t*, int, int, bool, int);

}  // namespace kdi
