"""InteractionSettings: every setting of an interaction computation, created once, validated once, then carried
unchanged from the CLI or the Python call into compute_interactions, every result and every manifest.

Adding a setting is a change of this module only: a field with its default and metadata (help, flags), a check
in _validate if it needs one. The CLI flags of every subcommand come from add_arguments() / from_args(); the
settings are stored by to_dict() and compared as a whole by differences().

Fields whose metadata says run=True (device, memory_budget, path, max_batch_tokens) decide how the numbers are
computed, not what they are: `like=` and resume ignore them (a run started on CPU may be resumed on a GPU).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .masking import BASELINES, MASKINGS, check_masking
from .memory import parse_memory
from .value import DEFAULT_EPS

DTYPES = ("float32", "bfloat16", "float16", "float64")
PATHS = ("auto", "prefix_tree", "flat")
METHODS = ("exact", "sparse")
LIKE_FIELDS = ("masking", "baseline", "chat_template", "max_order", "eps")
"""The settings a run with like= (a student on the teacher's y* and players) must share with the reference run."""


def _setting(default, help: str, *, flags: tuple[str, ...] = (), run: bool = False, cli: bool = True, **kw):
    """A field with its CLI metadata: flags (default --the-name), run=True for how-not-what settings."""
    return field(default=default, metadata=dict(help=help, flags=flags, run=run, cli=cli, **kw))


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "all", "") else int(text)


@dataclass(frozen=True)
class InteractionSettings:
    """How interactions are computed (see each field's help); frozen, validated in __post_init__."""

    n_players: int = _setting(10, "players per prompt when chosen automatically (default 10)",
                              flags=("--n-players", "--n"), type=int)
    max_target_tokens: int = _setting(16, "length L of the greedy target y* when a prompt has none (default 16)",
                                      flags=("--target-tokens", "--max-target-tokens"), type=int)
    masking: str = _setting("embedding", "how absent players are masked (default embedding: the baseline "
                                         "embedding replaces theirs)", choices=tuple(MASKINGS))
    baseline: str | int = _setting("pad", f"what replaces a masked word: {', '.join(BASELINES)} or a token id "
                                          f"(default pad; pad = the tokenizer's pad, else the config's, else eos)",
                                   type=str)
    chat_template: bool = _setting(False, "wrap each prompt as a user message of the tokenizer's chat template",
                                   action="store_true")
    max_order: int | None = _setting(None, "evaluate only the masks of at most K players (default: all)",
                                     type=_optional_int, metavar="K")
    eps: float = _setting(DEFAULT_EPS, f"the clamp of p in v = log(p / (1 - p)) (default {DEFAULT_EPS:g})",
                          type=float)
    dtype: str | None = _setting(None, f"model dtype: {', '.join(DTYPES)} (default float32; in Python: the "
                                       f"model's)", choices=DTYPES, cli_default="float32")
    seed: int = _setting(0, "the seed of the run: torch's, and the masks drawn by method=sparse (default 0)",
                         type=int)
    method: str = _setting("exact", "exact (all 2^n masks, or those of --max-order) or sparse (recover the terms "
                                    "of order <= --max-order from --budget masked inputs)", choices=METHODS)
    budget: int | None = _setting(None, "sparse recovery from Q masked inputs per prompt (held-out ones included) "
                                        "instead of all 2^n: for 17 to 1,000 players, e.g. --n 64 --budget 8000",
                                  type=int, metavar="Q")
    device: str | None = _setting(None, "cpu, cuda or cuda:N (default cuda when available)", run=True)
    memory_budget: int | None = _setting(None, "working memory for the masked batches, e.g. 2GB or 512MB "
                                               "(default: from the device)", run=True, type=str)
    path: str = _setting("auto", "auto (the prefix tree where the model allows it), prefix_tree or flat",
                         run=True, choices=PATHS)
    max_batch_tokens: int | None = _setting(None, "at most this many token positions per decoder forward "
                                                  "(default 2048 on CPU, 65536 on GPU)", run=True, type=int)

    def __post_init__(self) -> None:
        _validate(self)

    # ------------------------------------------------------------------------------------------------------

    @classmethod
    def create(cls, settings: "InteractionSettings | None" = None, **changes) -> "InteractionSettings":
        """settings (or the defaults) with `changes` applied; TypeError naming an unknown setting."""
        unknown = sorted(set(changes) - set(cls.field_names()))
        if unknown:
            raise TypeError(f"unknown setting(s) {', '.join(unknown)}; the settings are "
                            f"{', '.join(cls.field_names())}")
        base = settings if settings is not None else cls()
        if not isinstance(base, InteractionSettings):
            raise TypeError(f"settings must be an InteractionSettings, got {type(base).__name__}")
        return dataclasses.replace(base, **changes) if changes else base

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes) -> "InteractionSettings":
        return self.create(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Every setting by name (JSON-ready)."""
        return {name: getattr(self, name) for name in self.field_names()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "InteractionSettings":
        """The settings of to_dict() (missing ones take their defaults; unknown ones are an error)."""
        return cls.create(**dict(data))

    def differences(self, other: "InteractionSettings", *, include_run: bool = False) -> list[tuple[str, Any, Any]]:
        """[(field, self's value, other's value)] for every setting that differs; the run settings (device,
        memory budget, path, batch size: how, not what) only with include_run=True."""
        return [(f.name, getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self)
                if (include_run or not f.metadata["run"]) and getattr(self, f.name) != getattr(other, f.name)]

    def differences_from_record(self, record: dict[str, Any], names: tuple[str, ...] | None = None
                                ) -> list[tuple[str, Any, Any]]:
        """[(field, recorded value, this value)] for the settings `names` (default: all but the run settings)
        that differ from a recorded dict (a result's or a manifest's settings, maybe of an older version)."""
        names = names or tuple(self.results_dict())
        return [(name, record.get(name), getattr(self, name)) for name in names
                if _plain(record.get(name)) != _plain(getattr(self, name))]

    def sparse_options(self) -> dict[str, Any]:
        """The keywords of kdi_fast.engine.sparse_compute (all but n_players and budget, which it takes apart)."""
        names = ("max_target_tokens", "masking", "baseline", "chat_template", "memory_budget", "eps", "path",
                 "max_batch_tokens", "max_order", "seed")
        return {name: getattr(self, name) for name in names}

    def results_dict(self) -> dict[str, Any]:
        """The settings that decide the numbers (no run settings): what results and manifests record."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.metadata["run"]}

    # ------------------------------------------------------------------------------------------------------
    # The command line: the same flags in every subcommand

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, *, exclude: tuple[str, ...] = (),
                      defaults: dict[str, Any] | None = None) -> None:
        """Add one flag per setting (the field's flags, else --the-name) to `parser`; exclude: settings a
        subcommand fixes itself; defaults: other defaults for this subcommand."""
        defaults = defaults or {}
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if f.name in exclude or not meta["cli"]:
                continue
            flags = meta["flags"] or ("--" + f.name.replace("_", "-"),)
            default = defaults.get(f.name, meta.get("cli_default", f.default))
            kwargs = {k: meta[k] for k in ("type", "choices", "action", "metavar") if k in meta}
            parser.add_argument(*flags, dest=f"setting_{f.name}", default=default, help=meta["help"], **kwargs)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **changes) -> "InteractionSettings":
        """The settings of parsed arguments (from add_arguments), with `changes` on top."""
        given = {name: getattr(args, f"setting_{name}") for name in cls.field_names()
                 if hasattr(args, f"setting_{name}")}
        if given.get("budget") is not None and given.get("method") == "exact":
            given["method"] = "sparse"  # on the command line --budget Q alone asks for sparse recovery
        try:
            return cls.create(**{**given, **changes})
        except SettingError as err:
            meta = next(f.metadata for f in dataclasses.fields(cls) if f.name == err.name)
            flag = (meta["flags"] or ("--" + err.name.replace("_", "-"),))[0]
            raise ValueError(f"{flag} {given.get(err.name)!r}: {err}") from None


