"""The end-of-run evaluation: how well the student does the task, how closely it follows the teacher, and how
its interactions compare with the teacher's, before and after distillation.

For each model (teacher, student before, student after) on held-out examples:
  - greedy outputs (chat template, up to max_new_tokens), by kdi_fast.pipeline.generate_outputs: the same
    generation as `kdi compare`;
  - ROUGE-L (0..100) of the outputs against the reference responses;
  - for the students, against the teacher's outputs (kdi_fast.metrics.text.teacher_text_scores, the measures of
    `kdi compare`): agreement (top-1 match of final answers), fidelity (corpus BLEU) and rouge_l_teacher;
  - interactions (kdi_fast.engine.compute_interactions) on the first `interaction_prompts` prompts, the
    students with the teacher's y* and players (like=teacher): mean Gini over all, simple and complex
    interactions, and for the students Overlap@k with the teacher (overall, simple, complex),
    kdi_fast.metrics.interaction.
Writes eval/summary.json, eval/outputs.jsonl, eval/interactions/<model>/ and, when kdi_fast.report is there,
the interaction report of the three models under eval/report/.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from .._io import write_json_atomic, write_text_atomic
from .datasets import Example, answer_extractor

__all__ = ["EvalSettings", "ModelEval", "model_eval", "text_scores", "interaction_scores", "evaluate_run",
           "save_model_eval", "load_model_eval"]


@dataclass
class EvalSettings:
    max_new_tokens: int = 64
    batch_size: int = 16
    interaction_prompts: int = 8  # prompts whose interactions are computed (0: none)
    n_players: int = 8
    max_target_tokens: int = 8
    k: float = 0.1  # Overlap@k
    max_simple_order: int | None = None  # simple = order <= this (default n // 2, the metrics' default)
    progress: bool = True

    def interaction_settings(self):
        """The engine's settings of the evaluation (chat template on: the prompts are user turns)."""
        from ..engine.settings import InteractionSettings

        return InteractionSettings(n_players=self.n_players, max_target_tokens=self.max_target_tokens,
                                   chat_template=True)


@dataclass
class ModelEval:
    """One model's outputs on the evaluation examples and its interaction results."""

    name: str
    outputs: list[str]
    interactions: list = field(default_factory=list)  # list[InteractionResult]


def _outputs(model: nn.Module, tokenizer, examples: Sequence[Example], settings: EvalSettings) -> list[str]:
    from ..pipeline import generate_outputs

    return generate_outputs(model, tokenizer, [e.prompt for e in examples], max_new_tokens=settings.max_new_tokens,
                            chat_template=True, batch_size=settings.batch_size)


def model_eval(name: str, model: nn.Module, tokenizer, examples: Sequence[Example], settings: EvalSettings,
               like: ModelEval | None = None) -> ModelEval:
    """Outputs and interactions of one model (a student: like=the teacher's ModelEval, same y* and players)."""
    outputs = _outputs(model, tokenizer, examples, settings)
    results = []
    count = min(settings.interaction_prompts, len(examples))
    if count > 0:
        from ..engine import compute_interactions

        prompts = [e.prompt for e in examples[:count]]
        results = compute_interactions(model, tokenizer, prompts, settings=settings.interaction_settings(),
                                       progress=settings.progress,
                                       like=like.interactions if like is not None else None)
    return ModelEval(name, outputs, list(results))


def _mean(values) -> float:
    values = [float(v) for v in values if not math.isnan(float(v))]
    return sum(values) / len(values) if values else math.nan


def text_scores(references: Sequence[str], outputs: Sequence[str], teacher_outputs: Sequence[str] | None,
                extractor: Callable[[str], Hashable | None]) -> dict:
    """ROUGE-L against the references, answer accuracy and, given the teacher's outputs, agreement, fidelity and
    rouge_l_teacher (kdi_fast.metrics.text.teacher_text_scores: the numbers `kdi compare` reports)."""
    from ..metrics.text import answers_agree, rouge_l, teacher_text_scores

    scores = {"rouge_l": rouge_l(list(references), list(outputs)),
              "accuracy": _mean(answers_agree(list(references), list(outputs), extractor))}
    if teacher_outputs is not None:
        follow = teacher_text_scores(list(teacher_outputs), list(outputs), extractor)
        scores.update(agreement=follow["agreement"], fidelity=follow["fidelity_bleu"],
                      rouge_l_teacher=follow["rouge_l"])
    return scores


def interaction_scores(results: Sequence, teacher_results: Sequence | None, *, k: float = 0.1,
                       max_simple_order: int | None = None) -> dict:
    """Mean Gini (all, simple, complex) and, given the teacher's results, mean Overlap@k (all, simple, complex).

    Results may have different n; each prompt is scored on its own and the scores are averaged.
    """
    from ..metrics.interaction import prompt_scores

    if not results:
        return {}
    rows = [prompt_scores(result, teacher_results[i] if teacher_results is not None else None, k=k,
                          max_simple_order=max_simple_order) for i, result in enumerate(results)]
    return {key: _mean(row[key] for row in rows) for key in rows[0]}


