"""`kdi compare`: a teacher and its students on the same prompts, players and targets, as a report.

    kdi compare --out runs/compare                              # the embedded default (SmolLM2 + a student)
    kdi compare --teacher smollm2 --student layers:24 path/to/student --data prompts.jsonl --out runs/cmp

Writes OUT/report.md (figures in OUT/figures/), OUT/summary.json and OUT/per_prompt.csv. The interactions of
each model are kept in OUT/runs/<label>/ (one file per prompt), so a killed run resumes where it stopped when
run again with the same --out; --overwrite recomputes everything.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..engine.settings import InteractionSettings
from ._common import add_common_arguments, quiet_transformers

DEFAULT_PROMPT_IDS = (
    "green-hand", "doctor-visit", "moon-orbits", "key-lock", "not-happy", "week-days", "clock-hours", "thank-you",
)
"""The built-in prompts of the default run: eight prompts of at least eight words (n = 8 players each) with a
one- or two-token target, so that the 2^8 masked forwards stay short and the run takes minutes on a CPU."""

DEFAULT_STUDENT = "layers:26"
"""The default student: 26 of the teacher's 30 layers, evenly spaced, first and last kept (no training)."""

DEFAULT_KS = "0.01,0.02,0.05,0.1,0.2,0.3,0.5"
_ANSWERS = ("number", "word", "number-or-word")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="compare a teacher's interactions with its students' and write a report",
        description="Run the interaction engine on a teacher and each student with the same targets y*, players "
                    "and masks, then write OUT/report.md (with PNG figures), OUT/summary.json and OUT/per_prompt.csv: "
                    "sparsity (Gini, entropy), alignment (Overlap@k), orders, simple vs complex interactions, and "
                    "output agreement, BLEU and ROUGE-L. With only --out it runs the embedded default: "
                    "SmolLM2-135M-Instruct as the teacher, a student made of a subset of its layers, and eight "
                    "built-in prompts.")
    p.add_argument("--out", required=True, help="output directory (created; a second run resumes it)")
    p.add_argument("--teacher", default="smollm2",
                   help="a local Hugging Face model directory, or 'smollm2' for SmolLM2-135M-Instruct (default)")
    p.add_argument("--student", nargs="+", default=None, metavar="S",
                   help="students: model directories, 'smollm2', or 'layers:K' / 'layers:0,3,7' for a student "
                        f"keeping K (or the listed) layers of the teacher (default {DEFAULT_STUDENT})")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory shared by all models (default: the teacher's)")
    p.add_argument("--data", default=None,
                   help="prompt file (.jsonl with \"prompt\" and optional \"target\", \"players\", \"id\"; or one "
                        "prompt per line), 'builtin' for all 40 built-in prompts; default: 8 built-in prompts")
    p.add_argument("--limit", type=int, default=None, help="only the first LIMIT prompts")
    p.add_argument("--gen-tokens", type=int, default=24,
                   help="tokens each model generates for agreement, BLEU and ROUGE-L (default 24; 0 skips them)")
    p.add_argument("--answer", choices=_ANSWERS, default=None,
                   help="final-answer extractor for agreement: number (the last number: math answers), word (the "
                        "first word: short completions) or number-or-word (the last number if there is one, else "
                        "the first word). Default: word for the built-in prompts (short completions), else number")
    p.add_argument("--ks", default=DEFAULT_KS,
                   help=f"the Overlap@k ratios, comma-separated (default {DEFAULT_KS})")
    p.add_argument("--k", type=float, default=0.1,
                   help="k of the simple/complex overlaps and the correlations (default 0.1)")
    p.add_argument("--max-simple-order", type=int, default=None,
                   help="largest order counted as simple (default n // 2: complex = more than half the players)")
    p.add_argument("--salient", type=float, default=0.05,
                   help="salient threshold on |I_S| / max |I_S| (default 0.05)")
    p.add_argument("--overwrite", action="store_true", help="recompute every model even if OUT holds its results")
    add_common_arguments(p)
    InteractionSettings.add_arguments(p, defaults={"n_players": 8})
    from .interactions import add_sparse_arguments

    add_sparse_arguments(p)
    p.add_argument("--top-k", type=int, default=50,
                   help="with --budget: K of Overlap@K and Gini@K over the recovered coefficients (default 50)")
    p.set_defaults(run=run)


def parse_ks(text: str) -> list[float]:
    """'0.05,0.1' -> [0.05, 0.1]; every k must lie in (0, 1]."""
    try:
        ks = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--ks {text!r}: give ratios in (0, 1] separated by commas, e.g. 0.05,0.1,0.2") from None
    if not ks or any(not 0 < k <= 1 for k in ks):
        raise ValueError(f"--ks {text!r}: every k must lie in (0, 1], e.g. 0.05,0.1,0.2")
    return sorted(set(ks))


def parse_layers(spec: str) -> int | list[int] | None:
    """'layers:12' -> 12, 'layers:0,5,9' -> [0, 5, 9]; any other recipe -> None (kdi_fast.models.parse_student)."""
    from ..models import parse_student

    kind, value = parse_student(spec)
    return value if kind == "layers" else None


def student_labels(specs: list[str]) -> list[str]:
    """Short, distinct labels for the students: 'student-26L' for layers:26, the directory name for a path."""
    from ..models import parse_student

    labels = []
    for spec in specs:
        kind, value = parse_student(spec)
        if kind == "layers":
            label = f"student-{value if isinstance(value, int) else len(value)}L"
        elif kind == "fresh":
            label = "student-fresh"
        else:
            label = Path(spec).name or spec
        base, i = label, 2
        while label in labels or label == "teacher":
            label, i = f"{base}-{i}", i + 1
        labels.append(label)
    return labels


def _extractor(name: str):
    from ..metrics import first_word, last_number, number_or_word

    return {"number-or-word": number_or_word, "number": last_number, "word": first_word}[name]


def _records(data: str | None, limit: int | None):
    from ..data import load_prompts

    if data is None:
        by_id = {r.id: r for r in load_prompts(None)}
        missing = [i for i in DEFAULT_PROMPT_IDS if i not in by_id]
        if missing:  # pragma: no cover - guards the pairing of this list with kdi_fast/data/prompts.jsonl
            raise RuntimeError(f"the built-in prompt set lacks the default prompts {missing}")
        records = [by_id[i] for i in DEFAULT_PROMPT_IDS]
    else:
        records = load_prompts(data)
    return records[:limit] if limit is not None else records


def _describe(model) -> str:
    params = sum(p.numel() for p in model.parameters())
    layers = getattr(model.config, "num_hidden_layers", "?")
    return f"{layers} layers, {params / 1e6:.1f}M parameters"


def run(args: argparse.Namespace) -> int:
    from .._lock import output_lock

    with output_lock(args.out, command="kdi compare"):  # one run at a time in --out
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    import torch

    from .. import pipeline
    from ..models import load_model
    from ..report import write_report
    from .checks import parse_device
    from .interactions import load_tokenizer_arg

    started = time.perf_counter()
    settings, ks, specs, labels, records, extractor = _checked(args)  # everything cheap, before any model
    quiet_transformers(args.quiet)
    progress = not args.quiet
    device = parse_device("--device", settings.device)
    dtype = getattr(torch, settings.dtype)
    torch.manual_seed(settings.seed)
    tokenizer = load_tokenizer_arg(args.tokenizer, args.teacher, "--teacher")
    out = Path(args.out)
    _say(progress, f"kdi compare: {len(records)} prompts, teacher {args.teacher}, students {', '.join(specs)}")
    teacher = load_model(args.teacher, dtype=dtype, device=device)
    _check_layer_students(teacher, specs)
    described = {"teacher": _description(teacher, teacher, args.teacher)}
    if settings.method == "sparse":
        return _run_sparse_compare(args, settings, teacher, tokenizer, specs, labels, records, out / "runs", out,
                                   described, device, dtype, progress, started)

    def on_model(label: str, model) -> None:
        spec = args.teacher if label == "teacher" else specs[labels.index(label)]
        described[label] = _description(teacher, model, spec)
        _say(progress, f"[{label}] interactions of {described[label]}" +
             (", with the teacher's y*, players and masks" if label != "teacher" else ""))

    done = pipeline.compare(
        teacher, {label: _student_builder(teacher, spec, dtype, device, settings.seed)
                  for spec, label in zip(specs, labels)},
        tokenizer, [r.prompt for r in records], settings, gen_tokens=args.gen_tokens, extractor=extractor,
        prompt_ids=[r.id for r in records], targets=[r.target for r in records],
        players=[r.players for r in records], runs_dir=out / "runs", overwrite=args.overwrite, progress=progress,
        on_model=on_model, model_names={"teacher": f"teacher:{args.teacher}",
                                        **{label: f"student:{spec}" for spec, label in zip(specs, labels)}},
        ks=ks, k_main=args.k, max_simple_order=args.max_simple_order, salient_threshold=args.salient)
    _say(progress, "[report] metrics, figures and report")
    timings = {**done.seconds, "total": time.perf_counter() - started}
    models = done.comparison.summary["models"]
    files = write_report(done.comparison, out, run_info=_run_info(args, settings, records, described, device,
                                                                  timings, done.computed), extra_summary={
        "command": {k: v for k, v in vars(args).items() if k != "run" and not k.startswith("setting_")},
        "interaction_settings": settings.to_dict(),
        "models": {**models, **{label: {**models[label], "description": text} for label, text in described.items()}},
        "timings_s": timings,
    })
    print(f"report:  {files.report}")
    print(f"summary: {files.summary}")
    print(f"table:   {files.csv}")
    print(f"figures: {files.report.parent / 'figures'}")
    return 0


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _checked(args: argparse.Namespace):
    """(settings, ks, student specs, their labels, records, answer extractor), every argument checked."""
    from ..data import BUILTIN_PROMPTS
    from ..models import parse_student
    from .checks import check_model_dir, check_number, check_seed

    settings = InteractionSettings.from_args(args)
    for name, value, low in (("--gen-tokens", args.gen_tokens, 0), ("--limit", args.limit, 1)):
        if value is not None and value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    ks = parse_ks(args.ks)
    check_number("--k", args.k, low=0, high=1, low_open=True)
    check_number("--salient", args.salient, low=0, high=1, high_open=True)  # a fraction of the largest |I_S|
    if args.max_simple_order is not None and args.max_simple_order < 0:
        raise ValueError(f"--max-simple-order must be >= 0, got {args.max_simple_order}")
    check_seed("--seed", settings.seed)
    specs = list(args.student) if args.student else [DEFAULT_STUDENT]
    check_model_dir("--teacher", args.teacher)
    for spec in specs:
        if parse_student(spec)[0] == "model":
            check_model_dir("--student", spec)
    records = _records(args.data, args.limit)
    if not records:
        raise ValueError("no prompts to compare")
    if settings.method == "sparse":
        from ..engine.sparse import min_budget

        if settings.budget < min_budget(settings.n_players):
            raise ValueError(f"--budget {settings.budget} is too small for --n {settings.n_players}: sparse recovery "
                             f"needs at least {min_budget(settings.n_players)} masks (held-out ones included)")
        if args.top_k < 1:
            raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    builtin = args.data is None or args.data == BUILTIN_PROMPTS
    extractor = _extractor(args.answer or ("word" if builtin else "number"))
    return settings, ks, specs, student_labels(specs), records, extractor


def _check_layer_students(teacher, specs: list[str]) -> None:
    """A layers:K student the teacher cannot give is refused before any computation."""
    from ..models import keep_layer_indices

    total = teacher.config.num_hidden_layers
    for spec in specs:
        layers = parse_layers(spec)
        if layers is not None:
            try:
                keep_layer_indices(total, layers)
            except ValueError:
                raise ValueError(f"--student {spec}: the teacher has {total} layers; give layers:K with "
                                 f"1 <= K <= {total}, or increasing indices below {total}") from None


def _student_builder(teacher, spec: str, dtype, device, seed: int):
    """A function that builds the student of `spec` when its turn comes (one student in memory at a time)."""
    from ..models import fresh_student, load_model, parse_student, student_from_teacher

    kind, value = parse_student(spec)
    if kind == "layers":
        return lambda: student_from_teacher(teacher, keep_layers=value)
    if kind == "fresh":
        return lambda: fresh_student(teacher, seed=seed, **value)
    return lambda: load_model(spec, dtype=dtype, device=device)


def _description(teacher, model, spec: str) -> str:
    """One line about a model for the report: a derived student says which of the teacher's layers it keeps."""
    from ..models import parse_student

    kind, value = parse_student(spec) if model is not teacher else ("model", spec)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    if kind == "layers":
        kept = value if isinstance(value, int) else len(value)
        return (f"{spec}: {kept} of the teacher's {teacher.config.num_hidden_layers} layers, not trained "
                f"({params:.1f}M parameters)")
    if kind == "fresh":
        return f"{spec}: the teacher's architecture, fresh weights, not trained ({_describe(model)})"
    return f"{spec} ({_describe(model)})"


def _run_info(args, settings, records, described, device, timings, computed) -> dict:
    """The report's table of how the run was made."""
    import torch

    return {
        **described,
        "data": args.data or f"{len(records)} built-in prompts ({', '.join(r.id for r in records)})",
        "targets y*": (f"the prompt's target, else the teacher's greedy continuation "
                       f"(<= {settings.max_target_tokens} tokens)"),
        "masking": f"{settings.masking}, baseline {settings.baseline}" +
                   (", chat template" if settings.chat_template else ""),
        "outputs for agreement/BLEU/ROUGE-L": (f"each model's greedy continuation, <= {args.gen_tokens} tokens"
                                               if args.gen_tokens else "not generated (--gen-tokens 0)"),
        "device": f"{device} ({torch.get_num_threads()} threads), {settings.dtype}",
        "time": ", ".join(f"{k} {v:.0f} s" + (f" ({computed[k][0]} prompts computed, {computed[k][1]} resumed)"
                                               if k in computed else "") for k, v in timings.items()),
    }


def _run_sparse_compare(args, settings, teacher, tokenizer, specs, labels, records, runs, out, described, device,
                        dtype, progress, started) -> int:
    """--budget: teacher and students recovered sparsely on the same masks; report over the recovered terms."""
    import torch

    from .sparse_runs import run_sparse, sparse_report

    options = dict(budget=settings.budget, n_players=settings.n_players, overwrite=args.overwrite, progress=progress,
                   min_r2=args.min_r2, **settings.sparse_options())
    timings = {}
    t0 = time.perf_counter()
    teacher_results = run_sparse(teacher, tokenizer, records, runs / "teacher", **options)
    timings["teacher"] = time.perf_counter() - t0
    students = {}
    for spec, label in zip(specs, labels):
        t0 = time.perf_counter()
        model = _student_builder(teacher, spec, dtype, device, settings.seed)()
        described[label] = _description(teacher, model, spec)
        students[label] = run_sparse(model, tokenizer, records, runs / label, like_dir=runs / "teacher", **options)
        del model
        timings[label] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - started
    run_info = {**described, "prompts": len(records), "players": settings.n_players,
                "budget": f"{settings.budget} masks per model and prompt, "
                          f"{teacher_results[0].settings['held_out_masks']} of them uniformly random held-out masks "
                          f"for R^2",
                "masking": f"{settings.masking}, baseline {settings.baseline}" +
                           (", chat template" if settings.chat_template else ""),
                "device": f"{device} ({torch.get_num_threads()} threads), {settings.dtype}",
                "time": ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())}
    report = sparse_report(teacher_results, students, records, out, args.top_k, run_info)
    print(f"report:  {report}")
    print(f"summary: {out / 'summary.json'}")
    return 0
