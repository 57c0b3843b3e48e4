"""Training and evaluation data for distillation runs: (prompt, response) pairs, chat-formatted and tokenised.

Sources (the --data / --eval-data values of `kdi distill`):
  "gsm_symbolic[:N]"   N GSM8K-style word problems from reasoning-gym (kdi_fast.data.load_gsm_symbolic); the
                       response is the numeric answer. Answers are compared by their last number.
  "instruct[:N]"       N short instruction-following tasks generated offline by reasoning-gym (Apache-2.0), a
                       round-robin mix of INSTRUCT_TASKS: spell a word backward, restore a sentence's word
                       order, reverse a list of words, basic arithmetic, weekday of a date, a GCD, filter a list.
                       Each has one correct response, so ROUGE-L against it and answer agreement are meaningful.
                       Answers are compared as normalised text.
  a .jsonl file        one JSON object per line with a prompt ("prompt" | "instruction" | "question") and a
                       response ("response" | "output" | "answer"); an optional "input" is appended to an
                       instruction (Alpaca/Dolly style). The answer extractor is the last number if every
                       response is a number, else normalised text.
N defaults to 200; a seed selects different problems (held-out data uses another seed).

Prompts are formatted with the tokenizer's chat template (one user turn, generation prompt added); the
response tokens are followed by the end-of-turn token, and only those are trained on (labels -100 elsewhere).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..data import jsonl_objects

__all__ = ["Example", "INSTRUCT_TASKS", "load_examples", "parse_builtin", "answer_extractor", "normalised_text",
           "TokenizedExample", "tokenize_examples", "collate", "prompt_batch"]

IGNORE_INDEX = -100
DEFAULT_SIZE = 200
INSTRUCT_TASKS = ("spell_backward", "sentence_reordering", "word_sequence_reversal", "basic_arithmetic",
                  "calendar_arithmetic", "gcd", "number_filtering")
_PROMPT_KEYS = ("prompt", "instruction", "question")
_RESPONSE_KEYS = ("response", "output", "answer")


@dataclass(frozen=True)
class Example:
    """One training or evaluation example: the user's prompt (plain text) and the reference response."""

    id: str
    prompt: str
    response: str
    task: str = ""


def parse_builtin(spec: str) -> tuple[str, int] | None:
    """("gsm_symbolic" | "instruct", size) for a built-in data set name such as "instruct:50", else None."""
    match = re.fullmatch(r"(gsm_symbolic|instruct)(?::(\d+))?", spec.strip())
    if match is None:
        return None
    size = int(match.group(2)) if match.group(2) else DEFAULT_SIZE
    if size < 1:
        raise ValueError(f"data set {spec!r}: the size after ':' must be positive")
    return match.group(1), size


def load_examples(source: str | Path, *, seed: int = 0) -> list[Example]:
    """Examples from a built-in generator ("gsm_symbolic:N", "instruct:N") or a JSONL file (module docstring)."""
    parsed = parse_builtin(str(source))
    if parsed is not None:
        name, size = parsed
        return _gsm_symbolic(size, seed) if name == "gsm_symbolic" else _instruct(size, seed)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(
            f"data {str(source)!r} is neither a file nor a built-in set: give a JSONL file of "
            f"{{\"prompt\": ..., \"response\": ...}} lines, or 'gsm_symbolic:N' or 'instruct:N'")
    return _read_jsonl(path)


def _gsm_symbolic(size: int, seed: int) -> list[Example]:
    from ..data import load_gsm_symbolic

    return [Example(id=item["id"], prompt=item["question"], response=item["answer"], task="gsm_symbolic")
            for item in load_gsm_symbolic(size, seed)]


