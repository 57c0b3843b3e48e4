"""The cases that used to pass silently now warn or raise, in one line that says what to do."""

import warnings

import pytest
import torch

from kdi_fast.losses import CIP, KDLoss, kd_loss
from kdi_fast.models import tiny_causal_lm

from test_cip import VOCAB, make_batch


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_cip_without_a_tokenizer_warns_and_none_means_token_players(no_warnings):
    with pytest.warns(UserWarning, match="without a tokenizer makes every prompt token a word"):
        CIP(3)
    CIP(3, tokenizer=None)  # on purpose: no warning


def test_alpha_or_beta_ignored_by_the_divergence_warns(no_warnings):
    s, t = torch.randn(2, 3, 11), torch.randn(2, 3, 11)
    with pytest.warns(UserWarning, match=r"beta=0.5 is ignored by divergence='forward_kl'; only jsd, ab use beta"):
        kd_loss(s, t, divergence="forward_kl", beta=0.5)
    with pytest.warns(UserWarning, match="alpha=0.2 is ignored by divergence='jsd'"):
        kd_loss(s, t, divergence="jsd", alpha=0.2)
    with pytest.warns(UserWarning, match="alpha=0.1 is ignored by divergence='tvd'"):
        KDLoss("tvd", alpha=0.1)
    kd_loss(s, t, divergence="jsd", beta=0.3)
    kd_loss(s, t, divergence="skew_reverse_kl", alpha=0.3)
    kd_loss(s, t, divergence="ab", alpha=0.2, beta=0.7)


def test_no_selected_token_warns(no_warnings):
    s, t = torch.randn(2, 3, 11), torch.randn(2, 3, 11)
    with pytest.warns(UserWarning, match="no token is selected"):
        out = kd_loss(s, t, torch.full((2, 3), -100), shift_labels=False)
    assert out.count == 0
    model = tiny_causal_lm("llama", vocab_size=VOCAB, hidden_size=16, num_layers=1)
    batch = make_batch()
    batch["labels"] = torch.full_like(batch["labels"], -100)
    with pytest.warns(UserWarning, match="no token of this batch is selected"):
        assert float(CIP(3, tokenizer=None)(model, batch, step=0)) == 0.0


def test_hugging_face_labels_without_shift_labels_warn(no_warnings):
    batch = make_batch()  # labels = input ids on y*, -100 elsewhere: the longest row's last token is labelled
    s, t = torch.randn(*batch["labels"].shape, VOCAB), torch.randn(*batch["labels"].shape, VOCAB)
    with pytest.warns(UserWarning, match="pass shift_labels=True"):
        unset = kd_loss(s, t, batch["labels"])
    shifted = kd_loss(s, t, batch["labels"], shift_labels=True)
    explicit = kd_loss(s, t, batch["labels"], shift_labels=False)  # said on purpose: no warning
    assert unset.count == explicit.count == (batch["labels"] != -100).sum()
    assert shifted.count == (batch["labels"][:, 1:] != -100).sum()
    pre_shifted = torch.cat([batch["labels"][:, 1:], torch.full_like(batch["labels"][:, :1], -100)], 1)
    kd_loss(s, t, pre_shifted)  # the last position is never labelled: no warning


def test_cip_refuses_labels_that_are_not_the_input_ids():
    model = tiny_causal_lm("llama", vocab_size=VOCAB, hidden_size=16, num_layers=1)
    batch = make_batch()
    labels = batch["labels"]
    batch["labels"] = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], 1)  # pre-shifted
    with pytest.raises(ValueError, match=r"They look shifted \(labels\[t\] = input_ids\[t \+ 1\]\)") as e:
        CIP(3, tokenizer=None)(model, batch, step=0)
    _one_line(e)
    batch["labels"] = torch.where(labels != -100, (labels + 1) % VOCAB, labels)
    with pytest.raises(ValueError, match="some labelled positions hold another token"):
        CIP(3, tokenizer=None)(model, batch, step=0)


@pytest.mark.parametrize("call, pattern", [
    (lambda m, b: CIP("3", tokenizer=None), "option m must be int"),
    (lambda m, b: CIP(3, weight="0.1", tokenizer=None), "option weight must be float"),
    (lambda m, b: CIP(3, tokenizer="gpt2"), "tokenizer must be a Hugging Face tokenizer"),
    (lambda m, b: CIP(3, tokenizer=None)(b, m), "model must be the student"),
    (lambda m, b: CIP(3, tokenizer=None)(m, list(b.values())), "batch must be a dict"),
    (lambda m, b: CIP(3, tokenizer=None)(m, b, step=1.0), "step must be an int"),
    (lambda m, b: CIP(3, tokenizer=None)(m, {"input_ids": b["input_ids"]}), "this batch has no labels"),
    (lambda m, b: kd_loss(torch.randn(2, 5), torch.randn(2, 5), temperature="2"), "temperature must be a number"),
    (lambda m, b: kd_loss(torch.randn(2, 5), torch.randn(2, 5), [1, 2]), "labels must be a tensor"),
    (lambda m, b: KDLoss(divergence=None), "divergence must be a name"),
])
def test_wrong_argument_types_are_one_line(call, pattern):
    model = tiny_causal_lm("llama", vocab_size=VOCAB, hidden_size=16, num_layers=1)
    with pytest.raises((TypeError, ValueError), match=pattern) as e:
        call(model, make_batch())
    _one_line(e)
