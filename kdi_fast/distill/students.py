"""Students from a recipe string: a subset of the teacher's layers, a smaller fresh config, or a saved model."""

from __future__ import annotations

from pathlib import Path

from torch import nn

__all__ = ["build_student", "parse_recipe"]

_RECIPE_HELP = ("a student is 'layers:0,5,10,15,20,29' (those teacher layers), 'layers:6' (6 evenly spaced "
                "teacher layers), 'fresh:num_hidden_layers=4,hidden_size=256,...' (the teacher's architecture "
                "with that config and random weights), or the path of a saved model directory")


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def parse_recipe(recipe: str) -> tuple[str, object]:
    """("layers", int | list[int]) or ("fresh", dict) or ("path", Path); ValueError for a malformed recipe."""
    if not isinstance(recipe, str) or not recipe.strip():
        raise ValueError(f"empty student recipe: {_RECIPE_HELP}")
    kind, _, rest = recipe.partition(":")
    if kind == "layers" and rest:
        try:
            parts = [int(p) for p in rest.split(",")]
        except ValueError:
            raise ValueError(f"bad student recipe {recipe!r}: {_RECIPE_HELP}") from None
        return "layers", parts[0] if len(parts) == 1 else parts
    if kind == "fresh" and rest:
        overrides = {}
        for item in rest.split(","):
            key, eq, val = item.partition("=")
            if not eq or not key.strip() or not val.strip():
                raise ValueError(f"bad student recipe {recipe!r}: expected key=value pairs; {_RECIPE_HELP}")
            overrides[key.strip()] = _value(val.strip())
        return "fresh", overrides
    if Path(recipe).exists():
        return "path", Path(recipe)
    raise ValueError(f"student {recipe!r} is not a recipe nor an existing path: {_RECIPE_HELP}")


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