class SettingError(ValueError):
    """A bad setting: .name is the field (from_args names its flag)."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


def _plain(value):
    """JSON's view of a value (tuples are lists), for comparing with recorded settings."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _validate(s: InteractionSettings) -> None:
    """Check every setting once (SettingError naming it); normalise a few (memory sizes to bytes, a numeric
    baseline to an int, the baseline of a strategy that uses none to None)."""
    def positive_int(name: str, value, *, optional: bool = False) -> None:
        if value is None and optional:
            return
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SettingError(name, f"{name} must be a positive int{' or None' if optional else ''}, got {value!r}")

    def setting(name: str, value) -> None:
        object.__setattr__(s, name, value)

    positive_int("n_players", s.n_players)
    positive_int("max_target_tokens", s.max_target_tokens)
    positive_int("max_order", s.max_order, optional=True)
    positive_int("max_batch_tokens", s.max_batch_tokens, optional=True)
    if isinstance(s.baseline, str) and s.baseline.isdigit():
        setting("baseline", int(s.baseline))
    try:
        mode = check_masking(s.masking, s.baseline)
    except ValueError as err:
        raise SettingError("masking" if str(err).startswith("masking") else "baseline", str(err)) from None
    if not mode.uses_baseline:
        setting("baseline", None)  # not used: recorded as None, so that it never differs
    if not isinstance(s.chat_template, bool):
        raise SettingError("chat_template", f"chat_template must be True or False, got {s.chat_template!r}")
    if not isinstance(s.eps, (int, float)) or not 0.0 < s.eps < 0.5:
        raise SettingError("eps", f"eps must be in (0, 0.5), got {s.eps!r}")
    if s.dtype is not None and s.dtype not in DTYPES:
        raise SettingError("dtype", f"dtype must be one of {DTYPES} (or None: the model's), got {s.dtype!r}")
    if not isinstance(s.seed, int) or isinstance(s.seed, bool):
        raise SettingError("seed", f"seed must be an int, got {s.seed!r}")
    if s.device is not None:
        setting("device", str(s.device))
    try:
        setting("memory_budget", parse_memory(s.memory_budget))
    except (ValueError, TypeError) as err:
        raise SettingError("memory_budget", str(err)) from None
    if s.method not in METHODS:
        raise SettingError("method", f"method must be one of {METHODS}, got {s.method!r}")
    positive_int("budget", s.budget, optional=True)
    if s.budget is not None and s.method == "exact":
        raise SettingError("budget", "budget applies to method='sparse' only; pass method='sparse' with it")
    if s.method == "sparse" and s.budget is None:
        raise SettingError("budget", "method='sparse' needs budget=Q (masked inputs per prompt), e.g. --budget 8000")
    if s.path not in PATHS:
        raise SettingError("path", f"path must be one of {PATHS}, got {s.path!r}")
