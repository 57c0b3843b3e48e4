"""`kdi distill`: distil a teacher into a student with one of the KD methods, optionally with CIP, then evaluate.

    kdi distill --teacher smollm2 --student layers:10 --method kd --data instruct:200 --steps 100 --out runs/kd

Run it again with the same options and --out to resume a killed run from its last checkpoint; other inputs in
the same --out are refused (or replaced with --overwrite). Several processes or machines:
    torchrun --nproc_per_node 8 -m kdi_fast distill ...
    accelerate launch --config_file examples/accelerate/fsdp.yaml -m kdi_fast distill ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    from ..distill.methods import METHODS

    p = subparsers.add_parser(
        "distill", help="distil a teacher into a student (sft, kd, rkl, gkd, seqkd, imitkd, distillm, abkd)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="smollm2", help="teacher model directory, or smollm2 (default)")
    p.add_argument("--student", default="layers:10",
                   help="'layers:0,5,10,...' or 'layers:K' (teacher layers), 'fresh:num_hidden_layers=4,"
                        "hidden_size=256,...' (fresh weights), or a model directory (default layers:10)")
    p.add_argument("--method", default="kd", choices=sorted(METHODS))
    p.add_argument("--cip", type=float, default=0.0, metavar="WEIGHT", help="weight of the CIP loss (0: off)")
    p.add_argument("--cip-m", type=int, default=3, help="CIP: number of random word groups (default 3)")
    p.add_argument("--data", default="instruct:200",
                   help="training data: a JSONL file of prompt/response pairs, 'instruct:N' or 'gsm_symbolic:N'")
    p.add_argument("--eval-data", default=None,
                   help="held-out data (same forms); default: for a built-in set, the same generator with another "
                        "seed; for a file, its last --eval-size examples (then not trained on)")
    p.add_argument("--eval-size", type=int, default=32, help="held-out examples (default 32)")
    p.add_argument("--out", required=True, help="output directory (resumes the run found there)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--teacher-noise", type=float, default=0.0, metavar="SIGMA",
                   help="std of Gaussian noise added to the teacher's logits")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: from --epochs)")
    p.add_argument("--epochs", type=float, default=None, help="passes over the data (default 1)")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256, help="prompt + response tokens (default 256)")
    p.add_argument("--max-new-tokens", type=int, default=64,
                   help="length of generated responses: on-policy samples, SeqKD, evaluation (default 64)")
    p.add_argument("--grad-accum", type=int, default=1, metavar="K",
                   help="micro-batches per optimizer step (loss normalised by the step's tokens; default 1)")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (device permitting)")
    precision.add_argument("--fp16", action="store_true", help="float16 mixed precision (device permitting)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in the backward")
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--report-to", default="none",
                   help="trackers transformers supports, comma-separated (tensorboard, wandb, ...; default none)")
    p.add_argument("--eval-every", type=int, default=0, metavar="K",
                   help="held-out loss every K steps during training (0: only at the end; default 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=25, metavar="K")
    p.add_argument("--save-total-limit", type=int, default=1, help="checkpoints kept during the run (default 1)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep OUT/checkpoints after the run")
    p.add_argument("--overwrite", action="store_true", help="replace a run of other inputs found in --out")
    p.add_argument("--seqkd-cache", default=None, help="file of the teacher's cached outputs (default OUT/...)")
    p.add_argument("--interaction-prompts", type=int, default=8,
                   help="held-out prompts whose interactions are compared (0: skip; default 8)")
    p.add_argument("--n-players", "--n", dest="n_players", type=int, default=8,
                   help="players per prompt in the evaluation (default 8)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default cuda when available)")
    p.add_argument("--quiet", "--no-progress", dest="no_progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def _data(args) -> tuple[list, list]:
    from ..distill.datasets import load_examples, parse_builtin

    train = load_examples(args.data, seed=args.seed)
    if args.eval_data is not None:
        held_out = load_examples(args.eval_data, seed=args.seed + 1)
    elif parse_builtin(args.data) is not None:
        name = parse_builtin(args.data)[0]
        held_out = load_examples(f"{name}:{args.eval_size}", seed=args.seed + 1_000)
        prompts = {e.prompt for e in train}
        held_out = [e for e in held_out if e.prompt not in prompts]
    else:
        if len(train) <= args.eval_size:
            raise ValueError(f"{args.data} has {len(train)} examples: too few to hold out --eval-size "
                             f"{args.eval_size} (give --eval-data or a smaller --eval-size)")
        train, held_out = train[:-args.eval_size], train[-args.eval_size:]
    return train, held_out[:args.eval_size]


def run(args) -> int:
    from ..distill import DistillConfig, build_student, distill
    from ..models import load_model, load_tokenizer

    from .._lock import output_lock
    from ..distill.run import _process_group
    from .checks import check_model_dir, check_number, check_seed, parse_device

    if args.eval_size < 1:
        raise ValueError(f"--eval-size must be positive, got {args.eval_size}")
    check_number("--lr", args.lr, low=0, low_open=True)
    check_number("--temperature", args.temperature, low=0, low_open=True)
    for flag, value in (("--cip", args.cip), ("--teacher-noise", args.teacher_noise),
                        ("--weight-decay", args.weight_decay)):
        check_number(flag, value, low=0)
    check_seed("--seed", args.seed)
    device = parse_device("--device", args.device)
    check_model_dir("--teacher", args.teacher)
    config = DistillConfig(
        method=args.method, steps=args.steps, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        temperature=args.temperature, teacher_noise=args.teacher_noise, max_length=args.max_length,
        max_new_tokens=args.max_new_tokens, seed=args.seed, cip_weight=args.cip, cip_m=args.cip_m,
        checkpoint_every=args.checkpoint_every, grad_accum=args.grad_accum, warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay, precision="bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        gradient_checkpointing=args.gradient_checkpointing, report_to=args.report_to, eval_every=args.eval_every,
        save_total_limit=args.save_total_limit, keep_checkpoint=args.keep_checkpoints)
    out = Path(args.out)
    _process_group(str(device))
    with output_lock(out, command="kdi distill"):
        train, held_out = _data(args)
        teacher = load_model(args.teacher, device=device)
        tokenizer = load_tokenizer(args.teacher)
        try:
            student = build_student(teacher, args.student, seed=args.seed)
        except ValueError as error:  # name the flag, as kdi compare does
            raise ValueError(f"--student {args.student}: {error}") from None
        result = distill(teacher, student, tokenizer, train, out, config, validation_examples=held_out[:16],
                         seqkd_cache=args.seqkd_cache, progress=not args.no_progress, overwrite=args.overwrite)
        return _report(args, out, result, teacher, student, tokenizer, held_out)


def _report(args, out: Path, result, teacher, student, tokenizer, held_out) -> int:
    from accelerate import PartialState

    from ..distill.evaluate import EvalSettings, evaluate_run
    from ..models import load_model

    if not PartialState().is_main_process:  # the evaluation runs once, in the main process
        return 0
    loss = "" if result.first_loss is None else f", loss {result.first_loss:.4g} -> {result.last_loss:.4g}"
    print(f"distilled with {args.method}: {result.steps} steps in {result.seconds:.0f} s{loss}; student saved to "
          f"{out / 'student'}")
    if args.no_eval:
        return 0
    before = load_model(out / "student_before", device=next(student.parameters()).device)
    settings = EvalSettings(max_new_tokens=args.max_new_tokens, interaction_prompts=args.interaction_prompts,
                            n_players=args.n_players, progress=not args.no_progress)
    summary = evaluate_run(teacher, before, student.eval(), tokenizer, held_out, out, settings)
    print(json.dumps(summary["models"], indent=2))
    print(f"evaluation written to {out / 'eval'}")
    return 0
