"""Attention for a prefix tree of masked inputs, plugged into Hugging Face models (AttentionInterface).

The scheduler runs the decoder on one segment of the sequence at a time, for a batch of rows (tree nodes). A row
at level k is a setting of the first k players' bits; its keys are the stored keys of its ancestors at the
earlier levels followed by the segment's own keys. This module is the attention function the model calls in
every layer during such a forward: it stores the segment's keys/values (post-rotary, as the model made them) for
the next levels, gathers each row's ancestors' keys, and runs one scaled_dot_product_attention with a boolean
mask (causal inside the segment; removed tokens hidden under attention masking).

Gathering copies the ancestors' keys into the batch (index_select); on the 2-core CPU that copy measured under
2 % of a layer's time for a 64-row tail chunk of SmolLM2 (0.8 ms against ~15 ms of attention and ~230 ms of
projections/MLP), so the simpler gather + one fused attention call won over folding rows into queries and
merging per-segment softmaxes (no copy, but many small matmuls: slower here).

Models whose attention does something this function does not reproduce (sliding windows shorter than the
sequence, logit soft-capping, attention sinks, dropout) raise Unsupported; the scheduler then falls back to
plain forwards. The scheduler also checks that every layer called this function (models that bypass the
AttentionInterface are detected, never silently wrong).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .._extras import needs

ATTENTION_NAME = "kdi_fast_prefix_tree"
STATE_KWARG = "kdi_prefix_tree"

# Keyword arguments models pass to attention functions that do not change the result.
_HARMLESS = frozenset({"position_ids", "use_cache", "cache_position", "output_attentions", "output_hidden_states",
                       "return_dict", "is_causal", "position_embeddings", "past_key_values", "layer_idx"})


_SDPA_HAS_GQA = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")


class Unsupported(RuntimeError):
    """The model's attention does something the prefix-tree attention does not reproduce."""


@dataclass
class LevelKeys:
    """The keys/values of one level's segment (`length` tokens) for the tree nodes `nodes` (sorted ids)."""

    nodes: Tensor
    length: int
    keys: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)  # layer -> (K, V) [rows, h_kv, len, d]
    key_mask: Tensor | None = None  # [rows, len] bool (attention masking) or None


@dataclass
class TreeState:
    """What one decoder forward of the scheduler needs in every layer (built by begin())."""

    total_length: int
    history: dict[int, LevelKeys] = field(default_factory=dict)  # level -> stored keys of the current path
    level: int = 0
    calls: int = 0
    _ancestors: list[tuple[LevelKeys, Tensor | int]] = field(default_factory=list)
    _mask: Tensor | None = None
    _store: LevelKeys | None = None
    _buffers: dict = field(default_factory=dict)

    def begin(self, level: int, nodes: Tensor, length: int, key_mask: Tensor | None, store: bool,
              ancestor: Callable[[int], Tensor] | None = None) -> None:
        """Prepare a forward of the tree nodes `nodes` (sorted ids at `level`) over a segment of `length` tokens;
        key_mask [rows, length] bool marks the segment's tokens others may attend to (None: all).
        ancestor(j): the ids of the rows' ancestors at stored level j (default: nodes >> (level - j), the
        numbering of the scheduler's binary tree; engine.values passes the ids of its mask-set trie)."""
        for stale in [j for j in self.history if j >= level]:
            del self.history[stale]
        self.level, self.calls = level, 0
        rows, device = nodes.shape[0], nodes.device
        self._ancestors = []
        history_masks = []  # per stored level: [rows, len_j] bool, or None when every key is visible
        for j in sorted(self.history):
            stored = self.history[j]
            ancestors = nodes >> (level - j) if ancestor is None else ancestor(j)
            index = torch.searchsorted(stored.nodes, ancestors).clamp(max=stored.nodes.shape[0] - 1)
            if not bool((stored.nodes[index] == ancestors).all()):
                raise RuntimeError("prefix tree: a node's ancestor is not stored (scheduler bug)")
            shared = bool((index == index[0]).all())
            self._ancestors.append((stored, int(index[0]) if shared else index))
            history_masks.append(None if stored.key_mask is None else stored.key_mask.index_select(0, index))
        causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        history_length = sum(stored.length for stored, _ in self._ancestors)
        if key_mask is None and all(m is None for m in history_masks):  # one mask for every row
            visible = torch.ones(length, history_length, dtype=torch.bool, device=device)
            self._mask = torch.cat([visible, causal], 1)
        else:
            pieces = [torch.ones(rows, stored.length, dtype=torch.bool, device=device) if m is None else m
                      for (stored, _), m in zip(self._ancestors, history_masks)]
            history = torch.cat(pieces, 1) if pieces else torch.ones(rows, 0, dtype=torch.bool, device=device)
            own = causal.expand(rows, length, length)
            if key_mask is not None:
                own = own & key_mask[:, None, :]
            own = own | torch.eye(length, dtype=torch.bool, device=device)  # a removed token still sees itself
            self._mask = torch.cat([history[:, None, :].expand(rows, length, -1), own], 2)[:, None]
        self._store = LevelKeys(nodes, length, key_mask=key_mask) if store else None

    def buffer(self, name, shape: tuple, like: Tensor) -> Tensor:
        """A reused scratch tensor of `shape` for the gathered keys/values (no autograd): fresh allocations cost
        page faults on every forward (measured on the 2-core CPU: gather + cat were 30% of a 4-layer SmolLM2
        forward of a 64-row tail with 70 tokens of history; reused buffers remove most of it)."""
        store = self._buffers.get(name)
        size = math.prod(shape)
        if store is None or store.numel() < size or store.dtype != like.dtype or store.device != like.device:
            store = torch.empty(size, dtype=like.dtype, device=like.device)
            self._buffers[name] = store
        return store[:size].view(shape)

    def end(self, num_layers: int) -> None:
        """Check that every layer ran the prefix-tree attention, and keep this level's keys if asked."""
        if self.calls != num_layers:
            raise Unsupported(f"{self.calls} of {num_layers} attention layers used the prefix-tree attention (the "
                              f"model bypasses the AttentionInterface)")
        if self._store is not None:
            self.history[self.level] = self._store
        self._ancestors, self._mask, self._store = [], None, None


