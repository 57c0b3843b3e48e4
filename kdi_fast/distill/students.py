"""Students from a recipe string: a subset of the teacher's layers, a smaller fresh config, or a saved model."""

from __future__ import annotations

from pathlib import Path

from torch import nn

__all__ = ["build_student", "parse_recipe"]


def parse_recipe(recipe: str) -> tuple[str, object]:
    """("layers", int | list[int]) or ("fresh", dict) or ("path", Path): kdi_fast.models.parse_student (the one
    recipe parser), with a saved model's directory checked here; ValueError for a malformed recipe."""
    from ..models import STUDENT_RECIPES, parse_student

    kind, spec = parse_student(recipe)
    if kind != "model":
        return kind, spec
    if not Path(spec).exists():
        raise ValueError(f"student {recipe!r} is not a recipe nor an existing path: give {STUDENT_RECIPES}")
    return "path", Path(spec)


def build_student(teacher: nn.Module, recipe: str, *, seed: int = 0) -> nn.Module:
    """The student described by `recipe` (see parse_recipe), in float32 on the teacher's device."""
    from ..models import fresh_student, load_model, student_from_teacher

    kind, spec = parse_recipe(recipe)
    if kind == "layers":
        student = student_from_teacher(teacher, spec)
    elif kind == "fresh":
        student = fresh_student(teacher, seed=seed, **spec)
    else:
        student = load_model(spec)
    if student.config.vocab_size != teacher.config.vocab_size:
        raise ValueError(f"the student's vocabulary ({student.config.vocab_size}) differs from the teacher's "
                         f"({teacher.config.vocab_size}); distillation here needs a shared tokenizer")
    return student.requires_grad_(True).to(next(teacher.parameters()).device)  # trainable even if the teacher is frozen