def _instruct(size: int, seed: int) -> list[Example]:
    try:
        import reasoning_gym
    except ImportError as err:  # pragma: no cover - the dev set-up installs it
        raise ImportError("the 'instruct' data set needs reasoning-gym: pip install 'kdi_fast[data]'") from err
    per_task = -(-size // len(INSTRUCT_TASKS))
    sets = {task: reasoning_gym.create_dataset(task, size=per_task, seed=seed + 7919 * i)
            for i, task in enumerate(INSTRUCT_TASKS)}
    examples = []
    for i in range(size):
        task = INSTRUCT_TASKS[i % len(INSTRUCT_TASKS)]
        item = sets[task][i // len(INSTRUCT_TASKS)]
        examples.append(Example(id=f"instruct-{seed}-{i:05d}", prompt=item["question"].strip(),
                                response=str(item["answer"]).strip(), task=task))
    return examples


def _read_jsonl(path: Path) -> list[Example]:
    examples = []
    for lineno, where, obj in jsonl_objects(path.read_text(encoding="utf-8"), str(path), "a prompt and a response"):
        prompt = next((obj[k] for k in _PROMPT_KEYS if k in obj), None)
        response = next((obj[k] for k in _RESPONSE_KEYS if k in obj), None)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: needs a non-empty string field {' or '.join(map(repr, _PROMPT_KEYS))}")
        if response is None or not str(response).strip():
            raise ValueError(f"{where}: needs a non-empty field {' or '.join(map(repr, _RESPONSE_KEYS))}")
        if isinstance(obj.get("input"), str) and obj["input"].strip():
            prompt = f"{prompt.strip()}\n\n{obj['input'].strip()}"
        examples.append(Example(id=str(obj.get("id", f"{lineno:05d}")), prompt=prompt.strip(),
                                response=str(response).strip(), task=str(obj.get("task", ""))))
    if not examples:
        raise ValueError(f"{path} holds no examples")
    return examples


def normalised_text(text: str) -> str | None:
    """The first non-empty line, lower-cased, whitespace collapsed, trailing punctuation dropped (None if empty)."""
    for line in text.strip().splitlines():
        line = " ".join(line.lower().split()).rstrip(".!")
        if line:
            return line
    return None


def answer_extractor(examples: Sequence[Example]) -> Callable[[str], Hashable | None]:
    """The last number when every reference response is a number (math), else normalised_text."""
    from ..metrics.text import last_number

    numeric = all(re.fullmatch(r"-?\d+(?:\.\d+)?", e.response.replace(",", "")) for e in examples)
    return last_number if numeric else normalised_text


# ----------------------------------------------------------------------------------------------------------
# Tokenisation
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids of the chat-formatted prompt and of the response (ending with the end-of-turn token).

    content: (start, end) of the user's own text within prompt_ids (the chat template's tokens around it are
    not words of the prompt: CIP takes its players from this span only); None when unknown.
    """

    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    content: tuple[int, int] | None = None

    def with_response(self, response_ids: Sequence[int]) -> "TokenizedExample":
        return TokenizedExample(self.prompt_ids, tuple(response_ids), self.content)


def chat_prompt(tokenizer, prompt: str) -> str:
    """The prompt as one user turn in the tokenizer's chat template, ready for the assistant's answer."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt + "\n"


def end_of_turn_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token: it is needed to end responses")
    return int(tokenizer.eos_token_id)


def tokenize_prompts(tokenizer, prompts: Sequence[str]) -> list[tuple[int, ...]]:
    return [tuple(tokenizer(chat_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]) for p in prompts]


def _tokenize_prompt(tokenizer, prompt: str) -> tuple[tuple[int, ...], tuple[int, int] | None]:
    """The chat-formatted prompt's ids and the token span of the user's text in them (via offsets)."""
    text = chat_prompt(tokenizer, prompt)
    if not getattr(tokenizer, "is_fast", False):
        return tuple(tokenizer(text, add_special_tokens=False)["input_ids"]), None
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    start_char = text.rfind(prompt)
    end_char = start_char + len(prompt)
    inside = [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if start_char <= a and b <= end_char and b > a]
    span = (inside[0], inside[-1] + 1) if start_char >= 0 and inside else None
    return tuple(encoded["input_ids"]), span


def tokenize_examples(tokenizer, examples: Sequence[Example], responses: Sequence[str] | None = None,
                      *, max_length: int = 256) -> list[TokenizedExample]:
    """Tokenise prompts (chat template) and responses (+ end of turn), responses overriding examples' own.

    A pair longer than max_length tokens keeps its prompt's last tokens and its response's first ones, the
    response getting at least half of max_length. Raises ValueError if a prompt is empty after formatting.
    """
    eot = end_of_turn_id(tokenizer)
    texts = [e.response for e in examples] if responses is None else list(responses)
    out = []
    for example, text in zip(examples, texts):
        prompt_ids, span = _tokenize_prompt(tokenizer, example.prompt)
        response_ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) + (eot,)
        if len(prompt_ids) + len(response_ids) > max_length:
            keep_response = min(len(response_ids), max(max_length // 2, max_length - len(prompt_ids)))
            response_ids = response_ids[:keep_response]
            drop = len(prompt_ids) - (max_length - keep_response)
            prompt_ids = prompt_ids[drop:]
            if span is not None:
                span = (max(0, span[0] - drop), span[1] - drop) if span[1] - drop > 0 else None
        out.append(TokenizedExample(tuple(prompt_ids), response_ids, span))
    return out


def collate(items: Sequence[TokenizedExample], pad_id: int) -> dict[str, Tensor]:
    """Right-padded batch: input_ids, attention_mask and labels (response tokens only; -100 elsewhere), and
    player_mask (True on the user's text) when every item knows its content span."""
    length = max(len(it.prompt_ids) + len(it.response_ids) for it in items)
    input_ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(items), length), dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
    player_mask = torch.zeros((len(items), length), dtype=torch.bool)
    for row, it in enumerate(items):
        ids = it.prompt_ids + it.response_ids
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention_mask[row, :len(ids)] = 1
        labels[row, len(it.prompt_ids):len(ids)] = torch.tensor(it.response_ids)
        if it.content is not None:
            player_mask[row, it.content[0]:it.content[1]] = True
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    if all(it.content is not None for it in items):
        batch["player_mask"] = player_mask
    return batch


def prompt_batch(prompts: Sequence[Sequence[int]], pad_id: int) -> dict[str, Tensor]:
    """Left-padded prompts for model.generate: input_ids and attention_mask."""
    length = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, p in enumerate(prompts):
        input_ids[row, length - len(p):] = torch.tensor(p, dtype=torch.long)
        attention_mask[row, length - len(p):] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
