"""Dataset runs of compute_interactions: one result file per prompt, resumable, optionally data parallel.

Layout of an output directory:
  manifest.json        the latest run: model, settings, data digest, and the identity its results share
  <id>.safetensors     one InteractionResult per prompt (tensors + JSON metadata + checksum), written atomically
  summary.json         written at the end: every prompt's file, n, target, v(x_N), matching error, top interactions,
                       and the prompts that failed (a model giving NaN); strict JSON (no NaN)

Resume: every result carries its identity (kdi_fast.engine.identity: model name, dtype and weights digest,
tokenizer digest, every setting, the prompt record, the reference result under like_dir). A prompt whose stored
result loads, passes its checksum and has exactly the wanted identity is skipped, so a killed run restarts where
it stopped; nothing is lost (files appear whole or not at all) and nothing is computed twice. A damaged result is
computed again (with a warning). A result of another identity (other settings, model, weights, tokenizer or
prompt) is an error naming what differs, before anything is computed, unless overwrite=True (then every prompt
is computed again). Nothing else blocks a rerun: a run that failed on bad input can be rerun with the input fixed.

One run at a time: the run holds out_dir/.kdi.lock (kdi_fast._lock.output_lock); another run on the same
directory is refused with the holder's pid and host.

Data parallel: when torch.distributed is initialised (torchrun; gloo on CPU, nccl on GPU), rank r takes the
prompts r, r + world_size, ...; every rank writes its own files, rank 0 writes the manifest and the summary.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._io import write_json_atomic
from .._lock import output_lock
from ..data import PromptRecord, records_digest

if TYPE_CHECKING:
    from . import InteractionResult
    from .settings import InteractionSettings

__all__ = ["RunSummary", "run_interactions", "load_results", "result_path", "MANIFEST", "SUMMARY"]

MANIFEST = "manifest.json"
SUMMARY = "summary.json"
RESULT_SUFFIX = ".safetensors"
_TOP_K_IN_SUMMARY = 5


@dataclass
class RunSummary:
    """What a run did. computed + skipped = prompts; paths are absolute."""

    out_dir: Path
    summary_path: Path
    prompts: int
    computed: int
    skipped: int
    seconds: float
    max_matching_error: float


def result_path(out_dir: str | Path, record_id: str) -> Path:
    """The result file of one prompt: out_dir/<id>.safetensors (InteractionResult.save/load)."""
    return Path(out_dir) / f"{record_id}{RESULT_SUFFIX}"


def run_interactions(
    model,
    tokenizer,
    records: list[PromptRecord],
    out_dir: str | Path,
    *,
    settings: InteractionSettings | None = None,
    model_name: str | None = None,
    players: list | None = None,
    like_dir: str | Path | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **changes: Any,
) -> RunSummary:
    """Compute the interactions of every record and write out_dir/<id>.safetensors per prompt.

    settings: an InteractionSettings (fields may also be given as keywords, as for compute_interactions); the
    manifest records them, and a restart with other settings names each one that differs.
    players: the players of records that do not name their own (word indices or groups; None = automatic).
    like_dir: the output directory of an earlier run (e.g. the teacher's): each prompt then reuses that run's
    y*, players and masks (compute_interactions(like=...)). limit: only the first `limit` records.
    Returns a RunSummary; rank 0 also writes out_dir/summary.json. Under torch.distributed every rank must call it.
    """
    from . import compute_interactions  # late: the engine package may import this module
    from .compute import settings_for_model

    settings = settings_for_model(model, settings, **changes)

    if not records:
        raise ValueError("no prompts to run: the data set is empty")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    selected = records[:limit] if limit is not None else list(records)
    out_dir = Path(out_dir).resolve()
    dist, rank, world_size = _distributed()
    like_dir = Path(like_dir).resolve() if like_dir is not None else None

    with output_lock(out_dir, command="kdi interactions"):  # one run at a time in out_dir
        manifest = _manifest(model, model_name, tokenizer, records, like_dir,
                             {**settings.results_dict(), "players": players})
        if like_dir is not None:
            missing = [r.id for r in selected if not result_path(like_dir, r.id).exists()]
            if missing:
                raise ValueError(f"like_dir {like_dir}: no result for {len(missing)} prompt(s) "
                                 f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); run the "
                                 f"reference model on the same data first")
        identities = {r.id: _identity(manifest["identity"], r, like_dir) for r in selected}
        reusable = set() if overwrite else _reusable(out_dir, selected, identities)  # every rank fails alike
        if rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / SUMMARY).unlink(missing_ok=True)  # a summary exists only for a finished run
            for pattern in (f".*{RESULT_SUFFIX}.*.tmp", f".{MANIFEST}.*.tmp", f".{SUMMARY}.*.tmp"):
                for stale in out_dir.glob(pattern):  # temp files of a run killed while writing
                    stale.unlink(missing_ok=True)
            write_json_atomic(out_dir / MANIFEST, manifest)
        if dist is not None:
            dist.barrier()

        mine = selected[rank::world_size]
        started = time.perf_counter()
        computed: dict[str, dict] = {}  # id -> {"rank", "seconds"} for the prompts computed in this run
        failed: dict[str, str] = {}  # id -> why (the model's values are not finite)
        skipped = 0
        bar = _progress_bar(len(mine), rank, world_size, enabled=progress and rank == 0)
        try:
            for record in mine:
                path = result_path(out_dir, record.id)
                if record.id in reusable:
                    skipped += 1
                else:
                    t0 = time.perf_counter()
                    result = _compute_one(compute_interactions, model, tokenizer, record, players, like_dir,
                                          settings)
                    result.identity = identities[record.id]
                    problem = _nonfinite(result)
                    if problem:  # never stored: a rerun computes it again
                        failed[record.id] = f"prompt {record.id!r}: {problem}"
                        path.unlink(missing_ok=True)
                    else:
                        result.save(path)
                        computed[record.id] = {"rank": rank, "seconds": time.perf_counter() - t0}
                bar.set_postfix(computed=len(computed), skipped=skipped, refresh=False)
                bar.update(1)
        finally:
            bar.close()

        if dist is not None:  # rank 0 learns what every rank did, then writes the summary
            gathered: list = [None] * world_size
            dist.all_gather_object(gathered, (computed, skipped, failed))
        else:
            gathered = [(computed, skipped, failed)]
        all_computed = {k: v for c, _, _ in gathered for k, v in c.items()}
        all_failed = {k: v for _, _, f in gathered for k, v in f.items()}
        total_skipped = sum(k for _, k, _ in gathered)
        elapsed = time.perf_counter() - started
        summary_path = out_dir / SUMMARY
        max_err = float("nan")
        if rank == 0:
            entries = [_summary_entry(out_dir, r, all_computed.get(r.id)) for r in selected if r.id not in all_failed]
            max_err = max((e["matching_error"] for e in entries), default=float("nan"))
            write_json_atomic(summary_path, {
                "manifest": manifest, "prompts": len(selected), "computed": len(all_computed), "skipped": total_skipped,
                "world_size": world_size, "seconds": elapsed,
                "max_matching_error": max_err if entries else None, "results": entries,
                "failed": [{"id": r.id, "error": all_failed[r.id]} for r in selected if r.id in all_failed]},
                allow_nan=False)  # valid JSON only: a non-finite number here is a bug, not a value
        if dist is not None:
            dist.barrier()  # nobody reads the summary before it is whole
        if all_failed:
            first = next(all_failed[r.id] for r in selected if r.id in all_failed)
            raise ValueError(f"{len(all_failed)} of {len(selected)} prompts failed ({first}"
                             f"{'; ...' if len(all_failed) > 1 else ''}); the others are stored in {out_dir}, the "
                             f"failures are listed in {summary_path}")
        return RunSummary(out_dir=out_dir, summary_path=summary_path, prompts=len(selected),
                          computed=len(all_computed), skipped=total_skipped, seconds=elapsed,
                          max_matching_error=max_err)


def load_results(out_dir: str | Path) -> dict[str, "InteractionResult"]:
    """The results of a finished run, by prompt id, in the order of its summary.json."""
    from . import InteractionResult

    out_dir = Path(out_dir)
    summary_file = out_dir / SUMMARY
    if not summary_file.exists():
        raise FileNotFoundError(f"{summary_file} does not exist: the run in {out_dir} has not finished "
                                f"(run `kdi interactions` again with the same --out to complete it)")
    summary = json.loads(summary_file.read_text())
    return {e["id"]: InteractionResult.load(out_dir / e["file"]) for e in summary["results"]}


# ----------------------------------------------------------------------------------------------------------


def _distributed():
    """(torch.distributed or None, rank, world_size)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist, dist.get_rank(), dist.get_world_size()
    return None, 0, 1


def _model_name(model, model_name: str | None) -> str:
    if model_name:
        return str(model_name)
    config = getattr(model, "config", None)
    return str(getattr(config, "name_or_path", "") or type(model).__name__)


def _manifest(model, model_name, tokenizer, records, like_dir, settings) -> dict:
    """What this run is (written to OUT/manifest.json); its "identity" is the part every result shares."""
    from .._version import __version__
    from .identity import run_identity

    like = None
    if like_dir is not None:
        like_manifest = like_dir / MANIFEST
        if not like_manifest.exists():
            raise FileNotFoundError(f"like_dir {like_dir}: no {MANIFEST} there; point it at the output directory "
                                    f"of an earlier `kdi interactions` run")
        like = {"dir": str(like_dir), "model": json.loads(like_manifest.read_text()).get("model")}
    identity = run_identity(model, tokenizer, settings, _model_name(model, model_name))
    return {"kdi_fast": __version__, "model": identity["model"]["name"], "dtype": identity["model"]["dtype"],
            "settings": identity["settings"], "like": like,
            "data": {"digest": records_digest(records), "prompts": len(records)}, "identity": identity}


def _identity(run_identity: dict, record: PromptRecord, like_dir: Path | None) -> dict:
    """The identity of one prompt's result: the run's, the prompt record, and the reference result it reuses."""
    from . import InteractionResult
    from .identity import prompt_identity

    like = None
    if like_dir is not None:
        like = {"dir": str(like_dir),
                "result_sha256": InteractionResult.stored_checksum(result_path(like_dir, record.id))}
    return prompt_identity(run_identity, record, like)


def _reusable(out_dir: Path, records: list[PromptRecord], identities: dict[str, dict]) -> set[str]:
    """The ids whose stored result has exactly the wanted identity. A result of another identity is an error
    naming what differs; a damaged one (checksum, truncation) is computed again, with a warning."""
    import warnings

    from . import InteractionResult
    from .identity import check_reuse, differences

    reusable, conflicts = set(), {}
    for record in records:
        path = result_path(out_dir, record.id)
        if not path.exists():
            continue
        try:
            stored = InteractionResult.load(path)
        except Exception as err:  # unreadable or damaged: compute it again (the new file replaces it atomically)
            warnings.warn(f"{path} cannot be used ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
                          f"computing it again", stacklevel=3)
            continue
        diffs = differences(stored.identity or {}, identities[record.id])
        if diffs:
            conflicts[record.id] = diffs
        else:
            reusable.add(record.id)
    check_reuse(out_dir, conflicts)
    return reusable


def _nonfinite(result: "InteractionResult") -> str | None:
    """Why a result cannot be stored (its model gave NaN or inf values), or None."""
    import torch

    bad = ~torch.isfinite(result.values)
    if not bool(bad.any()):
        return None
    kind = "NaN" if bool(result.values.isnan().any()) else "inf"
    return (f"the model gives {kind} for {int(bad.sum())} of {bad.numel()} masked inputs, so no interaction can be "
            f"computed; check the model's weights (or use --dtype float32 if float16 overflows)")


def _compute_one(compute, model, tokenizer, record: PromptRecord, players, like_dir: Path | None,
                 settings: InteractionSettings):
    from . import InteractionResult

    like = None
    if like_dir is not None:
        like = [InteractionResult.load(result_path(like_dir, record.id))]
        if like[0].prompt != record.prompt:
            raise ValueError(f"prompt {record.id!r}: the like_dir result in {like_dir} is about another prompt "
                             f"({like[0].prompt!r}); use the same data for both runs")
    record_players = record.players if record.players is not None else players
    try:
        results = compute(model, tokenizer, [record.prompt],
                          targets=None if record.target is None or like else [record.target],
                          players=None if record_players is None or like else [record_players],
                          like=like, progress=False, settings=settings)
    except (ValueError, TypeError) as err:  # bad input: say which prompt
        raise type(err)(f"prompt {record.id!r}: {err}") from err
    if len(results) != 1:
        raise RuntimeError(f"compute_interactions returned {len(results)} results for one prompt")
    return results[0]


def _summary_entry(out_dir: Path, record: PromptRecord, computed: dict | None) -> dict:
    """computed: {"rank", "seconds"} when this run computed the prompt, None when an earlier run did."""
    from . import InteractionResult

    path = result_path(out_dir, record.id)
    if not path.exists():
        raise RuntimeError(f"{path} is missing after the run (was it deleted while the run was going?)")
    result = InteractionResult.load(path)
    values = result.values
    return {
        "id": record.id, "file": path.name, "prompt": result.prompt, "n": result.n,
        "players": list(result.player_texts), "target": result.target_text,
        "v_full": float(values[-1]), "v_empty": float(values[0]),
        "matching_error": float(result.matching_error()),
        "top": [{"players": list(texts), "I": float(value)} for texts, value in result.top(_TOP_K_IN_SUMMARY)],
        "computed_by_rank": computed["rank"] if computed else None,
        "seconds": computed["seconds"] if computed else None,
    }


def _progress_bar(total: int, rank: int, world_size: int, enabled: bool):
    from tqdm.auto import tqdm

    desc = "prompts" if world_size == 1 else f"prompts (rank 0 of {world_size})"
    return tqdm(total=total, desc=desc, unit="prompt", disable=not enabled, dynamic_ncols=True)

