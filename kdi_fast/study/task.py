"""The laboratory task: addition of two numbers written digit by digit, least significant digit first.

    prompt    "7 4 _ _ + 9 8 5 _ ="     (47 + 589; every operand has 4 digit slots, "_" fills the unused ones)
    answer    "6 3 6"                   (636, least significant digit first; then the end-of-sequence token)

The 8 digit slots of the prompt are the players (n = 8). Answer digit i depends on the operands' digits i and on
the carry from every lower position, so a carry chain is an interaction of many players (a complex interaction);
a digit without a carry into it depends on two players (a simple one). Little-endian order lets a small causal
model produce each digit after the carries it needs (the usual big-endian order asks it to see all carries
before its first output token).

"_" is the tokenizer's pad token: the models see it in every training batch (short operands), so it is the
embedding baseline of the interactions ("the pad token the model saw in training").
The vocabulary is the ten digits, "_", "+", "=", and the special tokens <eos> and <unk> (15 tokens).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..distill.datasets import Example

__all__ = ["DIGITS", "SLOTS", "PAD", "EOS", "make_tokenizer", "make_problem", "make_splits", "Splits",
           "answer_of", "digit_players"]

SLOTS = 4  # digit slots per operand
DIGITS = [str(d) for d in range(10)]
PAD, EOS, UNK = "_", "<eos>", "<unk>"
_VOCAB = [PAD, EOS, UNK, *DIGITS, "+", "="]


def make_tokenizer():
    """A word-level Hugging Face fast tokenizer over the task's 15 tokens (split on whitespace; pad = "_")."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(_VOCAB)}, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK)
    tok.model_max_length = 64
    return tok


def _digits(value: int, slots: int | None) -> list[str]:
    out = list(str(value))[::-1]
    return out + [PAD] * (slots - len(out)) if slots is not None else out


def make_problem(a: int, b: int) -> Example:
    """The Example of a + b (0 <= a, b < 10^SLOTS)."""
    if not (0 <= a < 10**SLOTS and 0 <= b < 10**SLOTS):
        raise ValueError(f"operands must lie in [0, {10**SLOTS}), got {a} and {b}")
    prompt = " ".join(_digits(a, SLOTS) + ["+"] + _digits(b, SLOTS) + ["="])
    return Example(id=f"{a}+{b}", prompt=prompt, response=" ".join(_digits(a + b, None)), task="addition")


def answer_of(text: str) -> str:
    """The answer as compared for exact match: its tokens up to the first non-digit, joined by spaces."""
    out = []
    for word in text.split():
        if word not in DIGITS:
            break
        out.append(word)
    return " ".join(out)


def digit_players() -> list[int]:
    """The players of every prompt: word indices of the 8 digit slots (the "+" and "=" are not players)."""
    return [*range(SLOTS), *range(SLOTS + 1, 2 * SLOTS + 1)]


def _draw(rng: random.Random) -> int:
    """An operand with a uniformly drawn number of digits (1..SLOTS), so short operands (and "_") are common."""
    width = rng.randint(1, SLOTS)
    return rng.randrange(10 ** (width - 1) if width > 1 else 0, 10**width)


@dataclass(frozen=True)
class Splits:
    teacher_train: list[Example]  # the teacher's training data
    train: list[Example]  # the students' training data (disjoint from every held-out split)
    val: list[Example]  # choice of steps, learning rates and CIP weights
    test: list[Example]  # the reported numbers (used once)


def make_splits(*, teacher_train: int, train: int, val: int, test: int, seed: int = 0) -> Splits:
    """Disjoint splits of distinct problems (a + b and b + a count as one problem, so none leaks across)."""
    if not 0 < train <= teacher_train:
        raise ValueError(f"train ({train}) must be positive and at most teacher_train ({teacher_train}): the "
                         f"students' problems are a subset of the teacher's")
    rng = random.Random(seed)
    total = teacher_train + val + test
    seen: set[tuple[int, int]] = set()
    pairs: list[tuple[int, int]] = []
    while len(pairs) < total:
        a, b = _draw(rng), _draw(rng)
        key = (min(a, b), max(a, b))
        if key not in seen:
            seen.add(key)
            pairs.append((a, b))
    examples = [make_problem(a, b) for a, b in pairs]
    # students' data is a subset of the teacher's: the teacher knows the students' training problems, as a
    # fine-tuned teacher would; the held-out splits are seen by neither
    held_val = examples[teacher_train:teacher_train + val]
    held_test = examples[teacher_train + val:teacher_train + val + test]
    return Splits(teacher_train=examples[:teacher_train], train=examples[:train], val=held_val, test=held_test)
