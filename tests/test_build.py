"""The compiled module kdi_fast._C: its C++ kernels on every instruction set, thread counts and cache-block
boundaries against the torch reference; the CUDA kernels' indexing (run on the CPU); and, slow, the builds:
a CUDA build with CMake, and a wheel installed into a fresh venv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import torch

import kdi_fast
from kdi_fast import _backend
from kdi_fast.ops.transform import _compact_pairs
from kdi_fast.reference import butterfly_

ROOT = Path(__file__).resolve().parents[1]
C = _backend.compiled()
DIRECTIONS = [(-1, False), (1, False), (-1, True), (1, True)]  # Moebius, zeta, and their transposes
DTYPES = [torch.float32, torch.float64]
# Bits of the CPU plan's boundaries (csrc/cpu): lanes (float/double) 4/3 (AVX-512), 3/2 (AVX2), 2/1 (SSE2);
# L1 blocks 12/11; L2 blocks 16/15; chunks 20/19; above, in-place sweeps of 3-4 bits.
BOUNDARY_N = [1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]


def run_cpp(x: torch.Tensor, sign: int, superset: bool, threads: int) -> torch.Tensor:
    """The C++ kernel on a copy of x (contiguous [rows, 2^n]) with an explicit thread count."""
    out = x.clone()
    n = x.shape[-1].bit_length() - 1
    C.transform_dense_cpu(out.data_ptr(), str(out.dtype).removeprefix("torch."), out.numel() >> n, n, sign,
                          superset, threads)
    return out


def reference(x: torch.Tensor, sign: int, superset: bool) -> torch.Tensor:
    return butterfly_(x.clone(), x.shape[-1].bit_length() - 1, sign, superset)


@pytest.fixture(params=C.simd_isas() if C is not None else [])
def isa(request):
    """Every instruction set compiled in and supported here; the module's choice is restored afterwards."""
    before = C.build_info()["simd"]
    C._set_simd(request.param)
    yield request.param
    C._set_simd(before)


def test_build_info_reports_what_was_compiled():
    info = C.build_info()
    assert {"version", "openmp", "openmp_threads", "cuda", "cuda_archs", "compiler", "simd"} <= set(info)
    assert info["openmp"], "the CPU build should find OpenMP (CI needs it for the two-core numbers)"
    assert info["simd"] == C.simd_isas()[0] and C.simd_isas()[-1] == "baseline"
    with pytest.raises(ValueError, match="not available here"):
        C._set_simd("avx1024")


# The kernels apply the bits in the same order as the torch reference, with the same operations
# (hi + lo, hi - lo), so their results are bitwise equal to it: the tests check equality, not closeness.


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_isa_every_direction_matches_reference(isa, dtype):
    g = torch.Generator().manual_seed(0)
    for n in range(0, 15):
        x = torch.randn(3, 1 << n, dtype=dtype, generator=g)
        for sign, superset in DIRECTIONS:
            assert torch.equal(run_cpp(x, sign, superset, 1), reference(x, sign, superset)), (isa, n, sign, superset)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_rows_match_reference(isa, dtype):
    g = torch.Generator().manual_seed(1)
    for n, (sign, superset) in [(17, (-1, False)), (19, (1, True)), (21, (-1, True))]:
        x = torch.randn(1, 1 << n, dtype=dtype, generator=g)
        assert torch.equal(run_cpp(x, sign, superset, 2), reference(x, sign, superset)), (isa, n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [2, 5])
def test_batches_around_block_boundaries(dtype, rows):
    g = torch.Generator().manual_seed(rows)
    for n in BOUNDARY_N:
        x = torch.randn(rows, 1 << n, dtype=dtype, generator=g)
        sign, superset = DIRECTIONS[n % 4]
        assert torch.equal(run_cpp(x, sign, superset, 2), reference(x, sign, superset)), n


@pytest.mark.parametrize("dtype", DTYPES)
def test_thread_counts_give_identical_results(dtype):
    g = torch.Generator().manual_seed(2)
    # one row (threads split its chunks and sweep columns) and several rows (threads split the rows); all at
    # least 2^17 values, the smallest input that uses more than one thread
    for rows, n in [(1, 17), (1, 18), (1, 20), (1, 22), (5, 15), (3, 19), (40, 12), (2, 21)]:
        x = torch.randn(rows, 1 << n, dtype=dtype, generator=g)
        one = run_cpp(x, -1, False, 1)
        for threads in (2, 3, 0):  # 0: the OpenMP default
            assert torch.equal(run_cpp(x, -1, False, threads), one), (rows, n, threads)


def test_public_op_uses_cpp_and_follows_torch_threads():
    x = torch.randn(2, 1 << 18, dtype=torch.float64)
    expected = reference(x, -1, False)
    assert _backend.choose("mobius", torch.device("cpu")) == "cpp"
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert torch.equal(kdi_fast.mobius(x), expected)
    finally:
        torch.set_num_threads(before)


