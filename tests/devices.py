"""The devices tests run on: CPU always, CUDA when this machine has it (as pytorch_scatter's test utilities do).

    @pytest.mark.parametrize("device", DEVICES)
    def test_something(device): ...

The CUDA case is always listed; on a machine without CUDA it is skipped (expected on CPU-only CI), and the CPU
case still runs. Tests whose op dispatches by device (Triton on CUDA, torch on CPU) build their tensors on
`device`, never assuming CPU tensors.
"""

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

DEVICES = [
    pytest.param(torch.device("cpu"), id="cpu"),
    pytest.param(torch.device("cuda"), id="cuda",
                 marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device here (expected on CPU-only CI)")),
]
