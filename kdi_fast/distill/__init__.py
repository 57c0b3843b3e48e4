"""Distillation runs on transformers.Trainer: methods (sft, kd, rkl, abkd, seqkd, gkd, imitkd, distillm, minillm),
optional CIP, exact resume, multi-process (torchrun / accelerate launch), and the end-of-run evaluation (ROUGE-L,
agreement, fidelity, interactions of teacher / student before / after).

    from kdi_fast.distill import DistillConfig, distill, build_student, load_examples
    student = build_student(teacher, "layers:6")
    run = distill(teacher, student, tokenizer, load_examples("instruct:200"), "runs/kd", DistillConfig("kd", steps=50))
"""

import importlib

# Where each public name lives. Imported on first use, so that `kdi --help` and the other subcommands work
# without transformers (the Trainer-based modules need it; the method table does not).
_EXPORTS = {
    "DistillConfig": "config", "Example": "datasets", "INSTRUCT_TASKS": "datasets", "answer_extractor": "datasets",
    "load_examples": "datasets", "METHODS": "methods", "Method": "methods", "get_method": "methods",
    "DistillRun": "run", "distill": "run", "build_student": "students", "parse_recipe": "students",
    "DistillTrainer": "trainer", "RunInterrupted": "trainer",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


__all__ = ["DistillConfig", "DistillRun", "DistillTrainer", "Example", "INSTRUCT_TASKS", "METHODS", "Method",
           "RunInterrupted", "answer_extractor", "build_student", "distill", "get_method", "load_examples",
           "parse_recipe"]
