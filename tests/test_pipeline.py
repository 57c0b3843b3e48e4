"""The one comparison pipeline: one generation helper, and `kdi compare`'s pipeline and `kdi distill`'s
end-of-run evaluation give the same numbers for the same models and data."""

import pytest
import torch

from kdi_fast import pipeline
from kdi_fast.distill.datasets import Example, answer_extractor
from kdi_fast.distill.evaluate import EvalSettings, evaluate_run
from kdi_fast.engine.players import encode_prompt
from kdi_fast.engine.settings import InteractionSettings
from kdi_fast.engine.target import greedy_target
from kdi_fast.models import parse_student, student_from_teacher, student_label, tiny_causal_lm

PROMPTS = ["Name a colour of the sky", "What do cats like to drink", "Count from one to three"]


@pytest.fixture(scope="module")
def teacher():
    return tiny_causal_lm("llama", hidden_size=32, num_layers=2, seed=7).double()


def test_generation_is_the_greedy_continuation_cut_at_the_end_token(teacher, smollm_tokenizer):
    texts = pipeline.generate_outputs(teacher, smollm_tokenizer, PROMPTS, max_new_tokens=5, chat_template=True,
                                      batch_size=2)
    for prompt, text in zip(PROMPTS, texts):
        ids = list(encode_prompt(smollm_tokenizer, prompt, chat_template=True).input_ids)
        try:
            want = smollm_tokenizer.decode(greedy_target(teacher, smollm_tokenizer, ids, 5),
                                           skip_special_tokens=True).strip()
        except ValueError:  # the model ends at once
            want = ""
        assert text == want
    assert any(texts)


def test_generation_cache_is_reused(teacher, smollm_tokenizer, tmp_path, monkeypatch):
    cache = tmp_path / "generations.json"
    first = pipeline.generate_outputs(teacher, smollm_tokenizer, PROMPTS[:2], max_new_tokens=3, cache=cache)
    monkeypatch.setattr(teacher, "generate", lambda *a, **k: pytest.fail("generated again"))
    assert pipeline.generate_outputs(teacher, smollm_tokenizer, PROMPTS[:2], max_new_tokens=3, cache=cache) == first


def test_compare_and_the_distill_evaluation_give_the_same_numbers(teacher, smollm_tokenizer, tmp_path):
    before = tiny_causal_lm("llama", hidden_size=32, num_layers=1, seed=8).double()  # another model
    after = student_from_teacher(teacher, 2)  # all layers: follows the teacher exactly
    examples = [Example(f"e{i}", p, "blue") for i, p in enumerate(PROMPTS)]
    settings = EvalSettings(max_new_tokens=5, batch_size=2, interaction_prompts=len(PROMPTS), n_players=3,
                            max_target_tokens=2, progress=False)
    evaluated = evaluate_run(teacher, before, after, smollm_tokenizer, examples, tmp_path, settings)["models"]
    done = pipeline.compare(teacher, {"student_before": before, "student_after": after}, smollm_tokenizer, PROMPTS,
                            InteractionSettings(n_players=3, max_target_tokens=2, chat_template=True),
                            gen_tokens=5, extractor=answer_extractor(examples), k_main=0.1)
    models = done.comparison.summary["models"]
    for name in ("student_before", "student_after"):
        text, metrics = models[name]["text"], models[name]["metrics"]
        assert evaluated[name]["agreement"] == pytest.approx(text["agreement"], abs=1e-12)
        assert evaluated[name]["fidelity"] == pytest.approx(text["fidelity_bleu"], abs=1e-9)
        assert evaluated[name]["rouge_l_teacher"] == pytest.approx(text["rouge_l"], abs=1e-9)
        assert evaluated[name]["gini"] == pytest.approx(metrics["gini"]["mean"], abs=1e-12)
        assert evaluated[name]["overlap"] == pytest.approx(metrics["overlap@0.1"]["mean"], abs=1e-12)
    assert models["student_after"]["text"]["agreement"] == 1.0 and models["student_after"]["text"]["rouge_l"] == 100
    assert done.outputs["student_before"] != done.outputs["teacher"]  # the numbers are not all trivially equal


def test_one_student_recipe_parser():
    assert parse_student("layers:3") == ("layers", 3)
    assert parse_student("layers:0,5") == ("layers", [0, 5])
    assert parse_student("fresh:num_hidden_layers=1,hidden_size=16") == (
        "fresh", {"num_hidden_layers": 1, "hidden_size": 16})
    assert parse_student("some/dir") == ("model", "some/dir")
    for bad in ("layers:a", "fresh:x", ""):
        with pytest.raises(ValueError, match="student recipe"):
            parse_student(bad)
    assert student_label("layers:26", "SmolLM2") == "layers:26 of SmolLM2"  # derived, not the teacher's name
    assert student_label("runs/kd/student") == "student"


def test_a_derived_student_is_named_as_derived(teacher):
    student = student_from_teacher(teacher, 1)
    assert student.config.name_or_path.startswith("layers:1 of ")
    assert torch.equal(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight)
