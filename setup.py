"""Build of kdi_fast: the Python package plus one compiled module, kdi_fast._C, built by CMake.

Environment:
  KDI_FAST_CUDA=auto|0|1   compile the CUDA sources (auto: nvcc found and the installed torch is a CUDA build)
  KDI_FAST_CUDA_ARCHS      CMAKE_CUDA_ARCHITECTURES (default 75;80;86;89;90;100;120)
  KDI_FAST_NATIVE=1        add -march=native (local builds only: the result will not run on other CPUs)
  KDI_FAST_DEBUG=1         build with debug symbols and without optimisation
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _version() -> str:
    text = (ROOT / "kdi_fast" / "_version.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def _want_cuda() -> bool:
    """Resolve KDI_FAST_CUDA: 1 forces CUDA on, 0 off, auto needs nvcc and a CUDA build of torch."""
    setting = os.environ.get("KDI_FAST_CUDA", "auto").strip().lower()
    if setting in ("1", "on", "true", "yes"):
        return True
    if setting in ("0", "off", "false", "no"):
        return False
    if setting != "auto":
        raise SystemExit(f"KDI_FAST_CUDA={setting!r} is not understood: use auto, 0 or 1.")
    nvcc = shutil.which("nvcc") or (
        os.environ.get("CUDA_HOME") and shutil.which("nvcc", path=os.path.join(os.environ["CUDA_HOME"], "bin"))
    )
    if not nvcc:
        return False
    try:  # torch is not importable inside an isolated build environment: then auto means CPU only.
        import torch

        return torch.version.cuda is not None
    except ImportError:
        return False


class CMakeExtension(Extension):
    def __init__(self, name: str, source_dir: Path):
        super().__init__(name, sources=[])
        self.source_dir = str(source_dir)


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        import pybind11

        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        build_dir = Path(self.build_temp).resolve() / ext.name
        out_dir = build_dir / "lib"
        build_dir.mkdir(parents=True, exist_ok=True)
        cuda = _want_cuda()
        config = "Debug" if os.environ.get("KDI_FAST_DEBUG") == "1" else "Release"
        args = [
            f"-DCMAKE_BUILD_TYPE={config}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY_{config.upper()}={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DKDI_FAST_CUDA={'ON' if cuda else 'OFF'}",
            f"-DKDI_FAST_NATIVE={'ON' if os.environ.get('KDI_FAST_NATIVE') == '1' else 'OFF'}",
            f"-DKDI_FAST_VERSION={_version()}",
        ]
        if os.environ.get("KDI_FAST_CUDA_ARCHS"):
            args.append(f"-DCMAKE_CUDA_ARCHITECTURES={os.environ['KDI_FAST_CUDA_ARCHS']}")
        if shutil.which("ninja"):
            args += ["-GNinja", f"-DCMAKE_MAKE_PROGRAM={shutil.which('ninja')}"]
        # A build folder configured by another environment (pip's isolated build environments live in temporary
        # folders that are gone by the next build) has a CMake cache pointing at missing tools: start afresh.
        stamp = build_dir / "kdi_fast_configure.json"
        configure = json.dumps([shutil.which("cmake"), ext.source_dir, *args])
        if stamp.exists() and stamp.read_text() != configure:
            shutil.rmtree(build_dir)
            build_dir.mkdir(parents=True)
        print(f"kdi_fast: building _C ({config}, CUDA {'on' if cuda else 'off'}) in {build_dir}", flush=True)
        subprocess.run(["cmake", "-S", ext.source_dir, "-B", str(build_dir), *args], check=True)
        stamp.write_text(configure)
        jobs = str(os.cpu_count() or 2)
        subprocess.run(["cmake", "--build", str(build_dir), "--config", config, "--parallel", jobs], check=True)
        # Copy, then rename: a running process importing kdi_fast._C never sees a half-written module.
        built = next(out_dir.glob("_C*" + Path(target).suffix))
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(built, partial)
        os.replace(partial, target)


setup(
    name="kdi_fast",
    version=_version(),
    description="Fast interactions (Harsanyi/Moebius) for explaining and improving knowledge distillation of LLMs",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["kdi_fast", "kdi_fast.*"]) + ["kdi_fast.kernels"],
    package_dir={"kdi_fast.kernels": "kernels"},
    package_data={"kdi_fast": ["data/*"]},
    ext_modules=[CMakeExtension("kdi_fast._C", ROOT)],
    cmdclass={"build_ext": CMakeBuild},
    install_requires=["torch>=2.4", "numpy", "tqdm", "scikit-learn"],
    extras_require={
        "triton": ["triton"],
        "models": ["transformers>=4.46", "safetensors", "accelerate", "gguf", "sentencepiece", "regex"],
        "metrics": ["sacrebleu", "rouge-score", "scipy", "matplotlib"],
        "data": ["reasoning-gym"],
        "trl": ["trl>=0.20"],
        "bench": ["pytest-benchmark", "shapiq", "matplotlib"],
        "dev": ["pytest", "pytest-benchmark", "hypothesis"],
    },
    entry_points={"console_scripts": ["kdi = kdi_fast.cli:main"]},
    zip_safe=False,
)
