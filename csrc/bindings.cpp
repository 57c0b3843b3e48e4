// pybind11 module kdi_fast._C. Tensors cross as raw data pointers (tensor.data_ptr()) plus sizes, so the
// module needs no torch headers; the Python side checks dtype, contiguity and device before calling.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "kdi_fast/mobius.h"

#ifdef KDI_FAST_WITH_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace {

template <typename F>
void by_dtype(const std::string& dtype, F&& f) {
  if (dtype == "float32") f(float{});
  else if (dtype == "float64") f(double{});
  else throw std::invalid_argument("kdi_fast._C: dtype must be float32 or float64, got " + dtype);
}

void dense_cpu(std::uintptr_t ptr, const std::string& dtype, int64_t rows, int n, int sign, bool superset,
               int threads) {
  by_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    py::gil_scoped_release release;
    kdi::transform_dense_cpu<T>(reinterpret_cast<T*>(ptr), rows, n, sign, superset, threads);
  });
}

void compact_cpu(std::uintptr_t ptr, const std::string& dtype, int64_t rows, int64_t len, std::uintptr_t dst,
                 std::uintptr_t src, std::uintptr_t offsets, int nbits, int sign, bool superset, int threads) {
  by_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    py::gil_scoped_release release;
    kdi::transform_compact_cpu<T>(reinterpret_cast<T*>(ptr), rows, len, reinterpret_cast<const int64_t*>(dst),
                                  reinterpret_cast<const int64_t*>(src), reinterpret_cast<const int64_t*>(offsets),
                                  nbits, sign, superset, threads);
  });
}

void emulate_dense_cuda(std::uintptr_t ptr, const std::string& dtype, int64_t rows, int n, int sign, bool superset) {
  by_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    py::gil_scoped_release release;
    kdi::emulate_transform_dense_cuda<T>(reinterpret_cast<T*>(ptr), rows, n, sign, superset);
  });
}

#ifdef KDI_FAST_WITH_CUDA
void dense_cuda(std::uintptr_t ptr, const std::string& dtype, int64_t rows, int n, int sign, bool superset,
                std::uintptr_t stream) {
  by_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    py::gil_scoped_release release;
    kdi::transform_dense_cuda<T>(reinterpret_cast<T*>(ptr), rows, n, sign, superset, stream);
  });
}
#endif

py::dict build_info() {
  py::dict info;
  info["version"] = KDI_FAST_VERSION;
#ifdef KDI_FAST_WITH_OPENMP
  info["openmp"] = true;
  info["openmp_threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
  info["openmp_threads"] = 1;
#endif
#ifdef KDI_FAST_WITH_CUDA
  info["cuda"] = true;
  info["cuda_archs"] = KDI_FAST_CUDA_ARCHS;
#else
  info["cuda"] = false;
  info["cuda_archs"] = "";
#endif
  info["compiler"] = __VERSION__;
  info["simd"] = kdi::cpu_simd_isa();
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "kdi_fast compiled core: Moebius/zeta transforms on CPU (C++/OpenMP) and CUDA";
  m.def("build_info", &build_info, "What this module was compiled with.");
  m.def("transform_dense_cpu", &dense_cpu, py::arg("ptr"), py::arg("dtype"), py::arg("rows"), py::arg("n"),
        py::arg("sign"), py::arg("superset"), py::arg("threads") = 0,
        "In-place subset/superset butterfly over rows of 2^n contiguous values at address ptr.");
  m.def("transform_compact_cpu", &compact_cpu, py::arg("ptr"), py::arg("dtype"), py::arg("rows"), py::arg("len"),
        py::arg("dst"), py::arg("src"), py::arg("offsets"), py::arg("nbits"), py::arg("sign"), py::arg("superset"),
        py::arg("threads") = 0, "In-place butterfly over rows in the compact (orders <= k) layout.");
  m.def("simd_isas", &kdi::cpu_simd_isas, "The CPU instruction sets compiled in and supported here, best first.");
  m.def("_set_simd", &kdi::set_cpu_simd_isa, py::arg("isa"),
        "Switch the CPU kernels to another instruction set (for tests and benchmarks).");
  m.def("_emulate_transform_dense_cuda", &emulate_dense_cuda, py::arg("ptr"), py::arg("dtype"), py::arg("rows"),
        py::arg("n"), py::arg("sign"), py::arg("superset"),
        "The CUDA kernels' steps run on the CPU, one thread at a time (tests the CUDA indexing without a GPU).");
#ifdef KDI_FAST_WITH_CUDA
  m.def("transform_dense_cuda", &dense_cuda, py::arg("ptr"), py::arg("dtype"), py::arg("rows"), py::arg("n"),
        py::arg("sign"), py::arg("superset"), py::arg("stream") = 0,
        "In-place butterfly on device memory, enqueued on the given CUDA stream.");
#endif
}
