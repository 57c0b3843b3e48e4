"""`kdi interactions`: the interactions of a causal LM on a data set of prompts, one result file per prompt.

    kdi interactions --data prompts.jsonl --n 10 --out runs/demo          # SmolLM2-135M-Instruct by default
    kdi interactions --model path/to/hf_model --data prompts.txt --out runs/student --like runs/teacher
    torchrun --nproc_per_node 2 -m kdi_fast interactions --out runs/demo    # data parallel over prompts

A killed run restarts where it stopped when run again with the same --out (see kdi_fast.engine.runner).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..engine.settings import InteractionSettings
from ._common import add_common_arguments, quiet_transformers


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "interactions", help="interactions of a causal LM on a prompt data set (resumable, data parallel)",
        description="Compute v(x_T) on all 2^n masked inputs and the Harsanyi interactions I_S for every prompt "
                    "of a data set; write OUT/<id>.safetensors per prompt and OUT/summary.json. "
                    "Run it again with the same --out to resume. Under torchrun each rank takes a shard.")
    p.add_argument("--model", default="smollm2",
                   help="a local Hugging Face model directory, or 'smollm2' for SmolLM2-135M-Instruct (default)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    p.add_argument("--data", default="builtin",
                   help="prompt file: .jsonl with a \"prompt\" (optional \"target\", \"players\", \"id\") per "
                        "line, or plain text with one prompt per line; 'builtin' (default) = 40 packaged prompts")
    p.add_argument("--out", default=None,
                   help="output directory (default runs/interactions/<model name>)")
    p.add_argument("--players", default="auto",
                   help="players of prompts whose data does not name them: 'auto' (default), word indices "
                        "'0,2,5', or groups joined by '+': '0+1,3,5+6'")
    p.add_argument("--like", default=None, metavar="DIR",
                   help="reuse y*, players and masks of an earlier run (e.g. the teacher's) for every prompt")
    p.add_argument("--limit", type=int, default=None, help="only the first LIMIT prompts of the data")
    p.add_argument("--overwrite", action="store_true",
                   help="recompute every prompt even if OUT holds results (needed when the settings changed)")
    add_common_arguments(p)
    InteractionSettings.add_arguments(p)
    add_sparse_arguments(p)
    p.set_defaults(run=run)


def add_sparse_arguments(p) -> None:
    """--min-r2 for sparse recovery (--budget Q: 17 to 1,000 players; --budget and --max-order are settings)."""
    p.add_argument("--min-r2", type=float, default=0.5,
                   help="with --budget: warn when the held-out R^2 falls below this (default 0.5)")


def parse_players(spec: str | None) -> list | None:
    """'auto' -> None; '0,2,5' -> [0, 2, 5]; '0+1,3' -> [[0, 1], [3]] (groups of word indices)."""
    if spec is None or spec.strip().lower() in ("", "auto"):
        return None
    try:
        groups = [[int(i) for i in part.split("+")] for part in spec.split(",")]
    except ValueError:
        raise ValueError(f"--players {spec!r}: give word indices like '0,2,5', groups like '0+1,3,5+6', "
                         f"or 'auto'") from None
    if any(i < 0 for g in groups for i in g):
        raise ValueError(f"--players {spec!r}: word indices must be >= 0")
    return [g[0] for g in groups] if "+" not in spec else groups


def run(args: argparse.Namespace) -> int:
    import torch

    from .._lock import output_lock
    from ..data import load_prompts
    from .checks import check_model_dir, check_number, check_seed, parse_device
    from ..engine.runner import run_interactions
    from ..models import DEFAULT_MODEL, is_hub_id, load_model

    # Check everything cheap before loading a model.
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    settings = InteractionSettings.from_args(args)
    check_seed("--seed", settings.seed)
    check_number("--min-r2", args.min_r2, high=1)  # a held-out R^2 is at most 1
    players = parse_players(args.players)
    records = load_prompts(args.data)
    is_default = str(args.model).lower() in (DEFAULT_MODEL, "default")
    check_model_dir("--model", args.model)
    device = parse_device("--device", settings.device)
    hub_id = not is_default and is_hub_id(args.model)  # passed to from_pretrained as it is
    model_name = DEFAULT_MODEL if is_default else args.model if hub_id else str(Path(args.model).resolve())
    out_dir = Path(args.out) if args.out else Path("runs") / "interactions" / (
        DEFAULT_MODEL if is_default else args.model.replace("/", "--") if hub_id else Path(args.model).resolve().name)

    quiet_transformers(args.quiet)
    if settings.method == "sparse":
        return _run_sparse(args, settings, records, out_dir, device)
    dist = _init_distributed(settings.device)
    try:
        with output_lock(out_dir, command="kdi interactions"):  # before the model loads: fail fast
            torch.manual_seed(settings.seed)
            tokenizer = load_tokenizer_arg(args.tokenizer, args.model)
            model = load_model(args.model, dtype=getattr(torch, settings.dtype), device=device)
            summary = run_interactions(
                model, tokenizer, records, out_dir, settings=settings, model_name=model_name, players=players,
                like_dir=args.like, limit=args.limit, overwrite=args.overwrite, progress=not args.quiet)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    finally:
        if dist is not None and dist.is_initialized():
            dist.destroy_process_group()

    if rank == 0:
        print(f"{summary.prompts} prompts: {summary.computed} computed, {summary.skipped} already done "
              f"({summary.seconds:.1f} s); max matching error {summary.max_matching_error:.2e}")
        print(f"results: {summary.out_dir}/<id>.safetensors, one per prompt (kdi_fast.engine.InteractionResult.load)")
        print(f"summary: {summary.summary_path}")
    return 0


def _run_sparse(args, settings, records, out_dir: Path, device) -> int:
    import torch

    from .._lock import output_lock
    from ..engine.sparse import min_budget
    from ..models import load_model
    from .sparse_runs import print_sparse, run_sparse

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--budget (sparse recovery) runs in one process; launch it without torchrun")
    if settings.budget < min_budget(settings.n_players):
        raise ValueError(f"--budget {settings.budget} is too small for --n {settings.n_players}: sparse recovery "
                         f"needs at least {min_budget(settings.n_players)} masks (held-out ones included)")
    if args.limit is not None:
        records = records[:args.limit]
    with output_lock(out_dir, command="kdi interactions --budget"):
        torch.manual_seed(settings.seed)
        tokenizer = load_tokenizer_arg(args.tokenizer, args.model)
        model = load_model(args.model, dtype=getattr(torch, settings.dtype), device=device)
        results = run_sparse(model, tokenizer, records, out_dir, budget=settings.budget, n_players=settings.n_players,
                             like_dir=Path(args.like) if args.like else None, overwrite=args.overwrite,
                             progress=not args.quiet, min_r2=args.min_r2, **settings.sparse_options())
    print_sparse(results, records)
    print(f"results: {out_dir}/<id>.sparse.safetensors (kdi_fast.engine.SparseInteractionResult.load)")
    print(f"summary: {out_dir / 'summary.json'}")
    return 0


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model")


def load_tokenizer_arg(tokenizer_arg: str | None, model_arg: str, model_flag: str = "--model"):
    """The tokenizer of --tokenizer, else of the model directory; one-line errors naming the option to fix
    (transformers would otherwise build an empty tokenizer from a model config, or print a traceback)."""
    from ..models import DEFAULT_MODEL, is_hub_id, load_tokenizer

    source, flag = (tokenizer_arg, "--tokenizer") if tokenizer_arg else (model_arg, model_flag)
    path = Path(source)
    if str(source).lower() not in (DEFAULT_MODEL, "default") and not is_hub_id(source):
        if not path.is_dir():
            raise ValueError(f"{flag} {source!r} is not a directory; pass --tokenizer DIR (a directory saved with "
                             f"tokenizer.save_pretrained)")
        if not any((path / name).exists() for name in _TOKENIZER_FILES):
            hint = "pass --tokenizer DIR" if flag != "--tokenizer" else "give a directory saved with " \
                                                                        "tokenizer.save_pretrained"
            raise ValueError(f"{flag} {source}: no tokenizer files ({', '.join(_TOKENIZER_FILES[:3])}, ...); "
                             f"{hint}")
    try:
        tokenizer = load_tokenizer(source)
    except (OSError, ValueError, TypeError, KeyError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{flag} {source}: cannot load a tokenizer ({message}); pass --tokenizer DIR") from None
    if len(tokenizer) < 2:
        raise ValueError(f"{flag} {source}: the tokenizer is empty; pass --tokenizer DIR")
    return tokenizer


def _init_distributed(device_arg: str | None):
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): nccl on CUDA, gloo on CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return None  # the caller owns the process group
    use_cuda = torch.cuda.is_available() and (device_arg is None or device_arg.startswith("cuda"))
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist
