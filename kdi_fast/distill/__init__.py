"""Distillation runs on transformers.Trainer: methods (sft, kd, rkl, abkd, seqkd, gkd, imitkd, distillm, minillm),
optional CIP, exact resume, multi-process (torchrun / accelerate launch), and the end-of-run evaluation (ROUGE-L,
agreement, fidelity, interactions of teacher / student before / after).

    from kdi_fast.distill import DistillConfig, distill, build_student, load_examples
    student = build_student(teacher, "layers:6")
    run = distill(teacher, student, tokenizer, load_examples("instruct:200"), "runs/kd", DistillConfig("kd", steps=50))
"""

from .config import DistillConfig
from .datasets import Example, INSTRUCT_TASKS, answer_extractor, load_examples
from .methods import METHODS, Method, get_method
from .run import DistillRun, distill
from .students import build_student, parse_recipe
from .trainer import DistillTrainer, RunInterrupted

__all__ = ["DistillConfig", "DistillRun", "DistillTrainer", "Example", "INSTRUCT_TASKS", "METHODS", "Method",
           "RunInterrupted", "answer_extractor", "build_student", "distill", "get_method", "load_examples",
           "parse_recipe"]
