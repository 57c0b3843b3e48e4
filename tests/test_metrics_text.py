"""Output metrics (seed 001): answer extraction, agreement, BLEU fidelity, ROUGE-L on hand-made examples."""

import pytest

from kdi_fast.metrics import (
    agreement,
    answers_agree,
    fidelity,
    fidelity_per_example,
    last_number,
    rouge_l,
    rouge_l_per_example,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("She pays 1,000 dollars.", 1000.0),
        ("The price is $3.50.", 3.5),
        ("2 apples and 3 pears make 5", 5.0),
        ("#### 42", 42.0),
        ("It drops to -7 degrees", -7.0),
        ("pages 5-10", 10.0),  # a hyphen between numbers is not a minus sign
        ("1,234,567.25 in total", 1234567.25),
        ("no digits here", None),
        ("", None),
    ],
)
def test_last_number(text, expected):
    assert last_number(text) == expected


def test_last_number_type():
    with pytest.raises(TypeError):
        last_number(3)


def test_agreement_hand_example():
    teacher = ["so 1,000", "the answer is 3.50", "x = 4", "no answer"]
    student = ["1000 in all", "3.5", "x = 5", "none either"]
    # 1000 == 1000, 3.5 == 3.5, 4 != 5, and two missing answers do not agree.
    assert answers_agree(teacher, student) == [True, True, False, False]
    assert agreement(teacher, student) == 0.5


def test_agreement_pluggable_extractor():
    first_word = lambda s: s.split()[0].lower() if s.split() else None  # noqa: E731
    assert agreement(["Yes it is", "No"], ["yes!", "no way"], extractor=first_word) == 0.5


def test_pairs_must_match():
    with pytest.raises(ValueError, match="pair up"):
        agreement(["1"], ["1", "2"])
    with pytest.raises(TypeError, match="list of str"):
        fidelity("abc", "abc")
    with pytest.raises(ValueError, match="at least one"):
        agreement([], [])


def test_fidelity_bleu():
    import sacrebleu

    teacher = ["the cat sat on the mat today", "we add 3 and 4 to get 7"]
    assert fidelity(teacher, teacher) == pytest.approx(100.0)
    assert fidelity(teacher, ["a b c d", "e f g h"]) == 0.0
    # the student is the hypothesis, the teacher the reference (BLEU is not symmetric: brevity penalty)
    student = ["the cat sat on the mat", "we add 3 and 4"]
    assert fidelity(teacher, student) == pytest.approx(sacrebleu.corpus_bleu(student, [teacher]).score)
    assert fidelity(teacher, student) != pytest.approx(fidelity(student, teacher))
    per = fidelity_per_example(teacher, student)
    assert per == pytest.approx([sacrebleu.sentence_bleu(s, [t]).score for t, s in zip(teacher, student)])


def test_rouge_l_hand_example():
    # LCS("the cat sat on the mat", "the cat lay on the mat") = "the cat on the mat" = 5 tokens of 6 each:
    # P = R = 5/6, F = 5/6.
    assert rouge_l_per_example(["the cat sat on the mat"], ["the cat lay on the mat"]) == pytest.approx([500 / 6])
    # reference 4 tokens, prediction 2 tokens in order: P = 1, R = 1/2, F = 2/3.
    assert rouge_l(["a b c d", "x y"], ["a c", "x y"]) == pytest.approx((200 / 3 + 100) / 2)


def test_other_extractors():
    from kdi_fast.metrics import first_word, number_or_word

    assert first_word(" Paris. It is") == "paris"
    assert first_word("  -- don't stop") == "don't"
    assert first_word("...") is None
    assert number_or_word("so 12 apples and 3.0") == 3.0
    assert number_or_word(" Japan, of course") == "japan"
    assert agreement([" Paris.", "5 boxes hold 30"], [" paris is", "it is 30."], extractor=number_or_word) == 1.0
