"""Output metrics of seed 001: teacher-student agreement on final answers, fidelity (BLEU) and ROUGE-L.

Conventions: the teacher's text is the reference, the student's the hypothesis. Scales follow the tools:
agreement is a fraction in [0, 1]; BLEU is sacrebleu's 0..100; ROUGE-L is the rouge-score F-measure times
100 (0..100, as the KD literature reports it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Sequence

from .._extras import needs

__all__ = [
    "last_number",
    "first_word",
    "number_or_word",
    "answers_agree",
    "agreement",
    "fidelity",
    "fidelity_per_example",
    "rouge_l",
    "rouge_l_per_example",
]

AnswerExtractor = Callable[[str], Hashable | None]

# A number: an optional minus sign that does not follow a word character ("5-3" is 5 and 3, not 5 and -3),
# digits with optional thousands separators ("1,000"), an optional decimal part.
_NUMBER = re.compile(r"(?:(?<![\w.])-)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")


def last_number(text: str) -> float | None:
    """The last number in `text`, normalised to a float ("1,000" -> 1000.0, "$3.50." -> 3.5); None if none.

    The default answer extractor for math word problems (GSM8K-style answers end with the number).
    """
    if not isinstance(text, str):
        raise TypeError(f"expected a str, got {type(text).__name__}")
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    return float(matches[-1].replace(",", ""))


_WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")


def first_word(text: str) -> str | None:
    """The first word of `text`, lower-cased, without punctuation (" Paris." -> "paris"); None if none.

    An answer extractor for short completions ("The capital of France is" -> " Paris").
    """
    if not isinstance(text, str):
        raise TypeError(f"expected a str, got {type(text).__name__}")
    match = _WORD.search(text)
    return match.group(0).lower() if match else None


def number_or_word(text: str) -> float | str | None:
    """The last number of `text` when it has one (math answers), else its first word (short completions)."""
    number = last_number(text)
    return number if number is not None else first_word(text)


def _check_pair(teacher_texts: Sequence[str], student_texts: Sequence[str]) -> None:
    for name, texts in (("teacher_texts", teacher_texts), ("student_texts", student_texts)):
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"{name} must be a list of str (one output per example)")
    if len(teacher_texts) != len(student_texts):
        raise ValueError(
            "teacher and student outputs must pair up one to one, "
            f"got {len(teacher_texts)} and {len(student_texts)}"
        )


def answers_agree(
    teacher_texts: Sequence[str], student_texts: Sequence[str], extractor: AnswerExtractor = last_number
) -> list[bool]:
    """Per example: do the final answers match? A pair agrees only when both texts yield an answer and the
    answers are equal (two outputs without an answer do not agree)."""
    _check_pair(teacher_texts, student_texts)
    out = []
    for t, s in zip(teacher_texts, student_texts):
        a, b = extractor(t), extractor(s)
        out.append(a is not None and b is not None and a == b)
    return out


def agreement(
    teacher_texts: Sequence[str], student_texts: Sequence[str], extractor: AnswerExtractor = last_number
) -> float:
    """Top-1 teacher-student agreement: the fraction of examples whose final answers match (see answers_agree)."""
    matches = answers_agree(teacher_texts, student_texts, extractor)
    if not matches:
        raise ValueError("agreement needs at least one example")
    return sum(matches) / len(matches)


def fidelity(teacher_texts: Sequence[str], student_texts: Sequence[str]) -> float:
    """Reasoning fidelity: corpus BLEU (sacrebleu, 0..100) of the student outputs against the teacher's."""
    with needs("metrics"):
        import sacrebleu

    _check_pair(teacher_texts, student_texts)
    if not teacher_texts:
        raise ValueError("fidelity needs at least one example")
    return float(sacrebleu.corpus_bleu(list(student_texts), [list(teacher_texts)]).score)


def fidelity_per_example(teacher_texts: Sequence[str], student_texts: Sequence[str]) -> list[float]:
    """Sentence BLEU (sacrebleu, 0..100, its default smoothing) of each student output against the teacher's."""
    with needs("metrics"):
        import sacrebleu

    _check_pair(teacher_texts, student_texts)
    return [float(sacrebleu.sentence_bleu(s, [t]).score) for t, s in zip(teacher_texts, student_texts)]


def rouge_l_per_example(references: Sequence[str], predictions: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure (rouge-score, with stemming) of each prediction against its reference, times 100."""
    with needs("metrics"):
        from rouge_score import rouge_scorer

    _check_pair(references, predictions)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [100.0 * scorer.score(r, p)["rougeL"].fmeasure for r, p in zip(references, predictions)]


def rouge_l(references: Sequence[str], predictions: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (0..100) of the predictions against the references (teacher outputs)."""
    scores = rouge_l_per_example(references, predictions)
    if not scores:
        raise ValueError("rouge_l needs at least one example")
    return sum(scores) / len(scores)


def teacher_text_scores(teacher_texts: Sequence[str], student_texts: Sequence[str],
                        extractor: AnswerExtractor = last_number) -> dict[str, float]:
    """How closely a student's outputs follow the teacher's, as `kdi compare` and `kdi distill` both report it:
    agreement (0..1, answers_agree), fidelity_bleu (corpus BLEU, 0..100) and rouge_l (mean per-example
    ROUGE-L F1 against the teacher's text, 0..100)."""
    return {"agreement": agreement(teacher_texts, student_texts, extractor),
            "fidelity_bleu": fidelity(teacher_texts, student_texts), "rouge_l": rouge_l(teacher_texts, student_texts)}
