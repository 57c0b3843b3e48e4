"""The README's Python code blocks run as written, with tiny models (KDI_FAST_TINY_MODELS=1 makes load_model
return a tiny Llama with SmolLM2's vocabulary) and small stand-ins for the names a block takes as given (the
user's data, optimizer, ...). `Config(...)` in a block becomes the config with a tiny run's settings (one step,
batch 2)."""

import re
from pathlib import Path

import pytest
import torch

from kdi_fast.models import tiny_causal_lm

README = Path(__file__).resolve().parents[1] / "README.md"
PAIRS = [("The quick brown fox jumps over", "the lazy dog"), ("Two plus two equals", "four"),
         ("Paris is the capital city of", "France"), ("I am a green hand means that", "I am new")]


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def block(first_line: str) -> str:
    found = [b for b in blocks() if b.startswith(first_line)]
    assert len(found) == 1, f"README has {len(found)} python blocks starting with {first_line!r}"
    return re.sub(r"(\w+Config)\(\.\.\.\)", r"\1(**_tiny_config)", found[0])


def test_every_block_is_run_here():
    run = ("import torch, kdi_fast", "from kdi_fast import compute_interactions", "import kdi_fast\n",
           "from kdi_fast.engine import compute_interactions, compute_values",
           "from kdi_fast.losses import CIP", "from trl import DPOTrainer", "from kdi_fast.ops import")
    for b in blocks():  # a new block needs its test here
        assert sum(b.startswith(r) for r in run) == 1, b.split("\n")[0]
    assert len(blocks()) == len(run)


def test_transform_block():
    exec(block("import torch, kdi_fast"), {})


def test_ops_block():
    g = torch.Generator().manual_seed(0)
    lm_head = torch.nn.Linear(8, 50)
    given = dict(embeds=torch.randn(5, 8, generator=g), player_of_token=torch.tensor([0, 0, 1, -1, 2]),
                 masks=torch.arange(8), baseline=torch.zeros(8), embeds_b=torch.randn(2, 5, 8, generator=g),
                 player_b=torch.tensor([[0, 0, 1, -1, 2], [0, 1, 1, 2, -1]]), hidden=torch.randn(6, 8, generator=g),
                 lm_head=lm_head, targets=torch.randint(0, 50, (6,), generator=g))
    exec(block("from kdi_fast.ops import"), given)
    assert given["x"].shape == (2, 8, 5, 8) and given["lp"].shape == (6,)


@pytest.mark.slow
def test_engine_and_metrics_blocks(monkeypatch, tmp_path):
    monkeypatch.setenv("KDI_FAST_TINY_MODELS", "1")
    monkeypatch.chdir(tmp_path)
    ns = dict(student_model=tiny_causal_lm("llama", hidden_size=32, num_layers=1, seed=5))
    exec(block("from kdi_fast import compute_interactions"), ns)
    teacher, student = ns["teacher"], ns["student"]
    ns.update(I=teacher[0].interactions, I_teacher=teacher[0].interactions, I_student=student[0].interactions,
              teacher_texts=["it is 8", "no"], student_texts=["8 apples", "yes"], values=[1.0, 2.0, 4.0],
              x=[1, 2, 3, 4], y=[1, 3, 2, 4], teacher_results=teacher, student_results=student)
    exec(block("import kdi_fast\n"), ns)
    assert (tmp_path / "r.safetensors").exists() and (tmp_path / "out").is_dir()


@pytest.mark.slow
def test_sparse_block(monkeypatch, smollm_tokenizer):
    """As written, with 16 players and a budget of 200 masks instead of 64 and 8000 (minutes of CPU here)."""
    from kdi_fast.models import load_model

    monkeypatch.setenv("KDI_FAST_TINY_MODELS", "1")
    words = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
             "upsilon phi chi psi omega").split()
    long_prompt = " ".join(words * 3) + " is the list; what comes next?"
    ns = dict(model=load_model("smollm2"), tokenizer=smollm_tokenizer, long_prompt=long_prompt,
              prompt=long_prompt,
              masks=torch.rand(32, 16, generator=torch.Generator().manual_seed(0)) > 0.5)
    code = block("from kdi_fast.engine import compute_interactions, compute_values")
    code = code.replace("n_players=64", "n_players=16").replace("budget=8000", "budget=200")  # tiny run
    exec(code, ns)
    assert ns["values"].shape[0] == 32 and ns["r"].subsets


@pytest.mark.slow
def test_cip_trainer_blocks(monkeypatch, tmp_path, smollm_tokenizer):
    """The plain loop, HF Trainer, TRL trainers and the DPO recipe, one step each."""
    from datasets import Dataset
    from transformers import TrainingArguments
    from trl import DistillationConfig, DPOConfig, SFTConfig
    from trl.experimental.gkd import GKDConfig

    tok = smollm_tokenizer
    rows = []
    for prompt, answer in PAIRS:
        p = tok(tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                        add_generation_prompt=True), add_special_tokens=False).input_ids
        a = tok(answer + "<|im_end|>", add_special_tokens=False).input_ids
        rows.append(dict(input_ids=p + a, attention_mask=[1] * (len(p) + len(a)), labels=[-100] * len(p) + a))

    def collate(batch):
        width = max(len(r["input_ids"]) for r in batch)
        return {k: torch.tensor([r[k] + [fill] * (width - len(r[k])) for r in batch])
                for k, fill in (("input_ids", tok.pad_token_id), ("attention_mask", 0), ("labels", -100))}

    user = [[{"role": "user", "content": p}] for p, _ in PAIRS]
    reply = [[{"role": "assistant", "content": a}] for _, a in PAIRS]
    student = tiny_causal_lm("llama", hidden_size=32, seed=0).train()
    common = dict(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, report_to="none",
                  use_cpu=True, save_strategy="no", disable_tqdm=True)
    ns = dict(torch=torch, tokenizer=tok, student=student, teacher=tiny_causal_lm("llama", hidden_size=48, seed=1),
              reference=tiny_causal_lm("llama", hidden_size=32, seed=0), loader=[collate(rows[:2]), collate(rows[2:])],
              optimizer=torch.optim.AdamW(student.parameters(), lr=1e-3), args=TrainingArguments(**common),
              data=rows, collate=collate, _tiny_config=dict(common, bf16=False),
              chats=Dataset.from_list([dict(messages=u + r) for u, r in zip(user, reply)]),
              pairs=Dataset.from_list([dict(prompt=u, completion=r) for u, r in zip(user, reply)]),
              prompts=Dataset.from_list([dict(prompt=u) for u in user]),
              preferences=Dataset.from_list([dict(prompt=u, chosen=r, rejected=[{"role": "assistant", "content": "no"}])
                                             for u, r in zip(user, reply)]),
              GKDConfig=GKDConfig, SFTConfig=SFTConfig, DistillationConfig=DistillationConfig, DPOConfig=DPOConfig)
    before = [p.detach().clone() for p in student.parameters()]
    tok.padding_side = "left"  # DistillationTrainer asks for it; the others pad themselves
    try:
        exec(block("from kdi_fast.losses import CIP"), ns)
        exec(block("from trl import DPOTrainer"), ns)
    finally:
        tok.padding_side = "right"
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