def prefix_tree_attention(module, query: Tensor, key: Tensor, value: Tensor, attention_mask, scaling=None,
                          dropout: float = 0.0, **kwargs):
    """The AttentionInterface function: query [B, h, q, d], key/value [B, h_kv, q, d] -> ([B, q, h, d], None)."""
    state: TreeState | None = kwargs.pop(STATE_KWARG, None)
    if state is None:
        raise RuntimeError(f"the {ATTENTION_NAME!r} attention runs only inside kdi_fast's scheduler")
    window = kwargs.pop("sliding_window", None)
    if window is not None and window < state.total_length:
        raise Unsupported(f"sliding-window attention (window {window} < {state.total_length} tokens)")
    extra = sorted(k for k, v in kwargs.items() if v is not None and k not in _HARMLESS)
    if extra:
        raise Unsupported(f"attention arguments {extra}")
    if dropout:
        raise Unsupported("attention dropout (the model is in training mode)")
    if attention_mask is not None or not getattr(module, "is_causal", True):
        raise Unsupported("a non-causal or model-made attention mask")
    layer = getattr(module, "layer_idx", None)
    if layer is None:
        raise Unsupported("an attention module without layer_idx")
    if state._store is not None:  # compact copies when they are views of a bigger buffer (GPT-2's fused qkv)
        state._store.keys[layer] = (_own_storage(key).contiguous(), _own_storage(value).contiguous())
    keys, values = [], []
    rows = query.shape[0]
    reuse = not torch.is_grad_enabled()  # out= buffers have no autograd; gradients (CIP) take fresh tensors
    for level, (stored, index) in enumerate(state._ancestors):
        k, v = stored.keys[layer]
        if isinstance(index, int):  # one ancestor for every row: a broadcast view, copied once by cat below
            keys.append(k[index:index + 1].expand(rows, -1, -1, -1))
            values.append(v[index:index + 1].expand(rows, -1, -1, -1))
        elif reuse:
            shape = (index.shape[0],) + tuple(k.shape[1:])
            keys.append(torch.index_select(k, 0, index, out=state.buffer(("k", layer, level), shape, k)))
            values.append(torch.index_select(v, 0, index, out=state.buffer(("v", layer, level), shape, v)))
        else:
            keys.append(k.index_select(0, index))
            values.append(v.index_select(0, index))
    keys.append(key)
    values.append(value)
    if len(keys) == 1:
        key_all, value_all = key, value
    elif reuse:
        shape = tuple(key.shape[:2]) + (sum(k.shape[2] for k in keys), key.shape[3])
        key_all = torch.cat(keys, 2, out=state.buffer(("K", layer), shape, key))
        value_all = torch.cat(values, 2, out=state.buffer(("V", layer), shape, value))
    else:
        key_all, value_all = torch.cat(keys, 2), torch.cat(values, 2)
    state.calls += 1
    groups = query.shape[1] // key.shape[1]
    if groups > 1 and not _SDPA_HAS_GQA:  # torch < 2.5: repeat the key/value heads
        key_all, value_all = key_all.repeat_interleave(groups, 1), value_all.repeat_interleave(groups, 1)
        groups = 1
    out = F.scaled_dot_product_attention(query, key_all, value_all, attn_mask=state._mask, scale=scaling,
                                         **({"enable_gqa": True} if groups > 1 else {}))
    return out.transpose(1, 2).contiguous(), None


def _own_storage(x: Tensor) -> Tensor:
    """x itself, or a contiguous copy when x is a view that keeps a larger buffer alive."""
    if x.untyped_storage().nbytes() > x.numel() * x.element_size():
        return x.contiguous() if not x.is_contiguous() else x.clone()
    return x


def register() -> None:
    """Register the attention function with transformers (idempotent)."""
    with needs("models"):
        from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, prefix_tree_attention)
