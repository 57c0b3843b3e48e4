"""Prompts to explain: prompt files (JSONL or plain text), the built-in prompt set, and GSM8K-style problems.

A JSONL prompt file has one JSON object per line with the fields
  "prompt"  (str, required)   the input whose words are the players
  "target"  (str, optional)   y*; without it the model's greedy continuation is used
  "players" (list, optional)  word indices [0, 3, 5] or groups of word indices [[0, 1], [3], [5, 6]]
  "id"      (str, optional)   names the result files; default: the line number, e.g. "00007"
Blank lines are ignored. Any other file is plain text: one prompt per non-blank line, ids "00001", ...
The built-in set (`load_prompts(None)`) is 40 short English prompts written for this package (public domain).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = ["PromptRecord", "BUILTIN_PROMPTS", "load_prompts", "load_gsm_symbolic", "records_digest", "jsonl_objects"]

BUILTIN_PROMPTS = "builtin"  # the name that selects the packaged prompt set
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

Players = list[int] | list[list[int]]


@dataclass(frozen=True)
class PromptRecord:
    """One prompt to explain. players: word indices or groups of word indices (None: automatic choice)."""

    id: str
    prompt: str
    target: str | None = None
    players: Players | None = None

    def to_json(self) -> dict:
        return {"id": self.id, "prompt": self.prompt, "target": self.target, "players": self.players}


def load_prompts(path: str | Path | None = None) -> list[PromptRecord]:
    """Read a prompt file (.jsonl/.ndjson as JSON lines, anything else as one prompt per line).

    path None or "builtin" gives the built-in prompt set. Raises FileNotFoundError for a missing file and
    ValueError (with the line number) for bad JSON, a missing or empty "prompt", bad "players" or ids.
    """
    if path is None or str(path) == BUILTIN_PROMPTS:
        text = resources.files(__name__).joinpath("prompts.jsonl").read_text(encoding="utf-8")
        return _parse_jsonl(text, "the built-in prompts")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {str(path)!r} does not exist (give a .jsonl file with a \"prompt\" "
                                f"field per line, a text file with one prompt per line, or leave --data out "
                                f"for the built-in prompts)")
    text = path.read_text(encoding="utf-8")
    records = _parse_jsonl(text, str(path)) if path.suffix.lower() in _JSONL_SUFFIXES else _parse_text(text)
    if not records:
        raise ValueError(f"prompt file {str(path)!r} holds no prompts")
    return records


def records_digest(records: list[PromptRecord]) -> str:
    """A SHA-256 of the records' content (ids, prompts, targets, players): identifies a data set in a manifest."""
    blob = json.dumps([r.to_json() for r in records], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def load_gsm_symbolic(size: int, seed: int = 0) -> list[dict]:
    """GSM8K-style word problems generated offline by reasoning-gym: dicts {"id", "question", "answer"}.

    The same (size, seed) always gives the same problems. Needs the `reasoning-gym` package (extra "data").
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    try:
        import reasoning_gym
    except ImportError as err:  # pragma: no cover - the extra is installed in the dev set-up
        raise ImportError("load_gsm_symbolic needs reasoning-gym: pip install 'kdi_fast[data]'") from err
    dataset = reasoning_gym.create_dataset("gsm_symbolic", size=size, seed=seed)
    return [{"id": f"gsm-{seed}-{i:05d}", "question": item["question"], "answer": str(item["answer"])}
            for i, item in enumerate(dataset)]


def _parse_text(text: str) -> list[PromptRecord]:
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            records.append(PromptRecord(id=f"{lineno:05d}", prompt=line.rstrip("\r\n")))
    return records


def jsonl_objects(text: str, source: str, expected: str) -> Iterator[tuple[int, str, dict]]:
    """(line number, "SOURCE, line N", object) for each non-blank line of a JSONL text; a line that is not a JSON
    object raises a ValueError naming the line (expected: what an object should hold, for the message)."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}, line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
        except RecursionError:
            raise ValueError(f"{where}: JSON nested too deeply to read; give a flat object like "
                             f"{{\"prompt\": \"...\"}}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object with {expected}, got {type(obj).__name__}")
        yield lineno, where, obj


def _parse_jsonl(text: str, source: str) -> list[PromptRecord]:
    records: list[PromptRecord] = []
    seen: dict[str, int] = {}
    for lineno, where, obj in jsonl_objects(text, source, 'a "prompt"'):
        prompt = obj.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: missing or empty \"prompt\" (each line needs a non-empty string \"prompt\")")
        target = obj.get("target")
        if target is not None and (not isinstance(target, str) or not target.strip()):
            raise ValueError(f"{where}: \"target\" must be a non-empty string (leave it out to use the model's "
                             f"greedy continuation)")
        rid = obj.get("id", f"{lineno:05d}")
        if isinstance(rid, int) and not isinstance(rid, bool):
            rid = str(rid)
        if not isinstance(rid, str) or not _ID_PATTERN.fullmatch(rid):
            raise ValueError(f"{where}: id {rid!r} cannot name a file: use letters, digits, '.', '_' or '-' "
                             f"(at most 128, not starting with '.', '_' or '-')")
        if rid in seen:
            raise ValueError(f"{where}: id {rid!r} repeats the id of line {seen[rid]}; ids must be unique")
        seen[rid] = lineno
        records.append(PromptRecord(id=rid, prompt=prompt, target=target,
                                    players=_check_players(obj.get("players"), where)))
    return records


def _check_players(players, where: str) -> Players | None:
    """None, a list of word indices, or a list of groups (lists of word indices); indices are ints >= 0."""
    if players is None:
        return None
    is_index = lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 0  # noqa: E731
    if isinstance(players, list) and players:
        if all(is_index(p) for p in players):
            return list(players)
        if all(isinstance(g, list) and g and all(is_index(i) for i in g) for g in players):
            return [list(g) for g in players]
    raise ValueError(f"{where}: \"players\" must be a non-empty list of word indices (ints >= 0) like [0, 2, 5] "
                     f"or of groups of word indices like [[0, 1], [2], [4, 5]], got {players!r}")
