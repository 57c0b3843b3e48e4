"""The teacher-vs-students comparison pipeline, shared by `kdi compare` and `kdi distill`'s evaluation.

    compare(teacher, {"student": model}, tokenizer, prompts, settings, gen_tokens=24) -> Pipeline
        results  label -> one InteractionResult per prompt (students on the teacher's y* and players: like=)
        outputs  label -> each model's greedy continuation of each prompt (generate_outputs), or None
        comparison  kdi_fast.metrics.comparison.Comparison: sparsity, alignment, orders, and agreement, BLEU and
                 ROUGE-L of each student's outputs against the teacher's (compare_models)
    write_report(pipeline.comparison, out) then renders it (kdi_fast.report).

generate_outputs is the one generation helper: prompts encoded as the engine encodes them (encode_prompt, the
chat template when the settings ask for it), greedy, stopped at the first end token (end_token_ids: the
generation config's, the model config's and the tokenizer's eos), decoded without special tokens and stripped.
With runs_dir, interactions go through the resumable runner (runs_dir/<label>/, as `kdi compare` keeps them) and
generations are cached in runs_dir/<label>/generations.json; without it everything stays in memory.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .engine.settings import InteractionSettings

__all__ = ["Pipeline", "compare", "generate_outputs"]


@torch.no_grad()
def generate_outputs(model: nn.Module, tokenizer, prompts: Sequence[str], *, max_new_tokens: int,
                     chat_template: bool = False, batch_size: int = 16, cache: str | Path | None = None,
                     progress: bool = False, label: str = "") -> list[str]:
    """Each prompt's greedy continuation (at most max_new_tokens tokens) as text; see the module docstring.

    Prompts run in left-padded batches of batch_size. A model that ends at once gives "". cache: a JSON file
    keeping the texts by prompt (with the prompt tokens, max_new_tokens and the weights' digest), reused on the
    next call.
    """
    from tqdm.auto import tqdm

    from ._extras import needs
    from ._io import write_json_atomic
    from .engine.identity import weights_sha256
    from .engine.players import encode_prompt
    from .engine.target import end_token_ids

    with needs("models"):
        from transformers import GenerationConfig

    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    stored = json.loads(Path(cache).read_text()) if cache is not None and Path(cache).exists() else {}
    encoded = [list(encode_prompt(tokenizer, p, chat_template=chat_template).input_ids) for p in prompts]
    weights = weights_sha256(model)  # a cached text is reused only for the same weights, input and length
    keys = [hashlib.sha256(json.dumps([ids, max_new_tokens, weights]).encode()).hexdigest()[:16] for ids in encoded]
    texts = {i: stored[p]["text"] for i, p in enumerate(prompts) if stored.get(p, {}).get("key") == keys[i]}
    todo = [i for i in range(len(prompts)) if i not in texts]
    ends = sorted(end_token_ids(model, tokenizer))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (ends[0] if ends else 0)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              eos_token_id=ends or None, pad_token_id=pad)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(todo), desc=f"generating {label}".strip(), unit="prompt", disable=not progress)
    try:
        for start in range(0, len(todo), batch_size):
            rows = todo[start:start + batch_size]
            width = max(len(encoded[i]) for i in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            attention = torch.zeros_like(ids)
            for r, i in enumerate(rows):  # left padding: every prompt ends where generation starts
                ids[r, width - len(encoded[i]):] = torch.tensor(encoded[i])
                attention[r, width - len(encoded[i]):] = 1
            new = model.generate(ids.to(device), attention_mask=attention.to(device),
                                 generation_config=config)[:, width:].tolist()
            for i, tokens in zip(rows, new):
                cut = next((j for j, token in enumerate(tokens) if token in ends), len(tokens))
                texts[i] = tokenizer.decode(tokens[:cut], skip_special_tokens=True).strip()
                stored[prompts[i]] = {"key": keys[i], "text": texts[i]}
            bar.update(len(rows))
    finally:
        model.train(was_training)
        bar.close()
    if cache is not None and todo:
        write_json_atomic(Path(cache), stored)
    return [texts[i] for i in range(len(prompts))]


@dataclass
class Pipeline:
    """What compare() produced: interaction results and outputs by model label, and the comparison."""

    results: dict[str, list] = field(default_factory=dict)
    outputs: dict[str, list[str]] | None = None
    comparison: object = None
    computed: dict[str, tuple[int, int]] = field(default_factory=dict)  # label -> (computed, resumed) prompts
    seconds: dict[str, float] = field(default_factory=dict)  # label -> seconds (interactions and outputs)


def compare(teacher: nn.Module, students: Mapping[str, nn.Module | Callable[[], nn.Module]], tokenizer,
            prompts: Sequence[str], settings: InteractionSettings | None = None, *, gen_tokens: int = 24,
            extractor: Callable[[str], Hashable | None] | None = None, prompt_ids: Sequence[str] | None = None,
            targets: Sequence[str | None] | None = None, players: Sequence | None = None,
            runs_dir: str | Path | None = None, teacher_name: str = "teacher", overwrite: bool = False,
            progress: bool = False, on_model: Callable[[str, nn.Module], None] | None = None,
            model_names: Mapping[str, str] | None = None, **metrics) -> Pipeline:
    """Interactions of the teacher, then of each student on the teacher's y* and players; each model's outputs
    (gen_tokens > 0); the comparison (compare_models; `metrics`: its ks, k_main, max_simple_order,
    salient_threshold). students: label -> model, or a function building it (called when its turn comes, so
    only one student is in memory). targets / players: per prompt, as compute_interactions takes them.
    on_model(label, model): called with each model once it is loaded (e.g. to describe it). model_names: label
    -> the name recorded in the runner's manifests (default the label)."""
    from .metrics import last_number
    from .metrics.comparison import compare_models

    settings = settings or InteractionSettings()
    prompts = list(prompts)
    if not prompts:
        raise ValueError("the comparison needs at least one prompt")
    ids = [str(i) for i in prompt_ids] if prompt_ids is not None else [f"{i:03d}" for i in range(len(prompts))]
    out = Pipeline(outputs={} if gen_tokens else None)
    reference = None
    for label, model in [(teacher_name, teacher), *students.items()]:
        started = time.perf_counter()
        model = model() if callable(model) and not isinstance(model, nn.Module) else model
        if on_model is not None:
            on_model(label, model)
        folder = Path(runs_dir) / label if runs_dir is not None else None
        like_folder = Path(runs_dir) / teacher_name if runs_dir is not None and reference is not None else None
        name = (model_names or {}).get(label, label)
        out.results[label], out.computed[label] = _interactions(
            model, tokenizer, prompts, ids, settings, targets, players, reference, folder, like_folder, overwrite,
            progress, name)
        reference = reference or out.results[label]
        if gen_tokens:
            out.outputs[label] = generate_outputs(
                model, tokenizer, prompts, max_new_tokens=gen_tokens, chat_template=settings.chat_template,
                cache=folder / "generations.json" if folder is not None else None, progress=progress, label=label)
        del model  # a student built here is freed before the next one
        out.seconds[label] = time.perf_counter() - started
    out.comparison = compare_models(
        out.results[teacher_name], {label: out.results[label] for label in students}, teacher_name=teacher_name,
        prompt_ids=ids, outputs=out.outputs, extractor=extractor or last_number, **metrics)
    return out


def _interactions(model, tokenizer, prompts, ids, settings, targets, players, reference, folder, like_folder,
                  overwrite, progress, name) -> tuple[list, tuple[int, int]]:
    """One model's results, in memory or through the resumable runner (folder); (results, (computed, resumed))."""
    from .engine import compute_interactions

    if folder is None:
        results = compute_interactions(model, tokenizer, prompts, settings=settings, like=reference,
                                       targets=None if reference else targets,
                                       players=None if reference else players, progress=progress)
        return list(results), (len(prompts), 0)
    from .data import PromptRecord
    from .engine.runner import load_results, run_interactions

    records = [PromptRecord(i, p, target=targets[k] if targets else None, players=players[k] if players else None)
               for k, (i, p) in enumerate(zip(ids, prompts))]
    done = run_interactions(model, tokenizer, records, folder, settings=settings, model_name=name,
                            like_dir=like_folder, overwrite=overwrite, progress=progress)
    by_id = load_results(folder)
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(f"{folder}: results are missing for {missing[:5]}; run again with overwrite")
    return [by_id[i] for i in ids], (done.computed, done.skipped)
