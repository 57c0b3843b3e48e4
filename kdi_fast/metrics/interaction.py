"""Interaction metrics of seed 000: sparsity (Gini, entropy), alignment (Overlap@k), orders, simple vs complex.

Every function takes the interactions of one or many inputs: a Tensor [..., 2^n] indexed by subset bit mask
(bit i set = player i present), an InteractionResult (its `.interactions`), or a list of InteractionResults
with the same n (stacked to [B, 2^n]). Scalar metrics come back as a float64 Tensor of the leading shape.

Conventions (DESIGN.md):
- The empty set is excluded: M = 2^n - 1 interactions per input, I_empty is ignored everywhere.
- Normalised effects I~_S = I_S / max_{S != empty} |I_S|. Gini and entropy do not depend on this scale; it
  matters for the salient threshold and for strength per order.
- Order of S = |S| (the popcount of its mask). `orders` restricts a metric to the subsets of those orders.
- Top-K sets (Overlap@k, `top_interactions`) rank by |I_S| descending; ties go to the smaller bit mask.
  K = floor(k M) with a 1e-9 slack, so that k = j / M gives exactly K = j despite rounding.
- Simple vs complex: simple = order <= max_simple_order, complex = order above it. The default is n // 2:
  complex interactions are those among more than half of the players. The split is relative to n, so
  inputs with different n stay comparable, and both parts hold many interactions (n = 8: 162 simple,
  93 complex), which Gini and Overlap@k need to be stable; an absolute split such as order >= 3 would put
  95% of the interactions of n = 10 in the complex part.

Edge cases (tested):
- NaN or inf anywhere in the input: ValueError (the model's outputs v were not finite).
- All interactions zero (or no interaction selected by `orders`): Gini, entropy and the shares per order are
  NaN (a distribution of no mass has no inequality); `normalise` returns zeros; salient counts are 0.
- K = floor(k M) = 0 (k < 1 / M, or an empty part): Overlap@k is NaN (a ratio over an empty top set).
- M = 1 (n = 1): Gini 0, entropy 0 for a non-zero interaction; Overlap@1 is 1.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "as_interactions",
    "prompt_scores",
    "normalise",
    "subset_orders",
    "gini",
    "entropy",
    "top_k_count",
    "top_interactions",
    "overlap_at_k",
    "OrderProfile",
    "by_order",
    "split_orders",
    "simple_complex",
]

DEFAULT_SALIENT_THRESHOLD = 0.05
"""|I~_S| above this (5% of the largest effect) counts as a salient interaction."""


# ----------------------------------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------------------------------


def as_interactions(x) -> Tensor:
    """The interactions as a float64 Tensor [..., 2^n], checked (n >= 1, all finite).

    Accepts a Tensor, an object with `.interactions` (an InteractionResult), or a list of such objects with
    the same n (stacked along a new first dimension).
    """
    if isinstance(x, Tensor):
        t = x
    elif hasattr(x, "interactions"):
        t = x.interactions
    elif isinstance(x, Sequence) and len(x) > 0 and all(hasattr(r, "interactions") for r in x):
        sizes = {r.interactions.shape[-1] for r in x}
        if len(sizes) > 1:
            raise ValueError(
                f"these results have different numbers of players (2^n sizes {sorted(sizes)}); "
                "compute the metric for each result separately"
            )
        t = torch.stack([torch.as_tensor(r.interactions) for r in x])
    else:
        raise TypeError(
            f"expected a Tensor [..., 2^n], an InteractionResult or a list of them, got {type(x).__name__}"
        )
    if not isinstance(t, Tensor):
        t = torch.as_tensor(t)
    if t.dim() == 0 or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"interactions must be a real Tensor [..., 2^n], got shape {tuple(t.shape)} {t.dtype}")
    size = t.shape[-1]
    if size < 2 or size & (size - 1):
        raise ValueError(
            f"the last dimension must hold 2^n interactions with n >= 1 (one per subset), got {size}"
        )
    t = t.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).sum().item()
        raise ValueError(
            f"interactions contain {bad} NaN/inf value(s); the model outputs v(x_T) were not finite "
            "(check the targets and the masking) - metrics are undefined"
        )
    return t


def _num_players(t: Tensor) -> int:
    return t.shape[-1].bit_length() - 1


@functools.lru_cache(maxsize=32)
def _orders_cached(n: int) -> Tensor:
    masks = torch.arange(1 << n, dtype=torch.int64)
    bits = (masks[:, None] >> torch.arange(max(n, 1))) & 1
    return bits.sum(-1)


def subset_orders(n: int) -> Tensor:
    """The order |S| of every subset, by bit mask: int64 [2^n] (popcount of 0..2^n - 1)."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    return _orders_cached(n).clone()


