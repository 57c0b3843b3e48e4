"""pytest-benchmark suite of the transform benchmark's cases (not part of the default test run):

    python -m pytest benchmarks/test_bench_transform.py --benchmark-only [--benchmark-autosave]

The same methods as bench_transform.py (which writes the JSON/CSV/plot and the target ratios); grouped by
case, so pytest-benchmark's table compares the methods of each case side by side.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kdi_fast
from bench_transform import Alternating, InPlace, moebius_matrix, numpy_butterfly_, shapiq_moebius
from kdi_fast.reference import butterfly_

CASES = [(1, 12), (64, 12), (1, 16), (64, 16), (1, 20), (16, 20), (1, 24)]  # (batch, n)
SLOW_LIMIT = 1 << 26


def _ids(case):
    return f"batch{case[0]}-n{case[1]}"


@pytest.fixture(params=CASES, ids=_ids)
def case(request, benchmark):
    batch, n = request.param
    benchmark.group = f"float32 batch={batch} n={n}"
    return batch, n, torch.randn(batch, 1 << n, generator=torch.Generator().manual_seed(n))


def test_cpp(benchmark, case):
    _, _, x = case
    benchmark(InPlace(x))


def test_copy(benchmark, case):
    _, _, x = case
    dst = torch.empty_like(x)
    benchmark(dst.copy_, x)


def test_numpy(benchmark, case):
    batch, n, x = case
    if batch << n > SLOW_LIMIT:
        pytest.skip("numpy butterfly above 2^26 values: minutes per case")
    a = x.numpy().copy()
    benchmark(Alternating(lambda sign: numpy_butterfly_(a, n, sign)))


def test_torch(benchmark, case):
    batch, n, x = case
    if batch << n > SLOW_LIMIT:
        pytest.skip("torch butterfly above 2^26 values: minutes per case")
    t = x.clone()
    benchmark(Alternating(lambda sign: butterfly_(t, n, sign, False)))


def test_dense(benchmark, case):
    _, n, x = case
    if n > 13:
        pytest.skip(f"the dense matrix at n={n} needs {(4 << (2 * n)) / 2**30:g} GiB")
    mt = moebius_matrix(n, torch.float32).T.contiguous()
    out = torch.empty_like(x)
    benchmark(torch.matmul, x, mt, out=out)


@pytest.mark.parametrize("n", [8, 12, 14])
def test_shapiq_one_row(benchmark, n):
    pytest.importorskip("shapiq")
    benchmark.group = f"float64 batch=1 n={n} (shapiq)"
    v = np.random.default_rng(n).standard_normal(1 << n)
    benchmark.pedantic(shapiq_moebius, args=(v, n), rounds=1, iterations=1)


@pytest.mark.parametrize("n", [8, 12, 14])
def test_cpp_one_row_float64(benchmark, n):
    benchmark.group = f"float64 batch=1 n={n} (shapiq)"
    benchmark(InPlace(torch.randn(1, 1 << n, dtype=torch.float64)))


def test_forward_backward(benchmark):
    benchmark.group = "autograd float64 batch=64 n=16"
    w = torch.randn(64, 1 << 16, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(64, 1 << 16, dtype=torch.float64)

    def forward_backward():
        w.grad = None
        kdi_fast.mobius(w).backward(grad)

    benchmark(forward_backward)


def test_forward(benchmark):
    benchmark.group = "autograd float64 batch=64 n=16"
    v = torch.randn(64, 1 << 16, dtype=torch.float64)
    benchmark(kdi_fast.mobius, v)
