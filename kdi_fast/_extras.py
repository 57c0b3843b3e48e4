"""Optional dependencies: which pip extra brings each one, and a one-line ImportError with the pip command.

    with needs("models"):
        from transformers import AutoTokenizer

raises, when transformers is missing: ImportError("transformers is not installed; it comes with kdi_fast's
'models' extra: pip install 'kdi_fast[models]'"). Import errors of other modules pass through unchanged.
"""

from __future__ import annotations

import contextlib

EXTRAS: dict[str, tuple[str, ...]] = {
    "models": ("transformers", "safetensors", "accelerate", "gguf", "tokenizers", "huggingface_hub"),
    "metrics": ("sacrebleu", "rouge_score", "scipy", "matplotlib"),
    "data": ("reasoning_gym",),
    "trl": ("trl",),
    "triton": ("triton",),
}
"""extra -> the top-level modules it installs (as imported, e.g. rouge_score for the rouge-score package)."""


def install_hint(extra: str) -> str:
    return f"pip install 'kdi_fast[{extra}]'"


@contextlib.contextmanager
def needs(extra: str):
    """Turn a ModuleNotFoundError of one of `extra`'s modules into an ImportError naming the pip command."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; known: {sorted(EXTRAS)}")
    try:
        yield
    except ModuleNotFoundError as err:
        top = (err.name or "").split(".")[0]
        if top not in EXTRAS[extra]:
            raise
        raise ImportError(f"{top} is not installed; it comes with kdi_fast's {extra!r} extra: "
                          f"{install_hint(extra)}") from err