def _selection(n: int, orders: Iterable[int] | None) -> Tensor:
    """Bool [2^n]: the non-empty subsets whose order is in `orders` (all non-empty ones when None)."""
    order = _orders_cached(n)
    if orders is None:
        return order > 0
    wanted = sorted({int(o) for o in orders})
    bad = [o for o in wanted if not 1 <= o <= n]
    if bad:
        raise ValueError(f"orders must lie in 1..n = 1..{n} (the empty set is excluded), got {bad}")
    return torch.isin(order, torch.tensor(wanted, dtype=torch.int64))


def normalise(x) -> Tensor:
    """I~_S = I_S / max_{S != empty} |I_S|: float64 [..., 2^n], entry 0 (the empty set) set to 0.

    All-zero rows stay zero (there is no largest effect to divide by).
    """
    t = as_interactions(x)
    out = t.clone()
    out[..., 0] = 0.0
    peak = out.abs().amax(-1, keepdim=True)
    return out / torch.where(peak > 0, peak, torch.ones_like(peak))


# ----------------------------------------------------------------------------------------------------------
# Sparsity
# ----------------------------------------------------------------------------------------------------------


def gini(x, *, orders: Iterable[int] | None = None) -> Tensor:
    """Gini coefficient of |I_S| over the non-empty S (of the given orders): float64 [...].

    G = 2 sum_i i u_i / (M sum_i u_i) - (M + 1) / M with u ascending, i = 1..M. 0 = all effects equal,
    (M - 1) / M = a single non-zero effect. NaN when all selected effects are zero or none is selected.
    """
    t = as_interactions(x)
    u = t.abs()[..., _selection(_num_players(t), orders)]
    m = u.shape[-1]
    if m == 0:
        return torch.full(t.shape[:-1], math.nan, dtype=torch.float64)
    u, _ = torch.sort(u, dim=-1)
    rank = torch.arange(1, m + 1, dtype=torch.float64)
    total = u.sum(-1)
    g = 2 * (rank * u).sum(-1) / (m * total) - (m + 1) / m
    return torch.where(total > 0, g, torch.full_like(g, math.nan))


def entropy(x, *, orders: Iterable[int] | None = None) -> Tensor:
    """Shannon entropy (nats) of p_S = |I_S| / sum |I| over the non-empty S (of the given orders): [...].

    0 = a single non-zero effect, log M = all equal. NaN when all selected effects are zero or none selected.
    """
    t = as_interactions(x)
    u = t.abs()[..., _selection(_num_players(t), orders)]
    if u.shape[-1] == 0:
        return torch.full(t.shape[:-1], math.nan, dtype=torch.float64)
    total = u.sum(-1, keepdim=True)
    p = u / torch.where(total > 0, total, torch.ones_like(total))
    h = -torch.xlogy(p, p).sum(-1)
    return torch.where(total.squeeze(-1) > 0, h, torch.full_like(h, math.nan))


# ----------------------------------------------------------------------------------------------------------
# Alignment
# ----------------------------------------------------------------------------------------------------------


def _check_ratio(k) -> float:
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 < k <= 1:
        raise ValueError(f"k must be a ratio in (0, 1] (the fraction of interactions kept), got {k!r}")
    return float(k)


