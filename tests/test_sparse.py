"""Sparse recovery (engine.sparse, method="sparse"): exact recovery of synthetic sparse Harsanyi games with known
coefficients, the Fourier -> Harsanyi conversion against the Moebius transform, the prefix-sharing design, the
budget, the R^2 floor and non-convergence reports, and the end-to-end call on a tiny model."""

import warnings

import numpy as np
import pytest
import torch

import kdi_fast
from kdi_fast.engine import SparseInteractionResult, compute_interactions, compute_values
from kdi_fast.engine.sparse import (MAIN_WEIGHTS, RecoveryWarning, _fit, check_budget, design_masks, fourier_features,
                                    fourier_to_harsanyi, held_out_count, min_budget, predict, recover, report,
                                    uniform_masks)
from kdi_fast.engine.values import prefix_counts

PROMPT = ("Tom had twelve apples and gave three of them to his sister, who then bought five more apples at the "
          "market before she walked home with her brother in the rain.")


def sparse_game(n, k, seed, max_order=3):
    """k random Harsanyi terms of order 1..max_order (plus I_empty), coefficients ~ N(0, 4)."""
    g = torch.Generator().manual_seed(seed)
    terms = {(): 0.3}
    while len(terms) < k + 1:
        order = int(torch.randint(1, max_order + 1, (1,), generator=g))
        terms[tuple(sorted(torch.randperm(n, generator=g)[:order].tolist()))] = 2 * float(torch.randn(1, generator=g))
    subsets = list(terms)
    return subsets, torch.tensor([terms[s] for s in subsets], dtype=torch.float64)


@pytest.mark.parametrize("n,k,budget,design", [(40, 15, 1000, "forest"), (64, 30, 1000, "forest"),
                                               (300, 12, 1500, "forest"), (24, 10, 400, "uniform")])
def test_recovers_known_sparse_games_exactly(n, k, budget, design):
    subsets, coefficients = sparse_game(n, k, seed=n)
    g = torch.Generator().manual_seed(1)
    held = held_out_count(budget)
    train = design_masks(n, budget - held, g) if design == "forest" else uniform_masks(n, budget - held, g)
    test = uniform_masks(n, held, g)
    rec = recover(train, predict(subsets, coefficients, train), test, predict(subsets, coefficients, test))
    truth, got = dict(zip(subsets, coefficients.tolist())), dict(zip(rec.subsets, rec.interactions.tolist()))
    assert max(abs(truth.get(s, 0.0) - got.get(s, 0.0)) for s in set(truth) | set(got)) < 1e-6
    assert rec.r2_held_out > 1 - 1e-9 and rec.converged
    assert rec.train_masks + rec.held_out_masks == budget


def test_lasso_beats_matching_pursuit_on_many_small_effects():
    """A v like a real model's (8 large terms, every pair with a small effect, noise): matching pursuit does not
    fit it exactly, so recover() uses the cross-validated Lasso, whose held-out R^2 (against the noise-free game)
    is higher than matching pursuit's on the same masks (measured 0.98 vs 0.96)."""
    from kdi_fast.engine.sparse import _matching_pursuit

    n = 20
    subsets, c = sparse_game(n, 8, seed=1, max_order=2)
    g = torch.Generator().manual_seed(1)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    subsets, c = subsets + pairs, torch.cat([c, 0.1 * torch.randn(len(pairs), generator=g, dtype=torch.float64)])
    train, test = uniform_masks(n, 300, g), uniform_masks(n, 300, g)
    y = predict(subsets, c, train) + 0.3 * torch.randn(300, generator=g, dtype=torch.float64)
    rec = recover(train, y, test, predict(subsets, c, test), max_order=2)
    terms, w, _, _ = _matching_pursuit(train.double() * 2 - 1, y, 2, 0, 200)
    pursuit = fourier_features(test.double() * 2 - 1, terms) @ w
    truth = predict(subsets, c, test)
    r2_pursuit = 1 - float(((truth - pursuit) ** 2).sum() / ((truth - truth.mean()) ** 2).sum())
    assert rec.converged and rec.r2_held_out > r2_pursuit + 0.01 and rec.r2_held_out > 0.97