def _write_json(path: Path, obj) -> None:
    from ..metrics.comparison import json_ready  # NaN/inf -> None: standard JSON

    write_json_atomic(path, json_ready(obj), default=str, allow_nan=False)


def _save_interactions(evaluation: ModelEval, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, result in enumerate(evaluation.interactions):
        result.save(folder / f"{i:05d}.safetensors")


def save_model_eval(evaluation: ModelEval, folder: str | Path) -> None:
    """Keep a ModelEval on disk (outputs.json + one safetensors file per interaction result)."""
    folder = Path(folder)
    _save_interactions(evaluation, folder)
    _write_json(folder / "outputs.json", {"name": evaluation.name, "outputs": evaluation.outputs,
                                          "interactions": len(evaluation.interactions)})


def load_model_eval(folder: str | Path) -> ModelEval | None:
    """The ModelEval kept by save_model_eval in `folder`, or None when it is not there (complete)."""
    from ..engine import InteractionResult

    folder = Path(folder)
    if not (folder / "outputs.json").is_file():
        return None
    stored = json.loads((folder / "outputs.json").read_text())
    files = sorted(folder.glob("*.safetensors"))
    if len(files) != stored["interactions"]:
        return None
    return ModelEval(stored["name"], stored["outputs"], [InteractionResult.load(f) for f in files])


def _write_report(evals: Sequence[ModelEval], out: Path, settings: EvalSettings, extractor) -> str:
    """The interaction report (kdi_fast.report) of the teacher and the students on the interaction prompts."""
    from ..metrics.comparison import compare_models
    from ..report import write_report

    teacher, *students = evals
    count = len(teacher.interactions)
    comparison = compare_models(teacher.interactions, {e.name: e.interactions for e in students},
                                teacher_name=teacher.name, k_main=settings.k,
                                max_simple_order=settings.max_simple_order,
                                outputs={e.name: e.outputs[:count] for e in evals}, extractor=extractor)
    files = write_report(comparison, out, title="Distillation: the teacher, the student before and after")
    return str(files.report)


def evaluate_run(teacher: nn.Module, student_before: nn.Module, student_after: nn.Module, tokenizer,
                 examples: Sequence[Example], out_dir: str | Path, settings: EvalSettings | None = None, *,
                 cache: dict[str, ModelEval] | None = None, names: Sequence[str] = ("teacher", "student_before",
                                                                                     "student_after")) -> dict:
    """Evaluate teacher, student before and student after on `examples`; write out_dir/eval/; return the summary.

    cache: ModelEvals of the teacher and of the student before, keyed by name, reused when present and filled
    in otherwise (an experiment with many runs from the same start computes them once).
    """
    settings = settings or EvalSettings()
    if not examples:
        raise ValueError("the evaluation needs at least one held-out example")
    out = Path(out_dir) / "eval"
    cache = {} if cache is None else cache
    extractor = answer_extractor(examples)
    evals = []
    for name, model in zip(names, (teacher, student_before, student_after)):
        if name in cache and name != names[2]:
            evals.append(cache[name])
            continue
        like = evals[0] if evals else None
        evaluation = model_eval(name, model, tokenizer, examples, settings, like=like)
        if name != names[2]:
            cache[name] = evaluation
        evals.append(evaluation)
    references = [e.response for e in examples]
    summary = {"examples": len(examples), "interaction_prompts": len(evals[0].interactions),
               "settings": settings.__dict__, "models": {}}
    for i, evaluation in enumerate(evals):
        teacher_eval = None if i == 0 else evals[0]
        scores = text_scores(references, evaluation.outputs, teacher_eval.outputs if teacher_eval else None,
                             extractor)
        scores.update(interaction_scores(evaluation.interactions, teacher_eval.interactions if teacher_eval else None,
                                         k=settings.k, max_simple_order=settings.max_simple_order))
        summary["models"][evaluation.name] = scores
        if evaluation.interactions:
            _save_interactions(evaluation, out / "interactions" / evaluation.name)
    lines = []
    for j, example in enumerate(examples):
        row = {"id": example.id, "prompt": example.prompt, "reference": example.response}
        row.update({e.name: e.outputs[j] for e in evals})
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    write_text_atomic(out / "outputs.jsonl", "".join(lines))
    if all(e.interactions for e in evals):
        summary["report"] = _write_report(evals, out / "report", settings, extractor)
    from ..metrics.comparison import json_ready

    summary = json_ready(summary)
    _write_json(out / "summary.json", summary)
    return summary
