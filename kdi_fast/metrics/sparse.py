"""Metrics on sparse results (SparseInteractionResult): over the recovered coefficients, with a fixed K.

Over 2^n subsets, Gini and Overlap@k (K = floor(k (2^n - 1))) mean nothing at n = 128: almost every coefficient
is never estimated. Here every metric looks at the recovered non-empty subsets only, and a coefficient that was
not recovered counts as exactly 0:
- top_subsets(r, K): the K recovered subsets with the largest |I_S| (ties: smaller order, then smaller player
  indices); fewer when fewer were recovered.
- overlap_top(a, b, K): |top_K(a) ∩ top_K(b)| / K, always divided by K (default 50): a result with fewer than K
  recovered subsets cannot reach 1, and subsets that were not recovered are never in a top set.
- gini_top(r, K): the Gini index of the K largest |I_S| (padded with zeros when fewer were recovered), so that
  two results with different numbers of recovered terms are compared on the same K values.
- order_shares(r): the share of sum |I_S| carried by each order 1..3.
- overlap_with_exact(sparse, exact, K): Overlap@K of a sparse result with the exact interactions (n <= 16),
  both ranked by |I_S| over non-empty subsets.
"""

from __future__ import annotations

import torch

DEFAULT_K = 50


def _ranked(subsets, interactions) -> list[tuple[int, ...]]:
    items = [(s, abs(float(v))) for s, v in zip(subsets, interactions.tolist()) if len(s) > 0]
    items.sort(key=lambda item: (-item[1], len(item[0]), item[0]))
    return [s for s, _ in items]


def _check_k(k: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"K must be a positive int (the number of top interactions compared), got {k!r}")


def top_subsets(result, k: int = DEFAULT_K) -> list[tuple[int, ...]]:
    """The (at most) K recovered non-empty subsets with the largest |I_S|."""
    _check_k(k)
    return _ranked(result.subsets, result.interactions)[:k]


def overlap_top(a, b, k: int = DEFAULT_K) -> float:
    """|top_K(a) ∩ top_K(b)| / K over the recovered subsets of two sparse results on the same players."""
    if a.n != b.n:
        raise ValueError(f"the results have different numbers of players ({a.n} and {b.n})")
    return len(set(top_subsets(a, k)) & set(top_subsets(b, k))) / k


def gini_top(result, k: int = DEFAULT_K) -> float:
    """Gini index of the K largest recovered |I_S| (zeros for missing ones); NaN when all are zero."""
    _check_k(k)
    values = sorted((abs(float(v)) for s, v in zip(result.subsets, result.interactions.tolist()) if s),
                    reverse=True)[:k]
    u = torch.tensor(sorted(values + [0.0] * (k - len(values))), dtype=torch.float64)
    total = float(u.sum())
    if total == 0.0:
        return float("nan")
    i = torch.arange(1, k + 1, dtype=torch.float64)
    return float(2 * (i * u).sum() / (k * total) - (k + 1) / k)


def order_shares(result) -> dict[int, float]:
    """{order: share of sum |I_S| over the recovered non-empty subsets}."""
    totals: dict[int, float] = {}
    for s, v in zip(result.subsets, result.interactions.tolist()):
        if s:
            totals[len(s)] = totals.get(len(s), 0.0) + abs(v)
    whole = sum(totals.values())
    return {order: (value / whole if whole else float("nan")) for order, value in sorted(totals.items())}


def overlap_with_exact(sparse, exact, k: int = DEFAULT_K) -> float:
    """Overlap@K of a sparse result with an exact InteractionResult (all 2^n subsets) on the same players."""
    _check_k(k)
    if sparse.n != exact.n:
        raise ValueError(f"the results have different numbers of players ({sparse.n} and {exact.n})")
    masks = exact.masks.tolist()
    subsets = [tuple(i for i in range(exact.n) if m >> i & 1) for m in masks]
    truth = set(_ranked(subsets, exact.interactions)[:k])
    return len(truth & set(top_subsets(sparse, k))) / k