def test_compact_layout_thread_counts():
    n, k = 12, 3
    masks = kdi_fast.subsets(n, k)
    dst, src, offsets = _compact_pairs(n, k)
    x = torch.randn(128, len(masks), dtype=torch.float64)  # 128 * 299 values: enough to use two threads
    outs = []
    for threads in (1, 2):
        y = x.clone()
        C.transform_compact_cpu(y.data_ptr(), "float64", y.shape[0], y.shape[1], dst.data_ptr(), src.data_ptr(),
                                offsets.data_ptr(), n, -1, False, threads)
        outs.append(y)
    assert torch.equal(outs[0], outs[1])
    dense = torch.zeros(128, 1 << n, dtype=torch.float64)
    dense[:, masks] = x  # I_S for |S| <= k reads only v of subsets of S: the zeros above order k do not matter
    torch.testing.assert_close(outs[0], reference(dense, -1, False)[:, masks])


def test_simd_environment_variable_picks_the_isa():
    wanted = C.simd_isas()[-1]  # "baseline": always there
    code = "import kdi_fast._C as C; print(C.build_info()['simd'])"
    env = dict(os.environ, KDI_FAST_SIMD=wanted)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == wanted


# ----------------------------------------------------------------------------- the CUDA kernels, emulated


def emulate_cuda(x: torch.Tensor, sign: int, superset: bool) -> torch.Tensor:
    out = x.clone()
    n = x.shape[-1].bit_length() - 1
    C._emulate_transform_dense_cuda(out.data_ptr(), str(out.dtype).removeprefix("torch."), out.numel() >> n, n,
                                    sign, superset)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_indexing_emulated_on_cpu(dtype):
    """The CUDA kernels' steps (csrc/cuda/mobius_steps.h), run thread by thread on the CPU: a 4096-value chunk
    per block in shared memory (12 bits, in three register layouts), then global passes of up to 5 bits.
    The bits go in another order than in the reference, so the comparison allows rounding."""
    g = torch.Generator().manual_seed(3)
    # rows * 2^n below, at and above one chunk; partial last chunks; 1 to 3 global passes
    cases = [(1, 0), (3, 1), (5, 3), (2, 4), (3, 5), (7, 8), (5, 10), (2, 11), (3, 12), (1, 13), (2, 14),
             (1, 16), (1, 17), (1, 18), (1, 20), (1, 22)]
    for i, (rows, n) in enumerate(cases):
        x = torch.randn(rows, 1 << n, dtype=dtype, generator=g)
        sign, superset = DIRECTIONS[i % 4]
        expected = reference(x.double(), sign, superset)
        tol = dict(rtol=1e-5, atol=1e-5 * 2 ** (n / 2)) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(emulate_cuda(x, sign, superset).double(), expected, **tol, msg=f"n={n}")


# ----------------------------------------------------------------------------- the builds (slow)


def _run(command: list[str]) -> None:
    out = subprocess.run(command, capture_output=True, text=True)
    assert out.returncode == 0, f"{' '.join(command)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"


def _cmake_args(build: Path) -> list[str]:
    import pybind11

    return ["cmake", "-S", str(ROOT), "-B", str(build), f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", "-DCMAKE_BUILD_TYPE=Release", "-DKDI_FAST_CUDA=ON",
            "-DKDI_FAST_VERSION=0.0.0-test"] + (["-GNinja"] if shutil.which("ninja") else [])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (the CI machine has it)")
def test_cuda_build_compiles_and_imports_without_a_gpu(tmp_path):
    """CMake with KDI_FAST_CUDA=ON and the default architectures (sm_75..sm_120, static cudart): the module
    reports CUDA, imports without a driver, and its CPU kernels still work."""
    build = tmp_path / "build"
    _run(_cmake_args(build))
    _run(["cmake", "--build", str(build), "--target", "_C", "--parallel", "2"])
    (module,) = build.glob("_C*" + sysconfig.get_config_var("EXT_SUFFIX"))
    check = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(module.parent)!r})
        import _C
        info = _C.build_info()
        assert info["cuda"] is True, info
        assert info["cuda_archs"].split(",") == ["75", "80", "86", "89", "90", "100", "120"], info
        x = torch.arange(8, dtype=torch.float64).repeat(3, 1)
        _C.transform_dense_cpu(x.data_ptr(), "float64", 3, 3, -1, False, 2)
        # v(S) = S's mask as a number: I_S = v(S) for singletons, 0 for larger S (v is additive), I_empty = 0
        assert x[0].tolist() == [0, 1, 2, 0, 4, 0, 0, 0], x
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=dict(os.environ))
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.slow
def test_wheel_installs_and_works_in_a_fresh_venv(tmp_path):
    """`pip wheel --no-deps .` (build isolation as for users), installed with torch into a fresh venv that
    does not see this one's packages; `python -m kdi_fast info` there reports the C++ backend."""
    source = tmp_path / "source"  # a copy: pip builds in the source tree, and others build in this one
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "*.so", "__pycache__", ".pytest_cache", ".hypothesis",
        ".benchmarks", "results", "runs", "out", ".cache"))
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)])
    (wheel,) = wheels.glob("kdi_fast-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", f"torch=={torch.__version__.split('+')[0]}", str(wheel)])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "TRITON_INTERPRET")}
    out = subprocess.run([str(python), "-m", "kdi_fast", "info"], cwd=tmp_path, env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert str(venv) in subprocess.run([str(python), "-c", "import kdi_fast; print(kdi_fast.__file__)"],
                                       cwd=tmp_path, env=env, capture_output=True, text=True).stdout
    rows = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines() if line.startswith("mobius")}
    assert rows["mobius"][0] == "cpp", out.stdout
    assert "OpenMP:     yes" in out.stdout and "SIMD " in out.stdout, out.stdout
