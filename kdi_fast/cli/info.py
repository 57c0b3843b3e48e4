"""`kdi info`: the version, what was compiled, whether Triton is usable, and which backend each op uses."""

from __future__ import annotations

import argparse
import platform

import torch

from .. import _backend


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="what was built and which backend each op will use")
    p.set_defaults(run=run)


def report() -> str:
    from .. import ops  # noqa: F401  (registers the ops)
    from .._version import __version__

    lines = [f"kdi_fast {__version__}  (python {platform.python_version()}, torch {torch.__version__})"]
    info = _backend.build_info()
    if info:
        lines.append(f"compiled _C:  yes ({info['compiler']}), C++ CPU kernels, SIMD {info.get('simd', '?')} "
                     f"(chosen at run time; KDI_FAST_SIMD=avx2|baseline to force a lower one)")
        lines.append(f"  OpenMP:     {'yes, ' + str(info['openmp_threads']) + ' threads' if info['openmp'] else 'no'}"
                     f"  (torch uses {torch.get_num_threads()} threads; kdi_fast follows torch.set_num_threads)")
        lines.append(f"  CUDA:       {'yes, architectures ' + info['cuda_archs'] if info['cuda'] else 'no (CPU-only build)'}")
    else:
        lines.append(f"compiled _C:  no -- {_backend._compiled()[1]}")
    tv = _backend.triton_version()
    if tv is None:
        lines.append(f"triton:       no -- {_backend._triton()[1]}")
    else:
        where = "CUDA" if torch.cuda.is_available() else "no GPU"
        interp = ", interpreter on (TRITON_INTERPRET=1)" if _backend.triton_interpreting() else ""
        lines.append(f"triton:       {tv} ({where}{interp})")
    lines.append(f"torch CUDA:   {torch.cuda.get_device_name() if torch.cuda.is_available() else 'not available'}")
    forced = _backend.forced()
    lines.append(f"KDI_FAST_BACKEND: {forced or 'auto'}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    lines.append("")
    lines.append(f"{'op':<22}" + "".join(f"{d + ' tensors':<16}" for d in devices) + "implemented")
    for op, implemented in sorted(_backend.OPS.items()):
        chosen = []
        for d in devices:
            try:
                chosen.append(_backend.choose(op, torch.device(d)))
            except (RuntimeError, ValueError) as err:
                chosen.append(f"error: {err}")
        lines.append(f"{op:<22}" + "".join(f"{c:<16}" for c in chosen) + ", ".join(implemented))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    print(report())
    return 0
