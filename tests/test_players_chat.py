"""Players are the user's words: in every trainer, each token CIP masks lies inside the text of a user message
(never the default system prompt, role markers, turn ends or the generation prompt), on SmolLM2's tokenizer,
recomputed per batch (GKD's on-policy batches included)."""

import pytest
import torch

from kdi_fast.engine import chat
from kdi_fast.losses import CIP
from kdi_fast.models import tiny_causal_lm

PAIRS = [("The quick brown fox jumps over", "the lazy dog"), ("I am a green hand means that", "I am new"),
         ("Two plus two equals", "four"), ("Paris is the capital city of", "France")]
USER = [p for p, _ in PAIRS]


class RecordingCIP(CIP):
    """CIP that keeps, per prompt it penalised, the row's token ids and the token positions of each player."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[list[int], list[list[int]]]] = []

    def interactions(self, model, batch, outputs=None, *, step=None):
        records = super().interactions(model, batch, outputs, step=step)
        self.seen += [(batch["input_ids"][r.index].tolist(), r.tokens) for r in records]
        return records


def assert_players_are_user_words(tokenizer, seen, min_prompts=2):
    """Every player token's characters lie inside one user message's text in the decoded row (reference: the
    character span of token t is between the decoded lengths of ids[:t] and ids[:t + 1])."""
    assert len(seen) >= min_prompts, f"CIP penalised only {len(seen)} prompts"
    for ids, players in seen:
        text = tokenizer.decode(ids)
        regions = [(text.find(u), text.find(u) + len(u)) for u in USER if u in text]
        assert regions, text
        for positions in players:
            assert positions
            for t in positions:
                start, end = len(tokenizer.decode(ids[:t])), len(tokenizer.decode(ids[:t + 1]))
                assert any(a <= start and end <= b for a, b in regions), \
                    f"player token {tokenizer.decode(ids[t:t + 1])!r} is not in a user message of {text!r}"


def test_user_turns_of_smollm2(smollm_tokenizer):
    turns = chat.user_turns(smollm_tokenizer)
    assert (turns.opener, turns.closer) == ("<|im_start|>user\n", "<|im_end|>")
    text = smollm_tokenizer.apply_chat_template(
        [{"role": "user", "content": USER[0]}, {"role": "assistant", "content": "ok"},
         {"role": "user", "content": USER[2]}], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([smollm_tokenizer(text, add_special_tokens=False).input_ids])
    mask = chat.user_content_mask(ids, smollm_tokenizer)[0]
    assert smollm_tokenizer.decode(ids[0][mask]) == USER[0] + USER[2]
    plain = torch.tensor([smollm_tokenizer(USER[1]).input_ids])
    assert chat.user_content_mask(plain, smollm_tokenizer) is None  # plain text: every word may be a player


def chat_rows(tokenizer):
    """Chat-formatted rows (SmolLM2's default system prompt, role markers), labels on the assistant's reply."""
    rows = []
    for prompt, answer in PAIRS:
        head = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        p = tokenizer(head, add_special_tokens=False).input_ids
        a = tokenizer(answer + "<|im_end|>", add_special_tokens=False).input_ids
        rows.append(dict(input_ids=p + a, attention_mask=[1] * (len(p) + len(a)), labels=[-100] * len(p) + a))
    return rows


def collate(rows, pad_id):
    width = max(len(r["input_ids"]) for r in rows)
    return {key: torch.tensor([r[key] + [fill] * (width - len(r[key])) for r in rows])
            for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("labels", -100))}


def test_plain_loop_chat_batch(smollm_tokenizer):
    model = tiny_causal_lm("llama", hidden_size=32, seed=0)
    cip = RecordingCIP(3, tokenizer=smollm_tokenizer)
    batch = collate(chat_rows(smollm_tokenizer), smollm_tokenizer.pad_token_id)
    assert float(cip(model, batch, step=0)) > 0
    assert_players_are_user_words(smollm_tokenizer, cip.seen, min_prompts=4)


def _args(cls, tmp_path, **overrides):
    settings = dict(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, logging_steps=1,
                    report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True, learning_rate=1e-3)
    settings.update(overrides)
    return cls(**settings)


@pytest.mark.slow
def test_hf_trainer_with_chat_data(smollm_tokenizer, tmp_path):
    from transformers import TrainingArguments

    from kdi_fast.integrations.hf import CIPTrainer

    cip = RecordingCIP(3, weight=0.5, tokenizer=smollm_tokenizer)
    trainer = CIPTrainer(model=tiny_causal_lm("llama", hidden_size=32, seed=0).train(),
                         args=_args(TrainingArguments, tmp_path), train_dataset=chat_rows(smollm_tokenizer),
                         data_collator=lambda rows: collate(rows, smollm_tokenizer.pad_token_id), cip=cip)
    trainer.train()
    assert_players_are_user_words(smollm_tokenizer, cip.seen, min_prompts=4)


@pytest.mark.slow
def test_trl_sft_with_conversational_prompt_completion(smollm_tokenizer, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig

    from kdi_fast.integrations.trl import CIPSFTTrainer

    data = Dataset.from_list([dict(prompt=[{"role": "user", "content": p}],
                                   completion=[{"role": "assistant", "content": a}]) for p, a in PAIRS])
    cip = RecordingCIP(3, weight=0.5, tokenizer=smollm_tokenizer)
    trainer = CIPSFTTrainer(model=tiny_causal_lm("llama", hidden_size=32, seed=0),
                            args=_args(SFTConfig, tmp_path, bf16=False), train_dataset=data,
                            processing_class=smollm_tokenizer, cip=cip)
    trainer.train()
    assert_players_are_user_words(smollm_tokenizer, cip.seen, min_prompts=4)


@pytest.mark.slow
@pytest.mark.parametrize("lmbda", [0.0, 1.0], ids=["off-policy", "on-policy"])
def test_trl_gkd(smollm_tokenizer, tmp_path, lmbda):
    import warnings

    from datasets import Dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.gkd import GKDConfig

    from kdi_fast.integrations.trl import CIPGKDTrainer

    chats = Dataset.from_list([dict(messages=[{"role": "user", "content": p}, {"role": "assistant", "content": a}])
                               for p, a in PAIRS])
    cip = RecordingCIP(3, weight=0.5, tokenizer=smollm_tokenizer)
    trainer = CIPGKDTrainer(model=tiny_causal_lm("llama", hidden_size=32, seed=0),
                            teacher_model=tiny_causal_lm("llama", hidden_size=48, seed=1),
                            args=_args(GKDConfig, tmp_path, bf16=False, lmbda=lmbda, max_new_tokens=4),
                            train_dataset=chats, processing_class=smollm_tokenizer, cip=cip)
    trainer.train()
    assert_players_are_user_words(smollm_tokenizer, cip.seen, min_prompts=2)


@pytest.mark.slow
def test_trl_distillation_trainer(smollm_tokenizer, tmp_path):
    from datasets import Dataset
    from trl import DistillationConfig

    from kdi_fast.integrations.trl import CIPDistillationTrainer

    prompts = Dataset.from_list([dict(prompt=[{"role": "user", "content": p}]) for p in USER])
    cip = RecordingCIP(3, weight=0.5, tokenizer=smollm_tokenizer)
    smollm_tokenizer.padding_side = "left"
    try:
        trainer = CIPDistillationTrainer(
            model=tiny_causal_lm("llama", hidden_size=32, seed=0),
            teacher_model=tiny_causal_lm("llama", hidden_size=48, seed=1),
            args=_args(DistillationConfig, tmp_path, bf16=False, max_completion_length=4),
            train_dataset=prompts, processing_class=smollm_tokenizer, cip=cip)
        trainer.train()
    finally:
        smollm_tokenizer.padding_side = "right"
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs and all(entry["cip"] > 0 for entry in logs)
    assert_players_are_user_words(smollm_tokenizer, cip.seen, min_prompts=2)


def test_the_mixin_names_what_a_batch_lacks(smollm_tokenizer, tmp_path):
    """A trainer whose batches carry no labels (DPO's layout) raises instead of training without CIP."""
    from transformers import Trainer, TrainingArguments

    from kdi_fast.integrations.hf import CIPTrainerMixin

    class LabelFree(CIPTrainerMixin, Trainer):
        pass

    rows = chat_rows(smollm_tokenizer)
    batch = collate(rows, smollm_tokenizer.pad_token_id)
    batch["completion_mask"] = (batch.pop("labels") != -100).long()
    trainer = LabelFree(model=tiny_causal_lm("llama", hidden_size=32, seed=0).train(),
                        args=_args(TrainingArguments, tmp_path), cip=CIP(3, tokenizer=smollm_tokenizer))
    with pytest.raises(ValueError, match=r"LabelFree: CIP needs the batch's labels, and this trainer's batch has "
                                         r"only attention_mask, completion_mask, input_ids; override cip_batch"):
        trainer.compute_loss(trainer.model, batch)


class _Recipe:
    """The README's DPO recipe, verbatim: CIP on the chosen responses."""

    @staticmethod
    def build():
        from trl import DPOTrainer

        from kdi_fast.integrations.hf import CIPTrainerMixin

        class CIPDPOTrainer(CIPTrainerMixin, DPOTrainer):
            cip_reuses_outputs = False

            def cip_batch(self, inputs):
                chosen = inputs["input_ids"].shape[0] // 2  # DPO stacks the chosen rows, then the rejected ones
                ids = inputs["input_ids"][:chosen]
                return {"input_ids": ids, "attention_mask": inputs["attention_mask"][:chosen],
                        "labels": ids.masked_fill(inputs["completion_mask"][:chosen] == 0, -100)}

        return CIPDPOTrainer


@pytest.mark.slow
def test_dpo_recipe_runs_cip_on_the_chosen_responses(smollm_tokenizer, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig

    data = Dataset.from_list([dict(prompt=[{"role": "user", "content": p}],
                                   chosen=[{"role": "assistant", "content": a}],
                                   rejected=[{"role": "assistant", "content": "no idea"}]) for p, a in PAIRS])
    cip = RecordingCIP(3, weight=0.5, tokenizer=smollm_tokenizer)
    model = tiny_causal_lm("llama", hidden_size=32, seed=0)
    trainer = _Recipe.build()(model=model, ref_model=tiny_causal_lm("llama", hidden_size=32, seed=0),
                              args=_args(DPOConfig, tmp_path, bf16=False), train_dataset=data,
                              processing_class=smollm_tokenizer, cip=cip)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs and all(entry["cip"] > 0 for entry in logs)
    assert_players_are_user_words(smollm_tokenizer, cip.seen, min_prompts=4)
    answers = [a for _, a in PAIRS]
    for ids, _ in cip.seen:  # the chosen response is y*, never the rejected one
        text = smollm_tokenizer.decode(ids)
        assert any(a in text for a in answers) and "no idea" not in text
