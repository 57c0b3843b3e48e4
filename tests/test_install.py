"""What a user installing the wheel meets: a missing extra names the pip command; the TRL integration leaves the
process environment alone."""

import os
import subprocess
import sys

import pytest
import torch

from kdi_fast import _extras, models
from kdi_fast.metrics import text


@pytest.mark.parametrize("module, extra, call", [
    ("sacrebleu", "metrics", lambda: text.fidelity(["a b"], ["a b"])),
    ("transformers", "models", lambda: models.tiny_causal_lm("llama")),
    ("scipy", "metrics", lambda: __import__("kdi_fast.metrics.stats", fromlist=["x"]).spearman([1, 2, 3], [1, 3, 2])),
])
def test_a_missing_extra_names_the_pip_command(monkeypatch, module, extra, call):
    for name in {module, *(m for m in sys.modules if m.startswith(module + "."))}:
        monkeypatch.setitem(sys.modules, name, None)  # `import module` now fails as if it were not installed
    with pytest.raises(ImportError, match=rf"{module} is not installed; .*pip install 'kdi_fast\[{extra}\]'"):
        call()


def test_other_import_errors_pass_through():
    with pytest.raises(ModuleNotFoundError, match="not_a_module"):
        with _extras.needs("models"):
            import not_a_module  # noqa: F401
    with pytest.raises(ValueError, match="unknown extra"):
        with _extras.needs("nope"):
            pass


def test_importing_the_trl_integration_sets_no_environment_variable():
    """TRL's own imports may touch the environment (torch's inductor sets its cache dir); ours add nothing."""
    script = ("import os\nimport trl, trl.experimental.gkd\nbefore = dict(os.environ)\n"
              "from kdi_fast.integrations import trl as ours\nours.CIPSFTTrainer, ours.CIPGKDTrainer\n"
              "changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))\n"
              "print('CHANGED', changed)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRL_EXPERIMENTAL_SILENCE"}
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", script], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "CHANGED []" in out.stdout, out.stdout


def test_no_unused_runtime_dependency():
    """Every package setup.py requires at install is imported by the package (rich was listed and never used)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    required = re.search(r"install_requires=\[([^\]]*)\]", (root / "setup.py").read_text()).group(1)
    names = [re.split(r"[<>=!\[ ]", n.strip().strip('"'))[0] for n in required.split(",") if n.strip()]
    source = "\n".join(p.read_text() for p in (root / "kdi_fast").rglob("*.py"))
    module_of = {"scikit-learn": "sklearn"}  # distributions whose import name differs
    for name in names:
        module = module_of.get(name, name)
        assert re.search(rf"^\s*(import|from) {module}\b", source, re.M), f"{name} is required but never imported"
    assert torch  # the first of them


def test_the_cli_builds_without_the_model_extras():
    """`kdi --help` and every subcommand's parser work in an install without transformers/TRL/accelerate
    (the wheel test's fresh venv has only torch): heavy modules are imported when a command runs."""
    code = ("import sys\n"
            "for m in ('transformers', 'trl', 'accelerate', 'datasets', 'peft'):\n"
            "    sys.modules[m] = None\n"
            "from kdi_fast.cli import build_parser\n"
            "build_parser().parse_args(['distill', '--out', 'x'])\n"
            "import kdi_fast.distill\n"
            "print(sorted(kdi_fast.distill.METHODS))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "'kd'" in out.stdout
