"""Sparse recovery of Harsanyi interactions for many players (17 to 1,000) from a budget of masked inputs.

The algorithm: sparse low-order regression in the Fourier basis (matching pursuit, else a cross-validated Lasso)
on uniformly random masks, converted exactly to Harsanyi (Moebius) coefficients.

Why. An AND (Harsanyi) game v(T) = sum_S I_S [S subset of T] with few terms of order <= d is, in the Fourier
basis z_i = 2 x_i - 1, a polynomial of degree <= d whose support is closed under taking subsets (a term I_S
gives Fourier terms on every subset of S with weight I_S / 2^|S|). Both bases span the same polynomials of
degree <= d, so a sparse degree-d fit in the Fourier basis converts to Harsanyi terms exactly: each Fourier term
of order k becomes at most 2^k Harsanyi terms (k <= d = 3 here: at most 8), with no blow-up beyond d. The Fourier
features are orthonormal under uniformly random masks, which keeps the regression well conditioned (the AND
features of order k are active on only 2^-k of random masks), and the closure under subsets justifies the
hierarchical screening: main effects first, then the pairs whose features correlate most with the residual
(all C(n, 2) pairs are scored in one [n, n] product), then the triples whose pairs were selected. This is
ProxySPEX's observation (LLM interactions are sparse, low order and hierarchical) with a linear model in place
of its boosted trees, and the same held-out measure as SPEX/ProxySPEX: R^2 of the reconstructed v on fresh
uniformly random masks.

The solver (recover()). Greedy batched orthogonal matching pursuit first: exact on noise-free sparse games once
the support is found; when its terms reproduce the training values exactly, that is the answer. A real model's v
is not such a game (many small pair effects beside a few large ones), and there the Lasso is used: the constant,
every main effect and every pair (the PAIR_LIMIT best screened when C(n, 2) is larger), scikit-learn's LassoCV
(Cython coordinate descent on the Gram matrix along a penalty path, the penalty chosen by 5-fold
cross-validation); order 3 adds the triples with two of the strongest selected pairs and refits. A fit whose
coordinate descent does not converge is reported (RecoveryWarning, or an error with strict=True), never
silently used. A least-squares refit on the Lasso's support (the relaxed Lasso, chosen by the same
cross-validation) was tried and dropped: at n = 64 it cost 6x the time of the fit and scored 0.881 vs 0.889.

What was measured (2-layer SmolLM2, gsm_symbolic prompt of 70 words, n = 64, 200 common uniformly random test
masks, values cached once; R^2 on the test masks; ProxySPEX at budget 1,000 scored 0.894 on the same masks):
  900 training masks, forest b = 2 (the old default): matching pursuit order 1 / 2 / 3: 0.784 / 0.765 / 0.751
  (train R^2 0.97-0.99: it overfits; a dense linear least-squares fit alone gives 0.796); Lasso order 2: 0.858,
  order 3: 0.855 (sklearn's LassoCV on the same features: 0.860). LightGBM (ProxySPEX's proxy, depth 5) on the
  same masks: 0.827 (depth 2: 0.860).
  900 uniformly random masks: Lasso order 2: 0.890 (sklearn 0.889). Forest b = 3 / b = 4 (sklearn LassoCV):
  0.70 / 0.63. At 3,600 masks: uniform 0.945, forest b = 4 0.877.
So the gap had two causes: the solver (matching pursuit overfits a v with many small effects: Lasso +0.11) and
the design (the forest estimates the first half's players from M / b^2 distinct settings: uniform +0.03 at
b = 2, +0.07 at b = 4 with 3,600 masks). compute_interactions(method="sparse") therefore draws uniformly random
training masks; design_masks (below) stays for callers who trade R^2 for speed. Over five prompts per cell
(README, benchmarks/results/sparse_design.md) the forest costs nothing on the 2-layer model at n = 64 but 0.084
R^2 at 12 layers, where the first quarter of the words carries 0.71 of the fitted v's influence, and on the CPU its
trie ran 0.47 of the tokens in 0.84 of the flat path's time.

Budget. `budget` counts every masked input evaluated: training masks plus held-out masks (max(32, budget / 10),
at most 1,000, uniformly random and independent of the training masks). The minimum budget is the smallest with
at least 2 (n + 1) training masks (min_budget(n)). The held-out R^2 is that of a fit on the training masks alone;
the returned terms are then refitted on both sets, so no evaluated mask is wasted (recover()).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

DEFAULT_MAX_ORDER = 3
DEFAULT_MIN_R2 = 0.5
"""Held-out R^2 below this is reported (RecoveryWarning, or an error with strict=True)."""


class RecoveryWarning(UserWarning):
    """A sparse recovery whose held-out R^2 is below the floor, or whose solver did not converge."""


# ----------------------------------------------------------------------------------------------------------
# Budget
# ----------------------------------------------------------------------------------------------------------


def held_out_count(budget: int) -> int:
    """Masks of the budget kept for the held-out R^2: max(32, budget // 10), at most 1,000."""
    return int(min(1000, max(32, budget // 10)))


def min_budget(n: int) -> int:
    """The smallest budget with 2 (n + 1) training masks beside the held-out ones."""
    need = 2 * (n + 1)
    budget = need + 32
    while budget - held_out_count(budget) < need:
        budget += 1
    return budget


def check_budget(n: int, budget) -> None:
    if not isinstance(budget, int) or isinstance(budget, bool):
        raise TypeError(f"budget must be an int (masked inputs to evaluate), got {budget!r}")
    low = min_budget(n)
    if budget < low:
        raise ValueError(f"budget={budget} is too small for {n} players: sparse recovery needs at least {low} masks "
                         f"(2 (n + 1) = {2 * (n + 1)} training masks + {held_out_count(low)} held-out); raise budget "
                         f"to >= {low} or use fewer players")


# ----------------------------------------------------------------------------------------------------------
# Mask design
# ----------------------------------------------------------------------------------------------------------


def level_sizes(n: int, fractions=(0.5, 0.25, 0.25)) -> list[int]:
    """Players per level (in position order): the given fractions of n, each level >= 1 player when possible."""
    sizes = [max(1, round(f * n)) for f in fractions[:-1]]
    while sum(sizes) >= n and sizes:
        sizes.pop()
    return sizes + [n - sum(sizes)]


def default_branching(n: int, count: int) -> int:
    """Children per node of the design: 4 from 48 n training masks, 3 from 20 n, else 2 (module docstring)."""
    return 4 if count >= 48 * n else 3 if count >= 20 * n else 2


def design_masks(n: int, count: int, generator: torch.Generator, order: list[int] | None = None,
                 branching: int | None = None) -> Tensor:
    """`count` masks [count, n] bool of the prefix-sharing forest (module docstring); order: the players by
    position (default 0..n-1); branching: children per node (default_branching). Each mask is marginally
    uniform."""
    order = list(range(n)) if order is None else list(order)
    if branching is None:
        branching = default_branching(n, count)
    sizes = level_sizes(n)
    levels = len(sizes)
    # nodes per level: count / branching^(levels - 1 - j), at least 2 x players of the level, at most count
    nodes = []
    for j in range(levels):
        want = max(math.ceil(count / branching ** (levels - 1 - j)), 2 * sizes[j], nodes[-1] if nodes else 1)
        nodes.append(min(count, want))
    nodes[-1] = count
    masks = torch.empty(count, n, dtype=torch.bool)
    start = 0
    for j, size in enumerate(sizes):
        columns = order[start:start + size]
        start += size
        # spread the masks over nodes[j] nodes, children evenly over their parents
        node = torch.div(torch.arange(count) * nodes[j], count, rounding_mode="floor")
        bits = torch.rand(nodes[j], size, generator=generator) < 0.5
        masks[:, columns] = bits[node]
    return masks


def uniform_masks(n: int, count: int, generator: torch.Generator) -> Tensor:
    """`count` independent uniformly random masks [count, n] bool."""
    return torch.rand(count, n, generator=generator) < 0.5


# ----------------------------------------------------------------------------------------------------------
# Features: Fourier terms of order <= 3
# ----------------------------------------------------------------------------------------------------------


def fourier_features(z: Tensor, terms: list[tuple[int, ...]]) -> Tensor:
    """[M, len(terms)]: prod_{i in S} z_i for each term S (z [M, n] of +-1)."""
    out = torch.ones(z.shape[0], len(terms), dtype=z.dtype)
    for k in range(3):
        idx = [t for t, s in enumerate(terms) if len(s) > k]
        if not idx:
            break
        players = torch.tensor([terms[t][k] for t in idx])
        out[:, idx] *= z[:, players]
    if any(len(s) > 3 for s in terms):
        raise ValueError("terms of order > 3 are not supported")
    return out


def fourier_to_harsanyi(terms: list[tuple[int, ...]], coefficients: Tensor) -> dict[tuple[int, ...], float]:
    """Harsanyi I_T from f = sum_S c_S prod_{i in S} (2 x_i - 1): I_T = sum_{S superset T} c_S 2^|T| (-1)^|S - T|."""
    out: dict[tuple[int, ...], float] = {}
    for s, c in zip(terms, coefficients.tolist()):
        k = len(s)
        for size in range(k + 1):
            for sub in _subsets_of_size(s, size):
                out[sub] = out.get(sub, 0.0) + c * (2 ** size) * (-1) ** (k - size)
    return out


def _subsets_of_size(s: tuple[int, ...], size: int):
    from itertools import combinations

    return combinations(s, size)


# ----------------------------------------------------------------------------------------------------------
# Solver
# ----------------------------------------------------------------------------------------------------------


def least_squares(X: Tensor, y: Tensor, ridge: float = 1e-10) -> Tensor:
    """argmin ||y - X w||^2 + ridge M ||w||^2 (a tiny ridge keeps aliased columns finite)."""
    gram = X.T @ X
    gram.diagonal().add_(ridge * X.shape[0])
    return torch.linalg.solve(gram, X.T @ y)


def r2_score(truth: Tensor, predicted: Tensor) -> float:
    """1 - sum (v - v^)^2 / sum (v - mean v)^2."""
    total = float(((truth - truth.mean()) ** 2).sum())
    if total == 0.0:
        return 1.0 if float(((truth - predicted) ** 2).sum()) == 0.0 else float("-inf")
    return 1.0 - float(((truth - predicted) ** 2).sum()) / total


@dataclass
class Recovery:
    """What recover() found: Harsanyi terms (player index tuples, sorted) and their I_S, plus diagnostics."""

    subsets: list[tuple[int, ...]]
    interactions: Tensor  # [K] float64
    r2_held_out: float
    r2_train: float
    train_masks: int
    held_out_masks: int
    fourier_terms: int
    max_order: int
    iterations: int
    converged: bool

    def predict(self, masks: Tensor) -> Tensor:
        """v^(T) [M] = sum of I_S over the recovered S contained in T, for masks [M, n] bool."""
        return predict(self.subsets, self.interactions, masks)


def predict(subsets: list[tuple[int, ...]], interactions: Tensor, masks: Tensor) -> Tensor:
    """sum_{S subset of T} I_S over the given terms, for masks [M, n] bool -> [M] float64."""
    x = masks.double()
    out = torch.zeros(masks.shape[0], dtype=torch.float64)
    for k in range(4):
        idx = [t for t, s in enumerate(subsets) if len(s) == k]
        if not idx:
            continue
        term = torch.ones(masks.shape[0], len(idx), dtype=torch.float64)
        for j in range(k):
            term *= x[:, [subsets[t][j] for t in idx]]
        out += term @ interactions[idx].double()
    if any(len(s) > 3 for s in subsets):
        raise ValueError("predict supports subsets of at most 3 players")
    return out


def _candidate_triples(active: set, limit: int) -> list[tuple[int, int, int]]:
    """Triples with at least two of their pairs active (an order-3 Harsanyi term brings all three of its pairs
    into the Fourier support), at most `limit` of them."""
    neighbours: dict[int, set[int]] = {}
    for s in active:
        if len(s) == 2:
            neighbours.setdefault(s[0], set()).add(s[1])
            neighbours.setdefault(s[1], set()).add(s[0])
    out = set()
    for j, near in neighbours.items():
        near = sorted(near)
        for a in range(len(near)):
            for b in range(a + 1, len(near)):
                out.add(tuple(sorted((near[a], j, near[b]))))
                if len(out) >= limit:
                    return sorted(out - active)
    return sorted(out - active)


PAIR_LIMIT = 2048
"""At most this many pairs enter the Lasso (all of them while C(n, 2) fits; else the best screened ones)."""
TRIPLE_PAIRS = 50
TRIPLE_LIMIT = 1024
TRIPLE_ROUNDS = 1
"""Order 3: TRIPLE_ROUNDS more Lasso fits, each adding the triples (at most TRIPLE_LIMIT) that have at least two
pairs among the TRIPLE_PAIRS largest selected pairs (n = 64: 146 triples, held-out R^2 0.893 vs 0.889 at order 2;
seeding from every selected pair, 1,024 triples: 0.885 and twice the time)."""
MAIN_WEIGHTS = (1.0, 3.0, 10.0, 30.0)
"""The main effects' penalty is the pairs' and triples' divided by one of these, the one with the lowest
cross-validated error (a hierarchical prior: lower orders carry more of v). On 2-layer SmolLM2 (200 test masks,
900 training masks): n = 128 0.856 -> 0.875, n = 64 0.903 -> 0.907, n = 32 0.982 -> 0.980; 12 layers, n = 64
0.544 -> 0.640."""
PATH_POINTS = 40
PATH_DEPTH = 1e-3
"""The Lasso path: PATH_POINTS penalties, geometrically spaced from the smallest that selects nothing down to
PATH_DEPTH times it."""
LASSO_SWEEPS = 5
"""Coordinate-descent sweeps per penalty: LASSO_SWEEPS x recover()'s max_iterations (1,000 by default, as
scikit-learn's)."""
LASSO_TOL = 1e-4
"""scikit-learn's coordinate-descent tolerance (on the duality gap, relative to ||y - mean y||^2)."""
FOLDS = 5


def _screen_pairs(z: Tensor, y: Tensor, limit: int) -> list[tuple[int, int]]:
    """All pairs when C(n, 2) <= limit, else the `limit` pairs whose Fourier feature correlates most with the
    residual of the main-effect least-squares fit (one [n, n] product)."""
    n = z.shape[1]
    i, j = torch.triu_indices(n, n, 1)
    if i.numel() > limit:
        X = torch.cat([torch.ones(z.shape[0], 1, dtype=z.dtype), z], 1)
        residual = y - X @ least_squares(X, y)
        score = ((z * residual[:, None]).T @ z).abs()[i, j]
        keep = torch.topk(score, limit).indices.sort().values
        i, j = i[keep], j[keep]
    return list(zip(i.tolist(), j.tolist()))


def _sklearn():
    """(LassoCV, PredefinedSplit, ConvergenceWarning), or a one-line ImportError naming the fix."""
    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LassoCV
        from sklearn.model_selection import PredefinedSplit
    except ImportError:
        raise ImportError("scikit-learn is not installed; sparse recovery fits its Lasso with it: "
                          "pip install scikit-learn (a dependency of kdi_fast)") from None
    return LassoCV, PredefinedSplit, ConvergenceWarning


def _cross_validated_lasso(F: np.ndarray, y: np.ndarray, folds: np.ndarray, max_sweeps: int,
                           weights: np.ndarray | None = None):
    """(coefficients [p], converged?, cross-validated mean squared error) of the Lasso on F [M, p] (column 0 the
    constant, not penalised) at the penalty with the lowest FOLDS-fold validation error on the path of
    PATH_POINTS penalties from the smallest that selects nothing down to PATH_DEPTH times it (scikit-learn's
    LassoCV: coordinate descent on each fold's Gram matrix, warm-started along the path). weights [p - 1]: column
    j's penalty is divided by weights[j] (the Lasso on F scaled by the weights). Not converged: scikit-learn
    warned that coordinate descent did not reach its tolerance within max_sweeps sweeps at some penalty."""
    LassoCV, PredefinedSplit, ConvergenceWarning = _sklearn()
    X = F[:, 1:] if weights is None else F[:, 1:] * weights
    if X.shape[1] == 0:
        return np.array([y.mean()]), True, float(y.var())
    start = float(np.abs((X - X.mean(0)).T @ (y - y.mean())).max()) / len(y)
    alphas = max(start, 1e-300) * np.geomspace(1.0, PATH_DEPTH, PATH_POINTS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        fit = LassoCV(alphas=alphas, cv=PredefinedSplit(folds), precompute=True, max_iter=max_sweeps,
                      tol=LASSO_TOL).fit(X, y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    coef = fit.coef_ if weights is None else fit.coef_ * weights
    return np.concatenate([[fit.intercept_], coef]), converged, float(fit.mse_path_.mean(1).min())


def _scores(z: Tensor, residual: Tensor, max_order: int, active: set, triples: list) -> tuple[list, Tensor]:
    """(terms, |correlation with the residual|) of every main effect, every pair and the candidate triples."""
    m, n = z.shape
    terms: list[tuple[int, ...]] = [(i,) for i in range(n)]
    parts = [(z.T @ residual).abs() / m]
    if max_order >= 2 and n >= 2:
        pair = ((z * residual[:, None]).T @ z).abs() / m
        i, j = torch.triu_indices(n, n, 1)
        terms += list(zip(i.tolist(), j.tolist()))
        parts.append(pair[i, j])
    if max_order >= 3 and triples:
        t = torch.tensor(triples)
        parts.append(((z[:, t[:, 0]] * z[:, t[:, 1]] * z[:, t[:, 2]]).T @ residual).abs() / m)
        terms += triples
    scores = torch.cat(parts)
    if active:
        blocked = torch.tensor([s in active for s in terms])
        scores[blocked] = -1.0
    return terms, scores


def _matching_pursuit(z: Tensor, y: Tensor, max_order: int, seed: int, max_iterations: int):
    """(Fourier terms, coefficients, rounds, converged) of greedy batched orthogonal matching pursuit: each round
    scores every main effect, every pair (one [n, n] product) and the triples with two active pairs by their
    correlation with the residual, adds the best (a quarter of the active set, at least 4) and refits least
    squares; the number of terms is the one with the lowest error on a validation fifth (stop after 3 rounds
    without improvement); the chosen terms are refitted on all training masks."""
    generator = torch.Generator().manual_seed(seed + 7)
    m, n = z.shape
    perm = torch.randperm(m, generator=generator)
    valid, fit = perm[: max(1, m // 5)], perm[max(1, m // 5):]
    z_fit, y_fit, z_valid, y_valid = z[fit], y[fit], z[valid], y[valid]
    scale = float(y.var()) if m > 1 else 1.0
    active: list[tuple[int, ...]] = [()]
    best_error, best_size, stale, converged, rounds = math.inf, 1, 0, False, 0
    limit = max(2, len(fit) // 2)
    for rounds in range(1, max_iterations + 1):
        X_fit = fourier_features(z_fit, active)
        w = least_squares(X_fit, y_fit)
        residual = y_fit - X_fit @ w
        error = float(((fourier_features(z_valid, active) @ w - y_valid) ** 2).mean())
        if error < best_error * (1 - 1e-3) - 1e-12 * scale:
            best_error, best_size, stale = error, len(active), 0
        else:
            stale += 1
        if stale >= 3 or error <= 1e-20 * max(scale, 1e-300) or len(active) >= limit:
            converged = True
            break
        current = set(active)
        triples = _candidate_triples(current, limit=20 * n) if max_order >= 3 else []
        terms, scores = _scores(z_fit, residual, max_order, current, triples)
        add = min(max(4, len(active) // 4), limit - len(active), int((scores > 0).sum()))
        if add <= 0:
            converged = True
            break
        chosen = torch.topk(scores, add).indices.tolist()
        active += [terms[c] for c in chosen]
    active = active[:best_size]
    w = least_squares(fourier_features(z, active), y)
    return active, w, rounds, converged


def recover(train_masks: Tensor, train_values: Tensor, held_masks: Tensor, held_values: Tensor, *,
            max_order: int = DEFAULT_MAX_ORDER, seed: int = 0, max_iterations: int = 200) -> Recovery:
    """Sparse Harsanyi terms of order <= max_order (1..3) from values on masks (module docstring).

    Fitted twice with the same procedure (_fit): on the training masks alone, whose prediction of the held-out
    masks gives r2_held_out (those masks never enter that fit), then on the training and held-out masks
    together, which gives the returned terms (the budget's every mask informs them; r2_train is this fit's
    in-sample R^2). The first fit's held-out R^2 is the estimate of the procedure's accuracy on fresh masks, as
    cross-validation estimates a model it then refits on all the data; with 1 / 9 more masks the returned fit
    is expected to do at least as well (2-layer SmolLM2, 200 test masks, one penalty for all orders: n = 128
    0.856 -> 0.873, n = 64 0.903 -> 0.911, 12 layers 0.544 -> 0.582; with MAIN_WEIGHTS too: 0.894, 0.918,
    0.648). max_iterations: matching-pursuit rounds; coordinate-descent sweeps per penalty are LASSO_SWEEPS
    times it."""
    if max_order not in (1, 2, 3):
        raise ValueError(f"max_order must be 1, 2 or 3 for sparse recovery, got {max_order!r}")
    checked = _fit(train_masks, train_values, max_order, seed, max_iterations)
    r2_held_out = r2_score(held_values.double(), predict(checked.subsets, checked.interactions, held_masks))
    masks, values = torch.cat([train_masks, held_masks]), torch.cat([train_values.double(), held_values.double()])
    # the procedure that was checked: its main-effect weight (none when matching pursuit was exact)
    weights = MAIN_WEIGHTS if checked.main_weight is None else (checked.main_weight,)
    final = _fit(masks, values, max_order, seed, max_iterations, weights)
    return Recovery(subsets=final.subsets, interactions=final.interactions, r2_held_out=r2_held_out,
                    r2_train=r2_score(values, predict(final.subsets, final.interactions, masks)),
                    train_masks=train_masks.shape[0], held_out_masks=held_masks.shape[0],
                    fourier_terms=final.fourier_terms, max_order=max_order, iterations=final.rounds,
                    converged=final.converged and checked.converged)


class _Fit(NamedTuple):
    """What _fit found: Harsanyi terms and their I_S [K] float64, plus diagnostics."""

    subsets: list[tuple[int, ...]]
    interactions: Tensor
    fourier_terms: int
    rounds: int
    converged: bool
    main_weight: float | None  # of MAIN_WEIGHTS; None when matching pursuit was exact


def _fit(masks: Tensor, values: Tensor, max_order: int, seed: int, max_iterations: int,
         main_weights: tuple[float, ...] = MAIN_WEIGHTS) -> _Fit:
    """Sparse terms from values [M] on masks [M, n] bool.

    Two solvers in the Fourier basis. First greedy orthogonal matching pursuit (_matching_pursuit): when its
    terms reproduce the values exactly (a noise-free sparse game, found with far fewer terms than masks), that is
    the answer. Otherwise (a real model's v) the Lasso with its penalty chosen by 5-fold cross-validation:
    features the constant, every main effect and the pairs (all, or the PAIR_LIMIT best screened), the main
    effects' penalty lightened by the weight of main_weights with the lowest cross-validated error; with
    max_order = 3 the triples that have at least two of the TRIPLE_PAIRS strongest selected pairs are added and
    the Lasso refitted (TRIPLE_ROUNDS times at most)."""
    m, n = masks.shape
    y = values.double()
    z = masks.double() * 2 - 1
    terms, w, stages, converged = _matching_pursuit(z, y, max_order, seed, max_iterations)
    w, weight = w.numpy(), None
    residual = float(((fourier_features(z, terms).numpy() @ w - y.numpy()) ** 2).sum())
    if residual > 1e-16 * max(float(((y - y.mean()) ** 2).sum()), 1e-300) or not converged:
        folds = (torch.randperm(m, generator=torch.Generator().manual_seed(seed + 11)) % FOLDS).numpy()
        terms = [()] + [(i,) for i in range(n)] + (_screen_pairs(z, y, PAIR_LIMIT) if max_order >= 2 else [])
        F, sweeps = fourier_features(z, terms).numpy(), LASSO_SWEEPS * max_iterations

        def lasso(weight: float):
            scale = np.array([weight if len(t) == 1 else 1.0 for t in terms[1:]])
            return _cross_validated_lasso(F, y.numpy(), folds, sweeps, scale)

        fits = {c: lasso(c) for c in main_weights}
        weight = min(fits, key=lambda c: fits[c][2])
        w = fits[weight][0]
        converged = all(f[1] for f in fits.values())
        stages = 1
        while max_order >= 3 and stages < 1 + TRIPLE_ROUNDS:
            have = set(terms)
            strongest = [j for j in np.argsort(-np.abs(w)) if w[j] != 0 and len(terms[j]) == 2][:TRIPLE_PAIRS]
            triples = [t for t in _candidate_triples({terms[j] for j in strongest}, TRIPLE_LIMIT) if t not in have]
            if not triples:
                break
            terms += triples
            F = fourier_features(z, terms).numpy()
            w, again, _ = lasso(weight)
            converged, stages = converged and again, stages + 1
    keep = np.flatnonzero(w)
    active = [terms[j] for j in keep]
    harsanyi = fourier_to_harsanyi(active, torch.from_numpy(w[keep]))
    subsets = sorted(harsanyi, key=lambda s: (len(s), s))
    interactions = torch.tensor([harsanyi[s] for s in subsets], dtype=torch.float64)
    return _Fit(subsets, interactions, len(active), stages, converged, weight)


def report(recovery: Recovery, *, min_r2: float = DEFAULT_MIN_R2, strict: bool = False) -> None:
    """Warn (or raise with strict=True) when the held-out R^2 is below min_r2 or the solver did not converge."""
    problems = []
    if not recovery.converged:
        problems.append(f"the solver did not converge: {recovery.iterations} rounds of matching pursuit without a "
                        f"stable validation error; the coefficients may be off")
    if not recovery.r2_held_out >= min_r2:
        problems.append(f"held-out R^2 = {recovery.r2_held_out:.3f} on {recovery.held_out_masks} random masks is "
                        f"below the floor {min_r2}: the recovered interactions do not reproduce v (raise the budget, "
                        f"max_order, or use fewer players)")
    if not problems:
        return
    message = "sparse recovery: " + "; ".join(problems)
    if strict:
        raise RuntimeError(message)
    warnings.warn(message, RecoveryWarning, stacklevel=3)
