"""Plain-torch reference implementations: the twin of every kernel, and what the tests compare backends with.

Everything here is written for clarity first; it is also the `torch` backend of the ops, so it is vectorised.
Notation (see DESIGN.md): a row of 2^n values is indexed by the bit mask of a subset (bit i = player i present).
"""

from __future__ import annotations

import torch
from torch import Tensor

# ----------------------------------------------------------------------------------------------------------
# Moebius / zeta transforms
# ----------------------------------------------------------------------------------------------------------


def butterfly_(x: Tensor, n: int, sign: int, superset: bool) -> Tensor:
    """In-place butterfly over the last dimension (2^n values) of a contiguous tensor; returns x.

    superset=False: for each bit i, a[mask] += sign * a[mask ^ bit] for masks with bit i set
    (sign=-1: Moebius v -> I; sign=+1: zeta I -> v). superset=True: the transposes, over supersets.
    """
    rows = x.numel() >> n if n > 0 else x.numel()
    for i in range(n):
        view = x.view(rows, 1 << (n - i - 1), 2, 1 << i)
        if superset:
            view[:, :, 0].add_(view[:, :, 1], alpha=sign)
        else:
            view[:, :, 1].add_(view[:, :, 0], alpha=sign)
    return x


def compact_butterfly_(x: Tensor, pairs: list[tuple[Tensor, Tensor]], sign: int, superset: bool) -> Tensor:
    """In-place butterfly in the compact layout (subsets of size <= k); pairs[b] = (dst, src) positions of
    S (containing bit b) and of S without b. Subset direction: x[dst] += sign x[src]; superset: x[src] += sign x[dst].
    """
    for dst, src in pairs:
        if superset:
            x.index_add_(-1, src, x.index_select(-1, dst), alpha=sign)
        else:
            x.index_add_(-1, dst, x.index_select(-1, src), alpha=sign)
    return x


def mobius(v: Tensor) -> Tensor:
    """Interactions I_S = sum_{S' subset of S} (-1)^{|S|-|S'|} v(S') along the last dim (length 2^n)."""
    n = v.shape[-1].bit_length() - 1
    return butterfly_(v.clone().contiguous(), n, -1, False)


def zeta(interactions: Tensor) -> Tensor:
    """Values v(T) = sum_{S subset of T} I_S along the last dim (length 2^n): the inverse of mobius."""
    n = interactions.shape[-1].bit_length() - 1
    return butterfly_(interactions.clone().contiguous(), n, +1, False)


# ----------------------------------------------------------------------------------------------------------
# The model output v(x_T) and the pieces of the masked forward
# ----------------------------------------------------------------------------------------------------------


def logodds_from_mean_logprob(mean_logprob: Tensor, eps: float = 1e-7) -> Tensor:
    """v = log(p / (1 - p)) with log p = mean_l log p(y*_l | ...), computed as lp - log(-expm1(lp)).

    lp is clamped to [log(eps), log(1 - eps)], so v stays finite (|v| <= log((1-eps)/eps) ~ 16.1 for 1e-7).
    """
    lp = mean_logprob.clamp(min=float(torch.log(torch.tensor(eps, dtype=torch.float64))),
                            max=float(torch.log1p(torch.tensor(-eps, dtype=torch.float64))))
    return lp - torch.log(-torch.expm1(lp))


def tokens_present(player_of_token: Tensor, masks: Tensor) -> Tensor:
    """Whether each token is present under each mask: player_of_token [T] (or [B, T]) int64, -1 for tokens that
    are not players (always present); masks [M] (or [B, M]) int64, bit i set = player i present, or (any number
    of players, one prompt) a bool matrix [M, n], column i = player i present.
    Returns [M, T] bool (or [B, M, T]). The one definition used by every masking strategy and op."""
    is_player = player_of_token >= 0
    bit = player_of_token.clamp(min=0)
    if masks.dtype == torch.bool:
        return masks[:, bit] | ~is_player[None, :]
    return ((masks[..., :, None] >> bit[..., None, :]) & 1).bool() | ~is_player[..., None, :]


def masked_embeddings(embeds: Tensor, player_of_token: Tensor, masks: Tensor, baseline: Tensor) -> Tensor:
    """The masked input batch: out[m, t] = embeds[t] if token t is kept under mask m, else baseline.

    embeds [T, H]; player_of_token [T] int64 (-1: not a player, always kept); masks [M] int64 (bit i = player i
    present); baseline [H] (or [T, H], one baseline per position). Returns [M, T, H].
    Batched, B prompts at once: embeds [B, T, H], player_of_token [B, T], masks [M] (shared) or [B, M],
    baseline [H], [T, H] or [B, T, H]. Returns [B, M, T, H].
    """
    present = tokens_present(player_of_token.to(masks.device), masks)  # [(B,) M, T]
    base = baseline.to(embeds.dtype).expand_as(embeds)
    return torch.where(present[..., None], embeds[..., None, :, :], base[..., None, :, :])


def target_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None,
                    chunk_size: int = 1024) -> Tensor:
    """log softmax(hidden @ weight.T + bias)[targets], never holding more than chunk_size x vocab logits.

    hidden [N, H]; weight [V, H] (the LM head); targets [N] int64; returns [N] float32 (float64 if hidden is).
    Differentiable (autograd recomputes per chunk through the stored graph).
    """
    out_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    pieces = []
    for start in range(0, hidden.shape[0], chunk_size):
        h = hidden[start:start + chunk_size]
        logits = (h @ weight.T).to(out_dtype)
        if bias is not None:
            logits = logits + bias.to(out_dtype)
        t = targets[start:start + chunk_size]
        pieces.append(logits.gather(-1, t[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1))
    if not pieces:
        return hidden.new_zeros(0, dtype=out_dtype)
    return torch.cat(pieces)