def test_main_effect_weight_lightens_their_penalty_and_is_chosen_by_cross_validation():
    """Every player has a main effect (large), every pair a small one, plus noise: the Lasso's single penalty
    shrinks the main effects as hard as the pairs; dividing the main effects' penalty by a weight shrinks them
    less (measured: mean shrinkage 0.044 at weight 1, 0.022 at 30), and the weight _fit keeps is the one with
    the lowest cross-validated error."""
    from kdi_fast.engine.sparse import _cross_validated_lasso

    n, m = 24, 400
    g = torch.Generator().manual_seed(5)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    mains = 1.0 + torch.rand(n, generator=g, dtype=torch.float64)
    small = 0.05 * torch.randn(len(pairs), generator=g, dtype=torch.float64)
    train = uniform_masks(n, m, g)
    z = train.double() * 2 - 1
    terms = [()] + [(i,) for i in range(n)] + pairs
    F = fourier_features(z, terms)
    y = F[:, 1:] @ torch.cat([mains, small]) + 0.5 * torch.randn(m, generator=g, dtype=torch.float64)
    folds = (torch.arange(m) % 5).numpy()
    errors, shrinkage = {}, {}
    for weight in MAIN_WEIGHTS:
        scale = np.array([weight if len(t) == 1 else 1.0 for t in terms[1:]])
        w, converged, errors[weight] = _cross_validated_lasso(F.numpy(), y.numpy(), folds, 5000, scale)
        assert converged
        shrinkage[weight] = float((mains.numpy() - w[1:n + 1]).mean())  # > 0: pulled towards 0
    assert shrinkage[1.0] > 0 and abs(shrinkage[MAIN_WEIGHTS[-1]]) < 0.6 * shrinkage[1.0]
    *_, chosen = _fit(train, y, 2, 0, 200)
    assert chosen == min(errors, key=errors.get) and chosen > 1.0


def test_fourier_to_harsanyi_is_the_moebius_transform():
    """A random degree-3 polynomial in z = 2x - 1 on n = 6: its Harsanyi terms equal mobius(v over all masks)."""
    n = 6
    g = torch.Generator().manual_seed(0)
    terms = [(), (0,), (3,), (1, 4), (0, 5), (2, 3, 5), (0, 1, 2)]
    c = torch.randn(len(terms), generator=g, dtype=torch.float64)
    masks = (torch.arange(64)[:, None] >> torch.arange(n)) & 1
    v = fourier_features(masks.double() * 2 - 1, terms) @ c
    exact = kdi_fast.mobius(v)
    harsanyi = fourier_to_harsanyi(terms, c)
    for mask in range(64):
        s = tuple(i for i in range(n) if mask >> i & 1)
        assert abs(harsanyi.get(s, 0.0) - float(exact[mask])) < 1e-12
    assert len(harsanyi) <= sum(2 ** len(t) for t in terms)


def test_design_is_marginally_uniform_and_shares_prefixes():
    g = torch.Generator().manual_seed(0)
    masks = design_masks(64, 3600, g)
    assert masks.shape == (3600, 64)
    assert (masks.double().mean(0) - 0.5).abs().max() < 0.12  # each player present with probability 1/2
    counts = prefix_counts(masks)
    share = sum(counts[1:]) / (64 * 3600)  # token positions run by the trie / independent forwards (1 token/player)
    assert share < 0.34
    assert counts[32] <= 3600 // 16 + 64 and counts[-1] == torch.unique(masks, dim=0).shape[0]
    random = uniform_masks(64, 3600, g)
    assert sum(prefix_counts(random)[1:]) / (64 * 3600) > 0.8


def test_budget_minimum_and_held_out_share():
    assert held_out_count(1000) == 100 and held_out_count(300) == 32 and held_out_count(50_000) == 1000
    for n in (17, 64, 1000):
        low = min_budget(n)
        assert low - held_out_count(low) >= 2 * (n + 1) and (low - 1) - held_out_count(low - 1) < 2 * (n + 1)
    with pytest.raises(ValueError, match=r"budget=100 is too small for 64 players: .* at least 162"):
        check_budget(64, 100)
    with pytest.raises(TypeError, match="budget must be an int"):
        check_budget(64, None)


def test_low_r2_and_non_convergence_are_reported():
    n = 30
    g = torch.Generator().manual_seed(2)
    train, test = uniform_masks(n, 300, g), uniform_masks(n, 64, g)
    noise_train, noise_test = torch.randn(300, generator=g), torch.randn(64, generator=g)  # no structure at all
    rec = recover(train, noise_train, test, noise_test)
    assert rec.r2_held_out < 0.5
    with pytest.warns(RecoveryWarning, match=r"held-out R\^2 = .* below the floor 0.5"):
        report(rec)
    with pytest.raises(RuntimeError, match="below the floor"):
        report(rec, strict=True)
    subsets, c = sparse_game(n, 20, seed=3)
    stopped = recover(train, predict(subsets, c, train), test, predict(subsets, c, test), max_iterations=1)
    assert not stopped.converged
    with pytest.warns(RecoveryWarning, match="did not converge"):
        report(stopped, min_r2=-1e9)


