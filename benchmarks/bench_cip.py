"""Benchmark of the CIP loss: what one training step costs with and without it, against the passes it needs.

    python benchmarks/bench_cip.py [--quick] [--repeats N] [--only tiny-gpt2|smollm2-student] [--device cpu|cuda]
                                   [--threads N] [--output STEM]

A training step here is forward + loss + backward (the optimizer step is the same with and without CIP).
Per model and m in (3, 4), on GSM-style problems (reasoning-gym; question = prompt, " " + answer = y*):
  kd          student forward, teacher forward (no grad), forward KL (kdi_fast kd_loss), backward
  kd+cip      the same plus CIP(m) reusing the student's forward (its final hidden states; the student is called
              with output_hidden_states=True in both rows), so 2^m - 1 masked forwards run
  anchor      the inherent work: one plain batched forward + backward of the 2^m masked inputs per prompt
              (token masking, the model's own call with its full LM head, sum of the target log-probs)
  anchor_lean the same with the LM head only at the target positions (decoder + kdi_fast target_logprobs)
The CIP cost is time(kd+cip) - time(kd); the target of issue 5 is cost <= 1.2 x anchor. Configurations are
timed interleaved, one of each per round, and the ratios are paired: per round, that round's CIP cost over
that round's anchor; the median over the rounds is reported with its quartiles (other jobs share this
machine and its load drifts over minutes, which pairing within a round cancels). On CPU the clock is the
process's CPU time (less disturbed than wall time; wall times are in the JSON too); on CUDA, wall time. Models: a tiny GPT-2 (2 layers, width 64, SmolLM2's vocabulary; teacher 4 layers, width 128)
and a student of SmolLM2-135M-Instruct keeping 8 of its 30 layers (teacher: the full model).

Writes benchmarks/results/cip.json and cip.csv (atomically), with the machine.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from _common import machine, results_dir, write_text_atomic
from kdi_fast.data import load_gsm_symbolic
from kdi_fast.engine import forward as engine_forward
from kdi_fast.losses import CIP, kd_loss
from kdi_fast.models import load_model, load_tokenizer, student_from_teacher, tiny_causal_lm

TARGET_RATIO = 1.2




def make_batch(tokenizer, size: int, device: str) -> dict:
    """Right-padded GSM-style batch: labels = the answer tokens (y*), -100 on the question and the padding."""
    rows = []
    for item in load_gsm_symbolic(size, seed=0):
        prompt = tokenizer(item["question"]).input_ids
        answer = tokenizer(" " + item["answer"]).input_ids
        rows.append((prompt + answer, [-100] * len(prompt) + answer))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    batch = {"input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows]),
             "labels": torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows]),
             "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])}
    return {k: v.to(device) for k, v in batch.items()}


def masked_anchor_inputs(cip: CIP, model, batch: dict) -> dict:
    """The 2^m token-masked copies of each prompt (cut after its last target), for the anchors."""
    plans = cip._plans(batch["input_ids"], batch["attention_mask"], batch["labels"], None, step=0)
    length = max(int(p.target_positions[-1]) + 1 for p in plans)
    ids, attn, rows, positions, targets = [], [], [], [], []
    pad = model.config.pad_token_id
    for plan in plans:
        k = plan.k
        masks = torch.arange(1 << k, device=batch["input_ids"].device)
        player = plan.player_of_token[:length].to(masks.device)
        present = ((masks[:, None] >> player.clamp(min=0)[None]) & 1).bool() | (player < 0)[None]
        base = batch["input_ids"][plan.index, :length]
        ids.append(torch.where(present, base[None], torch.full_like(base, pad)[None]))
        attn.append(batch["attention_mask"][plan.index, :length].expand(1 << k, length))
        for _ in range(1 << k):
            rows.append(len(rows))
            positions.append(plan.target_positions.to(masks.device))
            targets.append(plan.target_ids.to(masks.device))
    seq = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor([p.numel() for p in positions]))
    return {"input_ids": torch.cat(ids), "attention_mask": torch.cat(attn), "length": length,
            "seq": seq.to(masks.device), "pos": torch.cat(positions), "tgt": torch.cat(targets)}


def step_kd(student, teacher, batch, cip: CIP | None = None) -> None:
    outputs = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    with torch.no_grad():
        teacher_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = kd_loss(outputs.logits, teacher_logits, batch["labels"], shift_labels=True).mean()
    if cip is not None:
        loss = loss + cip(student, batch, outputs, step=0)
    loss.backward()
    student.zero_grad(set_to_none=True)


def step_anchor(student, masked: dict) -> None:
    logits = student(input_ids=masked["input_ids"], attention_mask=masked["attention_mask"]).logits
    flat = logits.reshape(-1, logits.shape[-1])[masked["seq"] * masked["length"] + masked["pos"] - 1]
    torch.log_softmax(flat.float(), -1).gather(-1, masked["tgt"][:, None]).sum().backward()
    student.zero_grad(set_to_none=True)


def step_anchor_lean(student, masked: dict) -> None:
    hidden = student.base_model(input_ids=masked["input_ids"], attention_mask=masked["attention_mask"],
                                use_cache=False).last_hidden_state
    flat = hidden.reshape(-1, hidden.shape[-1])[masked["seq"] * masked["length"] + masked["pos"] - 1]
    weight, bias = engine_forward.lm_head(student)
    engine_forward.ops.target_logprobs(flat, weight, masked["tgt"], bias).sum().backward()
    student.zero_grad(set_to_none=True)


def timed(fn, device: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    if device == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def run_setup(name: str, student, teacher, tokenizer, batch_size: int, repeats: int, device: str) -> list[dict]:
    batch = make_batch(tokenizer, batch_size, device)
    student.train()
    teacher.eval()
    configs = {"kd": lambda: step_kd(student, teacher, batch)}
    for m in (3, 4):
        cip = CIP(m, tokenizer=tokenizer, seed=0)
        masked = masked_anchor_inputs(cip, student, batch)
        configs[f"kd+cip m={m}"] = lambda cip=cip: step_kd(student, teacher, batch, cip)
        configs[f"anchor m={m}"] = lambda masked=masked: step_anchor(student, masked)
        configs[f"anchor_lean m={m}"] = lambda masked=masked: step_anchor_lean(student, masked)
    for fn in configs.values():  # warm-up
        fn()
    times = {key: [] for key in configs}
    for _ in range(repeats):
        for key, fn in configs.items():
            times[key].append(timed(fn, device))
    return summarise(name, batch_size, int(batch["input_ids"].shape[1]), times, device)


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return q1, q2, q3


def summarise(name: str, batch_size: int, seq_len: int, times: dict, device: str) -> list[dict]:
    """Per m: the median time of each configuration, and the paired ratios: per round, the CIP cost
    (kd+cip - kd) over each anchor of the same round; their median and quartiles over the rounds."""
    clock = 1 if device == "cpu" else 0  # the process's CPU time on a shared CPU; wall time on a GPU
    median = {key: statistics.median(t[clock] for t in values) for key, values in times.items()}
    rows = []
    for m in (3, 4):
        kd, cip = times["kd"], times[f"kd+cip m={m}"]
        cost = [c[clock] - k[clock] for c, k in zip(cip, kd)]
        over_anchor = [x / a[clock] for x, a in zip(cost, times[f"anchor m={m}"])]
        over_lean = [x / a[clock] for x, a in zip(cost, times[f"anchor_lean m={m}"])]
        qa, ql = _quartiles(over_anchor), _quartiles(over_lean)
        rows.append({
            "model": name, "m": m, "batch": batch_size, "seq_len": seq_len,
            "masked_sequences": (1 << m) * batch_size, "clock": "cpu" if clock else "wall",
            "kd_s": median["kd"], "kd_cip_s": median[f"kd+cip m={m}"], "cip_cost_s": statistics.median(cost),
            "anchor_s": median[f"anchor m={m}"], "anchor_lean_s": median[f"anchor_lean m={m}"],
            "cost_over_anchor": qa[1], "cost_over_anchor_q1": qa[0], "cost_over_anchor_q3": qa[2],
            "cost_over_anchor_lean": ql[1], "cost_over_anchor_lean_q1": ql[0], "cost_over_anchor_lean_q3": ql[2],
            "meets_target": qa[1] <= TARGET_RATIO,
            "rounds_wall_cpu": {key: times[key] for key in ("kd", f"kd+cip m={m}", f"anchor m={m}",
                                                             f"anchor_lean m={m}")},
        })
        r = rows[-1]
        print(f"{name:16s} m={m} ({r['clock']} s, medians): kd {r['kd_s']:.3f}  kd+cip {r['kd_cip_s']:.3f}  "
              f"anchor {r['anchor_s']:.3f}  anchor_lean {r['anchor_lean_s']:.3f}  cost/anchor "
              f"{qa[1]:.2f} [{qa[0]:.2f}, {qa[2]:.2f}]  cost/anchor_lean {ql[1]:.2f} [{ql[0]:.2f}, {ql[2]:.2f}]",
              flush=True)
    return rows




def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny GPT-2 only, 3 rounds")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per configuration (default 9)")
    parser.add_argument("--only", choices=["tiny-gpt2", "smollm2-student"], default=None)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--output", default=None, help="results stem (default: benchmarks/results/cip)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 9)
    device = args.device
    torch.manual_seed(0)
    tokenizer = load_tokenizer("smollm2")
    rows = []
    if args.only in (None, "tiny-gpt2"):
        student = tiny_causal_lm("gpt2", hidden_size=64, num_layers=2, seed=0).to(device)
        teacher = tiny_causal_lm("gpt2", hidden_size=128, num_layers=4, seed=1).to(device)
        rows += run_setup("tiny-gpt2", student, teacher, tokenizer, 4, repeats, device)
    if args.only in (None, "smollm2-student") and not args.quick:
        teacher = load_model("smollm2", device=device)
        student = student_from_teacher(teacher, 8)
        rows += run_setup("smollm2-student", student, teacher, tokenizer, 2, repeats, device)
    stem = Path(args.output) if args.output else results_dir(args.quick) / "cip"
    report = {"benchmark": "cip", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {**machine(), "device": device, "load_average": os.getloadavg()}, "repeats": repeats, "target_ratio": TARGET_RATIO, "rows": rows}
    write_text_atomic(stem.with_suffix(".json"), json.dumps(report, indent=2))
    buffer = io.StringIO()
    fields = [k for k in rows[0] if k != "rounds_wall_cpu"] if rows else []
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(stem.with_suffix(".csv"), buffer.getvalue())
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.csv')}")
    return 0 if all(r["meets_target"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
