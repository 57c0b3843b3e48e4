"""CIP dropped into real training code: a plain torch loop, the Hugging Face Trainer, TRL's SFTTrainer and
GKDTrainer. Each runs two real optimisation steps on CPU with tiny models and the real SmolLM2 tokenizer."""

import os
import sys

import pytest
import torch

from kdi_fast.losses import CIP, kd_loss
from kdi_fast.models import tiny_causal_lm

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

PAIRS = [("The quick brown fox jumps over", " the lazy dog"), ("I am a green hand means that", " I am new"),
         ("Two plus two equals", " four"), ("Paris is the capital city of", " France")]


def tokenized(tokenizer):
    rows = []
    for prompt, answer in PAIRS:
        p, a = tokenizer(prompt).input_ids, tokenizer(answer).input_ids
        rows.append(dict(input_ids=p + a, attention_mask=[1] * (len(p) + len(a)), labels=[-100] * len(p) + a))
    return rows


def collate(rows, pad_id):
    width = max(len(r["input_ids"]) for r in rows)
    out = {}
    for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("labels", -100)):
        out[key] = torch.tensor([r[key] + [fill] * (width - len(r[key])) for r in rows])
    return out


def _snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


def _changed(model, before):
    return any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_plain_torch_loop(smollm_tokenizer):
    """loss = kd_loss + cip(model, batch), reusing the student's forward."""
    batch = collate(tokenized(smollm_tokenizer), smollm_tokenizer.pad_token_id)
    student = tiny_causal_lm("llama", hidden_size=32, seed=0).train()
    teacher = tiny_causal_lm("llama", hidden_size=48, seed=1)
    cip = CIP(m=3, weight=0.5, tokenizer=smollm_tokenizer)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    before = _snapshot(student)
    for step in range(2):
        outputs = student(**batch)
        with torch.no_grad():
            teacher_logits = teacher(**batch).logits
        kd = kd_loss(outputs.logits, teacher_logits, batch["labels"], divergence="jsd", beta=0.5,
                     shift_labels=True).mean()
        penalty = cip(student, batch, outputs, step=step)
        loss = kd + penalty
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss) and float(penalty.detach()) > 0
    assert _changed(student, before)


def _training_args(tmp_path, **overrides):
    from transformers import TrainingArguments

    settings = dict(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, logging_steps=1,
                    report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True, learning_rate=1e-3,
                    seed=0)
    settings.update(overrides)
    return TrainingArguments(**settings)


@pytest.mark.slow
def test_hf_trainer_adds_and_logs_cip(smollm_tokenizer, tmp_path):
    from kdi_fast.integrations.hf import CIPTrainer

    model = tiny_causal_lm("llama", hidden_size=32, seed=0).train()
    before = _snapshot(model)
    trainer = CIPTrainer(model=model, args=_training_args(tmp_path), train_dataset=tokenized(smollm_tokenizer),
                         data_collator=lambda rows: collate(rows, smollm_tokenizer.pad_token_id),
                         cip=CIP(3, weight=0.5, tokenizer=smollm_tokenizer))
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2 and all(entry["cip"] > 0 for entry in logs)
    assert _changed(model, before)


@pytest.mark.slow
def test_hf_trainer_gradient_accumulation_matches_one_big_batch(smollm_tokenizer, tmp_path):
    """One SGD step on 4 examples: batch 4 x 1 micro-batch == batch 2 x 2 accumulated, CIP included."""
    from kdi_fast.integrations.hf import CIPTrainer

    results = []
    for batch_size, accumulation in ((4, 1), (2, 2)):
        model = tiny_causal_lm("llama", hidden_size=32, seed=0).double().train()
        args = _training_args(tmp_path / str(batch_size), max_steps=1, per_device_train_batch_size=batch_size,
                              gradient_accumulation_steps=accumulation, optim="sgd", learning_rate=1.0,
                              max_grad_norm=0.0, lr_scheduler_type="constant")
        trainer = CIPTrainer(model=model, args=args, train_dataset=tokenized(smollm_tokenizer),
                             data_collator=lambda rows: collate(rows, smollm_tokenizer.pad_token_id),
                             cip=CIP(3, weight=10.0, tokenizer=smollm_tokenizer))
        trainer.train()
        results.append(_snapshot(model))
    start = _snapshot(tiny_causal_lm("llama", hidden_size=32, seed=0).double())
    for a, b, s in zip(*results, start):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert any(not torch.equal(a, s) for a, s in zip(results[0], start))


@pytest.mark.slow
def test_trl_sft_trainer_adds_and_logs_cip(smollm_tokenizer, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig

    from kdi_fast.integrations.trl import CIPSFTTrainer

    data = Dataset.from_list([dict(prompt=p, completion=a) for p, a in PAIRS])
    model = tiny_causal_lm("llama", hidden_size=32, seed=0)
    before = _snapshot(model)
    args = SFTConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, logging_steps=1,
                     report_to="none", use_cpu=True, bf16=False, save_strategy="no", disable_tqdm=True)
    trainer = CIPSFTTrainer(model=model, args=args, train_dataset=data, processing_class=smollm_tokenizer,
                            cip=CIP(3, weight=0.5, tokenizer=smollm_tokenizer))
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2 and all(entry["cip"] > 0 and "mean_token_accuracy" in entry for entry in logs)
    assert _changed(model, before)


@pytest.mark.slow
@pytest.mark.parametrize("lmbda", [0.0, 1.0], ids=["off-policy", "on-policy"])
def test_trl_gkd_trainer_adds_and_logs_cip(smollm_tokenizer, tmp_path, lmbda):
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig

    from kdi_fast.integrations.trl import CIPGKDTrainer

    chats = Dataset.from_list([dict(messages=[{"role": "user", "content": p}, {"role": "assistant", "content": a}])
                               for p, a in PAIRS])
    student = tiny_causal_lm("llama", hidden_size=32, seed=0)
    teacher = tiny_causal_lm("llama", hidden_size=48, seed=1)
    before = _snapshot(student)
    args = GKDConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, logging_steps=1,
                     report_to="none", use_cpu=True, bf16=False, save_strategy="no", disable_tqdm=True,
                     lmbda=lmbda, max_new_tokens=4)
    trainer = CIPGKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=chats,
                            processing_class=smollm_tokenizer, cip=CIP(3, weight=0.5, tokenizer=smollm_tokenizer))
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2 and all(entry["cip"] > 0 for entry in logs)
    assert _changed(student, before)


def test_without_trl_a_clear_message(monkeypatch):
    import kdi_fast.integrations.trl as cip_trl

    monkeypatch.setitem(sys.modules, "trl", None)
    monkeypatch.setitem(sys.modules, "trl.experimental.gkd", None)
    monkeypatch.setattr(cip_trl, "_CLASSES", {})
    with pytest.raises(ImportError, match=r"pip install 'kdi_fast\[trl\]'"):
        cip_trl.CIPGKDTrainer
    with pytest.raises(ImportError, match="CIPSFTTrainer needs TRL"):
        from kdi_fast.integrations.trl import CIPSFTTrainer  # noqa: F401


def test_kdi_fast_imports_without_trl():
    import subprocess

    code = ("import sys; sys.modules['trl'] = None; import kdi_fast, kdi_fast.losses, kdi_fast.integrations; "
            "import kdi_fast.integrations.trl as t; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
