"""compute_interactions(..., method="sparse", budget=Q): sparse Harsanyi interactions of long prompts.

Per prompt: prepare v (engine.values.ValueFunction), draw the uniformly random training and held-out masks
(engine.sparse), evaluate both, fit the training masks and score the held-out ones (the stored
R^2), refit the terms on both sets, check the R^2 and the solver, and return a SparseInteractionResult. The budget
counts both mask sets.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from .sparse import (DEFAULT_MAX_ORDER, DEFAULT_MIN_R2, check_budget, held_out_count, recover, report,
                     uniform_masks)
from .sparse_result import SparseInteractionResult
from .value import DEFAULT_EPS
from .values import ValueFunction


def compute_sparse_interactions(model: nn.Module, tokenizer, prompts: list[str], *, budget: int,
                                targets: list[str] | None = None, players: list | None = None, n_players: int = 32,
                                max_target_tokens: int = 16, masking: str = "embedding", baseline="pad",
                                chat_template: bool = False, memory_budget=None, progress: bool = True,
                                like: list[SparseInteractionResult] | None = None, eps: float = DEFAULT_EPS,
                                path: str = "auto", max_batch_tokens: int | None = None,
                                max_order: int | None = None, seed: int = 0, min_r2: float = DEFAULT_MIN_R2,
                                strict: bool = False) -> list[SparseInteractionResult]:
    """Sparse interactions (order <= max_order, default 3) of each prompt from `budget` masked inputs, of which
    max(32, budget / 10) (at most 1,000) are uniformly random held-out masks for the stored R^2.

    like: results of another model on the same prompts: the same y*, players, budget, order and seed, so the
    same masks. A held-out R^2 below min_r2 or a solver that did not converge gives a RecoveryWarning (an error
    with strict=True). A prompt with fewer usable words than n_players is an error."""
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts:
        raise TypeError("prompts must be a non-empty list of strings (wrap a single prompt in a list)")
    for name, value in (("targets", targets), ("players", players), ("like", like)):
        if value is not None and (isinstance(value, str) or len(value) != len(prompts)):
            raise ValueError(f"{name} must be a list with one entry per prompt ({len(prompts)})")
    if max_order is None:
        max_order = DEFAULT_MAX_ORDER
    if max_order not in (1, 2, 3):
        raise ValueError(f"max_order must be 1, 2 or 3 with method='sparse', got {max_order!r}")
    if not isinstance(budget, int) or isinstance(budget, bool):
        raise TypeError(f"method='sparse' needs budget=Q (an int: masked inputs to evaluate), got {budget!r}")
    functions = []
    for i, prompt in enumerate(prompts):
        try:
            options = dict(max_target_tokens=max_target_tokens, masking=masking, baseline=baseline,
                           chat_template=chat_template, memory_budget=memory_budget, eps=eps, path=path,
                           max_batch_tokens=max_batch_tokens)
            if like is not None:
                other = like[i]
                if not isinstance(other, SparseInteractionResult):
                    raise TypeError(f"like[{i}] must be a SparseInteractionResult, got {type(other).__name__}")
                if other.prompt != prompt:
                    raise ValueError(f"like[{i}] is about another prompt ({other.prompt!r})")
                theirs = {k: other.settings.get(k) for k in ("budget", "max_order", "seed", "masking")}
                ours = {"budget": budget, "max_order": max_order, "seed": seed, "masking": masking}
                if theirs != ours:
                    raise ValueError(f"like[{i}] was computed with {theirs}, here {ours}: pass the same budget, "
                                     f"max_order, seed and masking so that the masks are the same")
                function = ValueFunction.prepare(model, tokenizer, prompt, players=[list(p) for p in other.players],
                                                 target_ids=list(other.target_ids), **options)
            else:
                function = ValueFunction.prepare(
                    model, tokenizer, prompt, target=targets[i] if targets is not None else None,
                    players=players[i] if players is not None else None, n_players=n_players, exact_players=True,
                    **options)
            check_budget(function.n, budget)
        except (ValueError, TypeError) as err:
            raise type(err)(f"prompt {i}: {err}" if len(prompts) > 1 else str(err)) from None
        functions.append(function)
    return [_one(function, budget, max_order, seed, min_r2, strict, progress) for function in functions]


def _one(function: ValueFunction, budget: int, max_order: int, seed: int, min_r2: float, strict: bool,
         progress: bool) -> SparseInteractionResult:
    n = function.n
    held = held_out_count(budget)
    generator = torch.Generator().manual_seed(seed)
    # uniformly random training masks: on SmolLM2 (n = 64) the prefix-sharing forest cost held-out R^2 (sparse.py)
    train_masks = uniform_masks(n, budget - held, generator)
    held_masks = uniform_masks(n, held, torch.Generator().manual_seed(seed + 1_000_003))
    started = time.perf_counter()
    train_values = function(train_masks, progress=progress)
    train_stats = dict(function.stats.as_dict())
    held_values = function(held_masks, progress=progress)
    evaluated = time.perf_counter() - started
    started = time.perf_counter()
    recovery = recover(train_masks, train_values, held_masks, held_values, max_order=max_order, seed=seed)
    fitted = time.perf_counter() - started
    report(recovery, min_r2=min_r2, strict=strict)
    settings = {**function.settings, "method": "sparse", "budget": budget, "max_order": max_order, "seed": seed,
                "train_masks": recovery.train_masks, "held_out_masks": recovery.held_out_masks,
                "held_out_in_budget": True, "design": "uniform", "min_r2": min_r2,
                # r2_held_out is the fit on the training masks alone; the terms are refitted on every mask
                "final_fit_masks": recovery.train_masks + recovery.held_out_masks}
    stats = {"r2_train": recovery.r2_train, "rounds": recovery.iterations, "fourier_terms": recovery.fourier_terms,
             "converged": recovery.converged, "seconds_values": evaluated, "seconds_fit": fitted,
             "train_token_forwards": train_stats.get("token_forwards", 0),
             "train_naive_token_forwards": train_stats.get("naive_token_forwards", 0),
             **{f"total_{k}": v for k, v in function.stats.as_dict().items()}}
    return SparseInteractionResult(
        prompt=function.encoded.prompt, words=list(function.encoded.words), players=function.players,
        player_texts=function.player_texts, target_text=function.target_text, target_ids=function.target_ids,
        subsets=recovery.subsets, interactions=recovery.interactions, r2_held_out=recovery.r2_held_out,
        model_name=function.settings["model"], settings=settings, stats=stats)