@pytest.fixture(scope="module")
def llama():
    from kdi_fast.models import tiny_causal_lm

    return tiny_causal_lm("llama", seed=3)


def test_sparse_method_end_to_end(llama, smollm_tokenizer, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = compute_interactions(llama, smollm_tokenizer, [PROMPT], targets=[" home"], n_players=20,
                                      method="sparse", budget=200, progress=False)[0]
    assert isinstance(result, SparseInteractionResult) and result.n == 20
    assert result.settings["train_masks"] + result.settings["held_out_masks"] == 200
    assert result.settings["held_out_in_budget"] and result.stats["total_masks"] == 200
    # the stored R^2 is the one of fresh masks for a fit that never saw them: recompute both masks' values
    # through the engine, fit the training masks alone and score the held-out ones
    train = uniform_masks(20, result.settings["train_masks"], torch.Generator().manual_seed(0))
    held = uniform_masks(20, result.settings["held_out_masks"], torch.Generator().manual_seed(1_000_003))
    train_values, _ = compute_values(llama, smollm_tokenizer, PROMPT, train, target=" home", players=result.players)
    values, _ = compute_values(llama, smollm_tokenizer, PROMPT, held, target=" home", players=result.players)
    subsets, interactions, *_, weight = _fit(train, train_values, 3, 0, 200)
    r2 = 1 - ((values - predict(subsets, interactions, held)) ** 2).sum() / ((values - values.mean()) ** 2).sum()
    assert abs(float(r2) - result.r2_held_out) < 1e-9
    # the returned terms are the same procedure (with the main-effect weight it chose) refitted on all 200 masks
    assert weight in MAIN_WEIGHTS
    subsets, interactions, *_ = _fit(torch.cat([train, held]), torch.cat([train_values, values]), 3, 0, 200,
                                     (weight,))
    assert result.subsets == subsets and torch.allclose(result.interactions, interactions, atol=1e-12)
    if result.r2_held_out < 0.5:
        assert any(issubclass(w.category, RecoveryWarning) for w in caught)
    # uniformly random training masks share little prefix: path "auto" ran them as independent forwards
    # (engine.values.TRIE_MAX_TOKEN_SHARE), unless the trie saved enough token positions
    tokens, naive = result.stats["train_token_forwards"], result.stats["train_naive_token_forwards"]
    assert (tokens == naive and result.stats["total_path"] == "flat") or tokens <= 0.6 * naive
    path = result.save(tmp_path / "r.safetensors")
    again = SparseInteractionResult.load(path)
    assert again.subsets == result.subsets and torch.equal(again.interactions, result.interactions)
    assert again.r2_held_out == result.r2_held_out
    # like=: the same masks, so the same model gives the same recovery
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecoveryWarning)
        twin = compute_interactions(llama, smollm_tokenizer, [PROMPT], method="sparse", budget=200, like=[result],
                                    progress=False)[0]
    assert twin.subsets == result.subsets
    torch.testing.assert_close(twin.interactions, result.interactions, atol=1e-9, rtol=0)


def test_sparse_bad_input(llama, smollm_tokenizer):
    with pytest.raises(ValueError, match="fewer than the 64 players asked"):
        compute_interactions(llama, smollm_tokenizer, [PROMPT], n_players=64, method="sparse", budget=2000)
    with pytest.raises(ValueError, match=r"budget=50 is too small for 20 players: .* at least 74"):
        compute_interactions(llama, smollm_tokenizer, [PROMPT], n_players=20, method="sparse", budget=50)
    with pytest.raises(ValueError, match="needs budget=Q"):
        compute_interactions(llama, smollm_tokenizer, [PROMPT], n_players=20, method="sparse")
    with pytest.raises(ValueError, match="method='sparse' only"):
        compute_interactions(llama, smollm_tokenizer, [PROMPT], n_players=4, budget=100)
    with pytest.raises(ValueError, match="max_order must be 1, 2 or 3"):
        compute_interactions(llama, smollm_tokenizer, [PROMPT], n_players=20, method="sparse", budget=500,
                             max_order=5)
