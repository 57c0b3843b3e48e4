"""The model output v(x_T) = log(p / (1 - p)), p the geometric mean of the target-token probabilities.

log p = mean_l log p(y*_l | x_T, y*_<l); v = lp - log(-expm1(lp)) (stable near p = 0 and p = 1). lp is clamped to
[log(eps), log(1 - eps)], so v is always finite: |v| <= log((1 - eps) / eps), about 16.12 for the default
eps = 1e-7. The clamp has zero gradient outside that range (a value that saturates does not train).
"""

from __future__ import annotations

import math

from torch import Tensor

from .. import reference

DEFAULT_EPS = 1e-7
"""The clamp of p to [eps, 1 - eps] before the log-odds."""


def values_from_logprobs(logprobs: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """v from per-token log-probs: logprobs [..., L] -> v [...] in float64 (differentiable)."""
    if logprobs.dim() == 0 or logprobs.shape[-1] == 0:
        raise ValueError(f"logprobs must be [..., L] with L >= 1 target tokens; got shape {tuple(logprobs.shape)}")
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    return reference.logodds_from_mean_logprob(logprobs.double().mean(-1), eps=eps)


def value_bound(eps: float = DEFAULT_EPS) -> float:
    """The largest |v| the clamp allows: log((1 - eps) / eps)."""
    return math.log((1.0 - eps) / eps)