def top_k_count(k: float, m: int) -> int:
    """K = floor(k M) for a ratio k in (0, 1] (with a 1e-9 slack against rounding: k = j / M gives j)."""
    return min(m, math.floor(_check_ratio(k) * m + 1e-9))


def _ranked_masks(t: Tensor, selection: Tensor) -> Tensor:
    """The selected masks of each row, strongest |I_S| first, ties to the smaller mask: int64 [..., M]."""
    masks = torch.nonzero(selection).flatten()  # ascending
    a = t.abs()[..., masks]
    order = torch.sort(-a, dim=-1, stable=True).indices  # stable: equal |I| keep ascending mask order
    return masks[order]


def top_interactions(x, k: int, *, orders: Iterable[int] | None = None) -> tuple[Tensor, Tensor]:
    """The k strongest interactions by |I_S| (ties to the smaller mask): (masks int64 [..., k], I_S [..., k])."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative int (a count, not a ratio), got {k!r}")
    t = as_interactions(x)
    ranked = _ranked_masks(t, _selection(_num_players(t), orders))
    top = ranked[..., :k]
    return top, torch.gather(t, -1, top)


def overlap_at_k(
    teacher, student, k: float | Sequence[float] = 0.1, *, orders: Iterable[int] | None = None
) -> Tensor:
    """Overlap@k = |top_K(teacher) ∩ top_K(student)| / K, K = floor(k M), top by |I_S|.

    teacher, student: interactions of the same inputs (same shape [..., 2^n]). k: a ratio in (0, 1] or a
    list of them. Returns float64 [...] (one k) or [..., len(k)]. NaN where K = 0.
    `orders` restricts both top sets to the subsets of those orders (M = their count).
    """
    t, s = as_interactions(teacher), as_interactions(student)
    if t.shape != s.shape:
        raise ValueError(
            f"teacher and student interactions must have the same shape (same inputs, same players), "
            f"got {tuple(t.shape)} and {tuple(s.shape)}; compute the student with like=teacher_results"
        )
    selection = _selection(_num_players(t), orders)
    m = int(selection.sum())
    single = isinstance(k, (int, float))
    ks = [k] if single else list(k)
    ranked_t, ranked_s = _ranked_masks(t, selection), _ranked_masks(s, selection)
    out = []
    for ratio in ks:
        big_k = top_k_count(ratio, m)
        if big_k == 0:
            out.append(torch.full(t.shape[:-1], math.nan, dtype=torch.float64))
            continue
        in_t = torch.zeros(t.shape, dtype=torch.bool).scatter_(-1, ranked_t[..., :big_k], True)
        in_s = torch.zeros(s.shape, dtype=torch.bool).scatter_(-1, ranked_s[..., :big_k], True)
        out.append((in_t & in_s).sum(-1).double() / big_k)
    return out[0] if single else torch.stack(out, -1)


# ----------------------------------------------------------------------------------------------------------
# Orders
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderProfile:
    """Per-order statistics of the normalised effects I~_S. Every Tensor is float64 [..., n]; index j - 1
    holds order j.

    strength:      mean |I~_S| over the C(n, j) subsets of order j (= strength_pos + strength_neg)
    strength_pos:  mean max(I~_S, 0);  strength_neg: mean max(-I~_S, 0)
    share:         sum_{|S| = j} |I~_S| / sum_{S != empty} |I~_S| (sums to 1 over j; NaN if all zero)
    share_pos, share_neg: the same with the positive / negative parts (share = share_pos + share_neg)
    salient:       number of S of order j with |I~_S| > threshold (salient_pos: I~_S > t, salient_neg: < -t)
    """

    orders: list[int]
    count: list[int]
    threshold: float
    strength: Tensor
    strength_pos: Tensor
    strength_neg: Tensor
    share: Tensor
    share_pos: Tensor
    share_neg: Tensor
    salient: Tensor
    salient_pos: Tensor
    salient_neg: Tensor


def by_order(x, *, threshold: float = DEFAULT_SALIENT_THRESHOLD) -> OrderProfile:
    """Strength, share and salient counts of the normalised interactions per order 1..n (see OrderProfile)."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
        raise ValueError(f"threshold is a fraction of the largest |I_S|, in [0, 1); got {threshold!r}")
    norm = normalise(x)
    n = _num_players(norm)
    order = _orders_cached(n)
    one_hot = (order[:, None] == torch.arange(1, n + 1)).double()  # [2^n, n]; the empty set has no column
    count = one_hot.sum(0)
    pos, neg = norm.clamp(min=0), (-norm).clamp(min=0)
    total = norm.abs().sum(-1, keepdim=True)
    safe_total = torch.where(total > 0, total, torch.full_like(total, math.nan))

    def per_order(a: Tensor) -> Tensor:
        return a @ one_hot

    return OrderProfile(
        orders=list(range(1, n + 1)),
        count=[int(c) for c in count],
        threshold=float(threshold),
        strength=per_order(norm.abs()) / count,
        strength_pos=per_order(pos) / count,
        strength_neg=per_order(neg) / count,
        share=per_order(norm.abs()) / safe_total,
        share_pos=per_order(pos) / safe_total,
        share_neg=per_order(neg) / safe_total,
        salient=per_order((norm.abs() > threshold).double()),
        salient_pos=per_order((norm > threshold).double()),
        salient_neg=per_order((norm < -threshold).double()),
    )


