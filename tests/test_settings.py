"""InteractionSettings: validated once, round-trips through dicts and the command line, compared as a whole,
and carried into results and like= checks."""

import argparse
import dataclasses

import pytest

from kdi_fast.engine import compute_interactions
from kdi_fast.engine.settings import InteractionSettings

PROMPT = "The cat sat on the mat"


def test_defaults_round_trip_and_are_frozen():
    s = InteractionSettings(n_players=4, baseline="7", memory_budget="1MB", max_order=2)
    assert s.baseline == 7 and s.memory_budget == 1 << 20  # normalised once
    assert InteractionSettings.from_dict(s.to_dict()) == s
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.n_players = 5
    assert InteractionSettings(masking="attention", baseline="mean").baseline is None  # unused: never differs


@pytest.mark.parametrize("changes, match", [
    (dict(n_players=0), "n_players must be a positive int"),
    (dict(masking="blank"), "masking must be one of"),
    (dict(masking="token", baseline="zeros"), "does not fit masking='token'"),
    (dict(eps=0.5), "eps must be in"),
    (dict(dtype="int8"), "dtype must be one of"),
    (dict(memory_budget="lots"), "give a size like"),
    (dict(path="tree"), "path must be one of"),
    (dict(max_order=0), "max_order must be a positive int or None"),
])
def test_bad_settings_name_the_setting(changes, match):
    with pytest.raises(ValueError, match=match):
        InteractionSettings(**changes)


def test_unknown_settings_and_differences():
    with pytest.raises(TypeError, match="unknown setting.*n_player\\b"):
        InteractionSettings.create(n_player=3)
    a = InteractionSettings()
    b = a.replace(masking="token", n_players=3, memory_budget=1000)
    assert a.differences(b) == [("n_players", 10, 3), ("masking", "embedding", "token")]
    assert ("memory_budget", None, 1000) in a.differences(b, include_run=True)  # how, not what: only on request
    assert a.differences_from_record(b.to_dict(), ("masking", "eps")) == [("masking", "token", "embedding")]


def test_every_setting_has_one_flag_and_from_args_reads_them_back():
    parser = argparse.ArgumentParser()
    InteractionSettings.add_arguments(parser, defaults={"n_players": 8})
    args = parser.parse_args(["--masking", "token", "--baseline", "unk", "--max-order", "2", "--chat-template",
                              "--eps", "1e-6", "--path", "flat", "--max-batch-tokens", "64", "--seed", "3",
                              "--dtype", "float64", "--device", "cpu", "--target-tokens", "4"])
    s = InteractionSettings.from_args(args)
    assert s == InteractionSettings(n_players=8, masking="token", baseline="unk", max_order=2, chat_template=True,
                                    eps=1e-6, path="flat", max_batch_tokens=64, seed=3, dtype="float64",
                                    device="cpu", max_target_tokens=4)
    assert {f.name for f in dataclasses.fields(InteractionSettings)} == \
        {k.removeprefix("setting_") for k in vars(args)}


def test_compute_takes_the_object_or_keywords_and_records_it(tiny_lm, smollm_tokenizer):
    model = tiny_lm("gpt2").double()
    settings = InteractionSettings(n_players=3, max_target_tokens=2, masking="token")
    by_object = compute_interactions(model, smollm_tokenizer, [PROMPT], settings=settings, progress=False)[0]
    by_keywords = compute_interactions(model, smollm_tokenizer, [PROMPT], n_players=3, max_target_tokens=2,
                                       masking="token", progress=False)[0]
    assert by_object.values.equal(by_keywords.values)
    recorded = InteractionSettings.from_dict({k: v for k, v in by_object.settings.items()
                                              if k in InteractionSettings.field_names()})
    assert recorded == settings.replace(dtype="float64")  # the model's dtype
    with pytest.raises(ValueError, match="dtype='float32' but the model is float64"):
        compute_interactions(model, smollm_tokenizer, [PROMPT], settings=settings.replace(dtype="float32"),
                             progress=False)
    with pytest.raises(ValueError, match="masking='token' there, 'embedding' here"):
        compute_interactions(model, smollm_tokenizer, [PROMPT], like=[by_object], progress=False)
