"""Aggregation over a dataset: mean with a confidence interval, Spearman rank correlations with p-values.

NaN handling follows scipy's `nan_policy`: "propagate" (a NaN makes the result NaN), "omit" (NaN values,
or pairs with a NaN, are dropped; `n` says how many were used) or "raise" (ValueError).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .._extras import needs

__all__ = ["MeanCI", "mean_ci", "Correlation", "spearman", "spearman_table"]

_NAN_POLICIES = ("propagate", "omit", "raise")


def _as_array(values, name: str) -> np.ndarray:
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a sequence of numbers: {exc}") from None
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one value per example), got shape {a.shape}")
    return a


def _check_policy(nan_policy: str) -> None:
    if nan_policy not in _NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {_NAN_POLICIES}, got {nan_policy!r}")


@dataclass(frozen=True)
class MeanCI:
    """A sample mean and its two-sided confidence interval [low, high] (Student t, n - 1 degrees of freedom)."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}


def mean_ci(values: Sequence[float], confidence: float = 0.95, *, nan_policy: str = "propagate") -> MeanCI:
    """Mean of `values` with a t-based confidence interval: mean ± t_{(1+c)/2, n-1} s / sqrt(n), s with ddof=1.

    n = 1 gives the mean with a NaN interval; n = 0 gives NaN throughout.
    """
    with needs("metrics"):
        from scipy import stats

    _check_policy(nan_policy)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), e.g. 0.95; got {confidence!r}")
    a = _as_array(values, "values")
    if np.isinf(a).any():
        raise ValueError("values contain inf; a mean with an interval is undefined")
    nan = np.isnan(a)
    if nan.any():
        if nan_policy == "raise":
            raise ValueError(f"values contain {int(nan.sum())} NaN(s); pass nan_policy='omit' to drop them")
        if nan_policy == "propagate":
            return MeanCI(math.nan, math.nan, math.nan, len(a), confidence)
        a = a[~nan]
    n = len(a)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0, confidence)
    mean = float(a.mean())
    if n == 1:
        return MeanCI(mean, math.nan, math.nan, 1, confidence)
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * a.std(ddof=1) / math.sqrt(n))
    return MeanCI(mean, mean - half, mean + half, n, confidence)


@dataclass(frozen=True)
class Correlation:
    """Spearman's rho between two measures, its two-sided p-value (scipy: t approximation) and the pairs used."""

    x: str
    y: str
    rho: float
    pvalue: float
    n: int

    def as_dict(self) -> dict[str, float | int | str]:
        return {"x": self.x, "y": self.y, "rho": self.rho, "pvalue": self.pvalue, "n": self.n}


def spearman(
    x: Sequence[float], y: Sequence[float], *, nan_policy: str = "propagate", names: tuple[str, str] = ("x", "y")
) -> Correlation:
    """Spearman rank correlation of x and y (scipy.stats.spearmanr) with its two-sided p-value.

    rho and p are NaN when either measure is constant (no ranking) or fewer than 3 pairs remain (no p-value).
    The p-value uses scipy's t approximation, rough for small n (under about 10 pairs).
    """
    with needs("metrics"):
        from scipy import stats

    _check_policy(nan_policy)
    a, b = _as_array(x, "x"), _as_array(y, "y")
    if len(a) != len(b):
        raise ValueError(f"x and y must pair up one to one, got {len(a)} and {len(b)} values")
    nan = np.isnan(a) | np.isnan(b)
    if nan.any():
        if nan_policy == "raise":
            raise ValueError(f"{int(nan.sum())} pair(s) contain NaN; pass nan_policy='omit' to drop them")
        if nan_policy == "propagate":
            return Correlation(names[0], names[1], math.nan, math.nan, len(a))
        a, b = a[~nan], b[~nan]
    n = len(a)
    if n < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return Correlation(names[0], names[1], math.nan, math.nan, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.spearmanr(a, b)
    return Correlation(names[0], names[1], float(result.statistic), float(result.pvalue), n)


def spearman_table(measures: Mapping[str, Sequence[float]], *, nan_policy: str = "omit") -> list[Correlation]:
    """Spearman's rho and p for every pair of the named measures (same examples, same order in each)."""
    names = list(measures)
    return [
        spearman(measures[a], measures[b], nan_policy=nan_policy, names=(a, b))
        for a, b in itertools.combinations(names, 2)
    ]