def split_orders(n: int, max_simple_order: int | None = None) -> tuple[list[int], list[int]]:
    """(simple orders, complex orders) for n players: 1..max_simple_order and the rest (default n // 2)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    cut = n // 2 if max_simple_order is None else max_simple_order
    if isinstance(cut, bool) or not isinstance(cut, int) or cut < 0:
        raise ValueError(f"max_simple_order must be an int >= 0 (or None for n // 2), got {max_simple_order!r}")
    cut = min(cut, n)
    return list(range(1, cut + 1)), list(range(cut + 1, n + 1))


def simple_complex(
    x,
    teacher=None,
    *,
    max_simple_order: int | None = None,
    k: float | Sequence[float] = 0.1,
) -> dict[str, Tensor]:
    """Sparsity (and alignment with `teacher`, when given) within the simple and the complex interactions.

    Returns float64 Tensors [...] keyed by: share_simple, share_complex (of the total |I~|), gini_simple,
    gini_complex, entropy_simple, entropy_complex and, with a teacher, overlap_simple, overlap_complex
    (Overlap@k within each part; [..., len(k)] for a list of k). An empty part has share 0 and NaN
    sparsity and overlap.
    """
    t = as_interactions(x)
    n = _num_players(t)
    simple, complex_ = split_orders(n, max_simple_order)
    u = normalise(t).abs()
    total = u.sum(-1)
    safe_total = torch.where(total > 0, total, torch.full_like(total, math.nan))
    out: dict[str, Tensor] = {}
    for name, part in (("simple", simple), ("complex", complex_)):
        out[f"share_{name}"] = u[..., _selection(n, part)].sum(-1) / safe_total
        out[f"gini_{name}"] = gini(t, orders=part)
        out[f"entropy_{name}"] = entropy(t, orders=part)
        if teacher is not None:
            out[f"overlap_{name}"] = overlap_at_k(teacher, t, k, orders=part)
    return out


def prompt_scores(result, teacher=None, *, k: float = 0.1, max_simple_order: int | None = None) -> dict[str, float]:
    """One prompt's scores as floats: gini, gini_simple, gini_complex, share_complex and, with the teacher's
    result, overlap (Overlap@k), overlap_simple and overlap_complex (the rows `kdi distill`'s evaluation and the
    study average over prompts)."""
    parts = simple_complex(result, teacher, max_simple_order=max_simple_order, k=k)
    row = {"gini": float(gini(result)), "gini_simple": float(parts["gini_simple"]),
           "gini_complex": float(parts["gini_complex"]), "share_complex": float(parts["share_complex"])}
    if teacher is not None:
        row.update(overlap=float(overlap_at_k(teacher, result, k)), overlap_simple=float(parts["overlap_simple"]),
                   overlap_complex=float(parts["overlap_complex"]))
    return row
