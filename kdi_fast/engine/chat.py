"""The user's words in chat-formatted token ids: which tokens are the content of user messages, found from the
tokenizer's chat template (never from a mask the caller supplies).

The template is rendered once with probe messages (user, assistant, user) to find the text that opens a user
message's content (e.g. SmolLM2's "<|im_start|>user\\n") and the text that closes it ("<|im_end|>"). In a row of
token ids, the user content is every token whose text lies between an opener and the next closer: the default
system prompt, role markers, turn ends, the generation prompt and the assistant's turns are never in it.

    mask = user_content_mask(input_ids, tokenizer)   # [B, T] bool, or None (no chat template, or no user turn)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from .groups import token_table

__all__ = ["UserTurns", "user_turns", "user_content_mask"]

_PROBES = ("kdiprobefirstuser", "kdiprobeassistant", "kdiprobeseconduser")


@dataclass(frozen=True)
class UserTurns:
    """opener: the text right before a user message's content; closer: the text right after it."""

    opener: str
    closer: str


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _render(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)


def _find_user_turns(tokenizer) -> UserTurns | None:
    if not getattr(tokenizer, "chat_template", None):
        return None
    first, reply, second = _PROBES
    try:
        two = _render(tokenizer, [{"role": "user", "content": first}, {"role": "assistant", "content": reply}])
        three = _render(tokenizer, [{"role": "user", "content": first}, {"role": "assistant", "content": reply},
                                    {"role": "user", "content": second}])
    except Exception as err:  # a template that refuses the probe conversation (a jinja error of its own)
        warnings.warn(f"the tokenizer's chat template could not be rendered ({type(err).__name__}: {err}); CIP's "
                      f"players are then all prompt words, template tokens included", UserWarning, stacklevel=3)
        return None
    if not all(p in three for p in _PROBES):
        warnings.warn("the tokenizer's chat template rewrites the message text, so user content cannot be located; "
                      "CIP's players are then all prompt words, template tokens included", UserWarning, stacklevel=3)
        return None
    after_reply = two[two.index(reply) + len(reply):]  # the assistant turn's end
    between = three[three.index(reply) + len(reply):three.index(second)]  # assistant end + the user opener
    opener = between[len(_common_prefix(between, after_reply)):]
    after_first = three[three.index(first) + len(first):three.index(reply)]
    after_second = three[three.index(second) + len(second):]
    closer = _common_prefix(after_first, after_second).rstrip()  # "<|im_end|>": whatever follows may vary
    if not opener.strip() or not closer.strip():
        return None
    return UserTurns(opener, closer)


@lru_cache(maxsize=8)
def _cached(tokenizer) -> UserTurns | None:
    return _find_user_turns(tokenizer)


def user_turns(tokenizer) -> UserTurns | None:
    """The opener and closer of user messages in `tokenizer`'s chat template, or None without one."""
    try:
        return _cached(tokenizer)
    except TypeError:  # an unhashable tokenizer
        return _find_user_turns(tokenizer)


def user_content_mask(input_ids: Tensor, tokenizer) -> Tensor | None:
    """[B, T] bool: the tokens lying inside a user message's content (openers and closers excluded; a token
    that straddles a boundary is out). Rows without a user turn are all False; None when the tokenizer has no
    chat template or no row holds a user turn (plain text: every token may then be a player)."""
    turns = user_turns(tokenizer) if tokenizer is not None else None
    if turns is None:
        return None
    table = token_table(tokenizer)
    rows = input_ids.reshape(-1, input_ids.shape[-1]) if input_ids.dim() > 1 else input_ids[None]
    out = torch.zeros(rows.shape, dtype=torch.bool)
    found = False
    for b, row in enumerate(rows.tolist()):
        text, spans = table.spans(row)
        regions, at = [], text.find(turns.opener)
        while at >= 0:
            start = at + len(turns.opener)
            end = text.find(turns.closer, start)
            end = len(text) if end < 0 else end
            regions.append((start, end))
            at = text.find(turns.opener, end)
        found |= bool(regions)
        for t, (a, z) in enumerate(spans):
            out[b, t] = a < z and any(start <= a and z <= end for start, end in regions)
    if not found:
        return None
    return out.reshape(input_ids.shape).to(input_ids.device)
