"""benchmarks/gpu_check.sh plans the right steps (its dry run, on CPU) and its engine benchmark runs (CPU smoke)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_plans_every_step(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path), "PYTHON": sys.executable},
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    status = json.loads((tmp_path / "status.json").read_text())
    assert list(status) == ["build", "tests", "transform", "engine", "sparse_speed_embedding", "sparse_speed_attention"]
    assert all(step["status"] == "planned" for step in status.values())
    assert "KDI_FAST_CUDA_ARCHS" in status["build"]["detail"] and "-k" in status["tests"]["detail"]
    assert "--masking attention" in status["sparse_speed_attention"]["detail"]


def test_gpu_engine_benchmark_runs_and_both_paths_agree(tmp_path):
    out = tmp_path / "engine.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_engine.py"), "--device", "cpu",
                           "--dtype", "float64", "--n", "3", "--tokens", "12", "--layers", "1", "--repeats", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["max_abs_diff_logprob"] < 1e-9
    assert report["paths"]["prefix_tree"]["token_forwards"] < report["paths"]["flat"]["token_forwards"]


def test_sparse_speed_benchmark_on_random_weights_agrees_with_full_forwards(tmp_path):
    """The GPU step's command on CPU, tiny: the engine, its flat path and Hugging Face forwards give the same v."""
    out = tmp_path / "speed.json"
    prompt = ROOT / "benchmarks" / "data" / "sparse_speed_prompt.txt"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_sparse_speed.py"), "--random-weights",
                           "--layers", "1", "--n", "8", "--budgets", "40", "--rounds", "2", "--sample", "8",
                           "--hf-batch", "4", "--prompt-file", str(prompt), "--chat-template",
                           "--target", "The answer is", "--masking", "attention", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    row = report["rows"][0]
    assert report["model"].startswith("SmolLM2-135M's shape, random weights") and report["masking"] == "attention"
    assert row["masks"] == 40 and set(row["max_abs_difference"]) == {"flat", "hf_batch4", "hf_batch1"}
    assert max(row["max_abs_difference"].values()) < 1e-4
    assert report["shared_prefix_tokens"] > 0 and row["flat_token_share"] < 1
