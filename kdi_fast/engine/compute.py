"""compute_interactions: from a model, a tokenizer and prompts to one InteractionResult per prompt.

Every prompt is checked first (words, players, given targets, context length, settings), so bad input fails
before any long computation; then each prompt gets its target (given, greedy, or the one of `like`), and the
scheduler evaluates all 2^n masked inputs.
"""

from __future__ import annotations

import hashlib
import time
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from .. import ops
from .masking import Masking, MaskedSequence, get_masking, input_embeddings
from .players import EncodedPrompt, encode_prompt, player_of_token, player_texts, resolve_players
from .memory import default_memory_budget
from .result import InteractionResult
from .scheduler import all_mask_logprobs
from .settings import LIKE_FIELDS, InteractionSettings
from .target import greedy_target, tokenize_target
from .value import values_from_logprobs

_FINGERPRINTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of everything that decides how text is tokenized (vocabulary, merges, normalizer, ...)."""
    try:
        return _FINGERPRINTS[tokenizer]
    except (KeyError, TypeError):
        pass
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    try:
        _FINGERPRINTS[tokenizer] = digest
    except TypeError:  # pragma: no cover - not weak-referenceable
        pass
    return digest


def model_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "name_or_path", "") or type(model).__name__)


def context_length(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@dataclass
class _Job:
    """One prompt, checked and ready to compute."""

    encoded: EncodedPrompt
    players: list[tuple[int, ...]]
    target_ids: list[int] | None  # None: the greedy continuation
    target_source: str  # "given", "greedy" or "like"


@dataclass
class _Options:
    """What every prompt of a call shares: the settings, and what they resolve to for this model."""

    settings: InteractionSettings
    masking: Masking
    baseline: object  # as masking.resolve() gives it: a vector [H], a token id or None
    budget: int
    recorded: dict  # recorded in every result

    def order_for(self, n: int) -> int | None:
        """max_order, or None when it keeps every subset of n players."""
        max_order = self.settings.max_order
        return None if max_order is None or max_order >= n else max_order


def settings_for_model(model: nn.Module, settings: InteractionSettings | None = None,
                       **changes) -> InteractionSettings:
    """The settings (with `changes`) as they apply to `model`: dtype is the model's (ValueError when the settings
    name another one)."""
    settings = InteractionSettings.create(settings, **changes)
    parameter = next(model.parameters(), None)
    if parameter is None:
        return settings
    dtype = str(parameter.dtype).removeprefix("torch.")
    if settings.dtype is not None and settings.dtype != dtype:
        raise ValueError(f"dtype={settings.dtype!r} but the model is {dtype}; load the model in {settings.dtype} "
                         f"(kdi_fast.models.load_model(..., dtype=)) or leave dtype out")
    return settings.replace(dtype=dtype) if settings.dtype != dtype else settings


def compute_interactions(
    model: nn.Module,
    tokenizer,
    prompts: list[str],
    *,
    targets: list[str] | None = None,
    players: list | None = None,
    settings: InteractionSettings | None = None,
    like: list[InteractionResult] | None = None,
    progress: bool = True,
    min_r2: float | None = None,
    strict: bool = False,
    **changes,
) -> list:
    """The interactions of `model` on each prompt: v(x_T) for all 2^n masked inputs and I_S = mobius(v).

    targets: the target text y* per prompt (None: the model's greedy continuation of the full prompt, up to
    max_target_tokens tokens). players: per prompt, a list of word indices or of groups of word indices (None, or
    a None entry: the automatic choice of n_players, see kdi_fast.engine.players).
    settings: an InteractionSettings (kdi_fast.engine.settings); any of its fields may also be given as a keyword
    (n_players=, max_target_tokens=, masking=, baseline=, chat_template=, memory_budget=, eps=, path=,
    max_batch_tokens=, max_order=, ...) and then replaces the one of `settings`. See InteractionSettings for
    each; masking / baseline: kdi_fast.engine.masking; path: "auto" | "prefix_tree" | "flat" (see scheduler);
    max_order: opt-in: evaluate only the masks of at most max_order players (the subsets kdi_fast.subsets(n, k));
    the interactions of those subsets are still exact (I_S needs v on the subsets of S only). Allows more than
    16 players (at most 65,536 masks). The result then holds the compact layout (result.masks).
    like: results of another model (e.g. the teacher) on the same prompts: their y*, players and masking are
    reused, so the values compare mask by mask; the tokenizers and the masking settings must be the same.
    method="sparse" with budget=Q (settings): recover the sparse Harsanyi terms of order <= max_order (default 3)
    of 17 to 1,000 players from Q masked inputs, held-out R^2 included; returns SparseInteractionResults (see
    kdi_fast.engine.sparse_compute): seed draws the masks, a held-out R^2 below min_r2 (default 0.5) or a solver
    that did not converge warns (strict=True: raises).
    """
    settings = settings_for_model(model, settings, **changes)
    if settings.method == "sparse":
        from .sparse_compute import compute_sparse_interactions

        return compute_sparse_interactions(
            model, tokenizer, prompts, budget=settings.budget, targets=targets, players=players,
            n_players=settings.n_players, progress=progress, like=like, strict=strict,
            **settings.sparse_options(), **({"min_r2": min_r2} if min_r2 is not None else {}))
    if min_r2 is not None or strict:
        raise ValueError("min_r2 and strict apply to method='sparse' only; pass method='sparse' and budget= with them")
    _check_arguments(prompts, targets, players, like)
    fingerprint = tokenizer_fingerprint(tokenizer)
    if like is not None:
        _check_like(like, prompts, fingerprint, settings)
    mode = get_masking(settings.masking)
    resolved = mode.resolve(model, tokenizer, settings.baseline)  # fails here, before any prompt, when it is bad
    jobs = [_prepare(model, tokenizer, i, prompts, targets, players, like, settings) for i in range(len(prompts))]

    parameter = next(model.parameters())
    budget = settings.memory_budget
    options = _Options(settings=settings, masking=mode, baseline=resolved,
                       budget=budget if budget is not None else default_memory_budget(parameter.device),
                       recorded={**settings.results_dict(), "tokenizer": fingerprint})

    from tqdm.auto import tqdm

    total = sum(ops.num_subsets(len(job.players), options.order_for(len(job.players))) for job in jobs)
    bar = tqdm(total=total, unit="mask", desc="interactions", disable=not progress, dynamic_ncols=True)
    was_training = model.training
    model.eval()  # no dropout: every mask sees the same function
    try:
        with torch.no_grad():
            results = []
            for i, job in enumerate(jobs):
                bar.set_postfix(prompt=f"{i + 1}/{len(jobs)}", refresh=False)
                results.append(_compute_one(model, tokenizer, job, options, bar.update))
    finally:
        model.train(was_training)
        bar.close()
    return results


def _check_arguments(prompts, targets, players, like) -> None:
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise TypeError("prompts must be a list of strings (wrap a single prompt in a list)")
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt")
    for name, value in (("targets", targets), ("players", players), ("like", like)):
        if value is not None and (isinstance(value, str) or len(value) != len(prompts)):
            raise ValueError(f"{name} must be a list with one entry per prompt ({len(prompts)}), got "
                             f"{value if isinstance(value, str) else str(len(value)) + ' entries'}")
    if like is not None and (targets is not None or players is not None):
        raise ValueError("like= fixes the targets and players (those of the given results); do not pass "
                         "targets or players with it")


def _prepare(model, tokenizer, i, prompts, targets, players, like, settings: InteractionSettings) -> _Job:
    """Check prompt i (words, players, target, context length) and say which prompt is wrong if it is."""
    try:
        encoded = encode_prompt(tokenizer, prompts[i], chat_template=settings.chat_template)
        if like is not None:
            if list(encoded.words) != list(like[i].words):
                raise ValueError("the prompt's words differ from those of the like= result")
            spec, target_ids, source = like[i].players, list(like[i].target_ids), "like"
        else:
            spec = players[i] if players is not None else None
            given = targets[i] if targets is not None else None
            target_ids = tokenize_target(tokenizer, given) if given is not None else None
            source = "given" if given is not None else "greedy"
        chosen = resolve_players(encoded, spec, settings.n_players,
                                 keep_last_token=get_masking(settings.masking).hides_keys,
                                 max_order=settings.max_order)
        limit = context_length(model)
        length = len(encoded.input_ids) + (len(target_ids) if target_ids is not None else
                                           settings.max_target_tokens) - 1
        if limit is not None and length > limit:
            raise ValueError(f"the prompt ({len(encoded.input_ids)} tokens) and its target together need {length} "
                             f"positions, more than the model's context of {limit}; shorten the prompt or the "
                             f"target (max_target_tokens)")
    except (ValueError, TypeError) as err:
        raise type(err)(f"prompt {i}: {err}" if len(prompts) > 1 else str(err)) from None
    return _Job(encoded, chosen, target_ids, source)


def _compute_one(model, tokenizer, job: _Job, options: _Options, advance) -> InteractionResult:
    started = time.perf_counter()
    device = next(model.parameters()).device
    encoded, n = job.encoded, len(job.players)
    max_order = options.order_for(n)
    target_ids = job.target_ids if job.target_ids is not None else \
        greedy_target(model, tokenizer, list(encoded.input_ids), options.settings.max_target_tokens)
    prompt_length = len(encoded.input_ids)
    owner = player_of_token(encoded, job.players) + [-1] * (len(target_ids) - 1)
    ids = torch.tensor(list(encoded.input_ids) + target_ids[:-1], dtype=torch.int64, device=device)
    embeds = input_embeddings(model)(ids).detach() if options.masking.needs_embeddings else None
    seq = MaskedSequence(input_ids=ids, owner=torch.tensor(owner, dtype=torch.int64, device=device), n=n,
                         masking=options.masking, baseline=options.baseline, embeds=embeds)
    prediction = list(range(prompt_length - 1, prompt_length - 1 + len(target_ids)))
    target = torch.tensor(target_ids, dtype=torch.int64, device=device)
    logprobs, stats = all_mask_logprobs(model, seq, target, prediction, budget=options.budget,
                                        path=options.settings.path, max_tokens=options.settings.max_batch_tokens,
                                        max_order=max_order, advance=advance)
    values = values_from_logprobs(logprobs, eps=options.settings.eps)
    return InteractionResult(
        prompt=encoded.prompt, words=list(encoded.words), players=job.players,
        player_texts=player_texts(encoded, job.players), target_text=tokenizer.decode(target_ids),
        target_ids=list(target_ids), values=values, interactions=ops.mobius(values, max_order=max_order),
        model_name=model_name(model), settings={**options.recorded, "target": job.target_source},
        player_tokens=[tuple(t for t, p in enumerate(owner) if p == i) for i in range(n)],
        input_ids=list(encoded.input_ids), max_order=max_order,
        stats={"path": stats.path, "forwards": stats.forwards, "token_forwards": stats.token_forwards,
               "naive_token_forwards": values.shape[0] * len(ids), "rows_per_forward": stats.rows_per_forward,
               "seconds": time.perf_counter() - started, "memory_budget": options.budget,
               **({"fallback": stats.fallback_reason} if stats.fallback_reason else {})})


def _check_like(like, prompts, fingerprint, settings: InteractionSettings) -> None:
    for i, (result, prompt) in enumerate(zip(like, prompts)):
        if not isinstance(result, InteractionResult):
            raise TypeError(f"like[{i}] must be an InteractionResult, got {type(result).__name__}")
        if result.prompt != prompt:
            raise ValueError(f"like[{i}] is about another prompt ({result.prompt!r}, here {prompt!r}); pass the "
                             f"results of the same prompts in the same order")
        theirs = result.settings.get("tokenizer")
        if theirs != fingerprint:
            raise ValueError(f"the tokenizer differs from the one of the like= results (fingerprint {theirs} vs "
                             f"{fingerprint}): a teacher and a student compared mask by mask must share the "
                             f"tokenizer, so that y* and the players are the same tokens")
        diffs = settings.differences_from_record(result.settings, LIKE_FIELDS)
        if diffs:
            listed = "; ".join(f"{k}={a!r} there, {b!r} here" for k, a, b in diffs)
            raise ValueError(f"like[{i}] was computed with other settings ({listed}); pass the same "
                             f"{', '.join(LIKE_FIELDS)} so that the masks and values are the same")
