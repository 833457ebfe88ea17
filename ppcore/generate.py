"""Greedy generation: pruning decided once on the prompt (`prefill`), reused while decoding (`decode_one_token`).

The prefill is an ordinary walk that also captures each layer's keep-sets and its keys and values.
Each decode step then runs one token per sample through the same slices with the walk's layer loop
(`ppcore.layer_step.run_layers`), writing one column of a cache allocated once for the whole
continuation (`ppcore.kv_cache.KVCache`); no step synchronises host and device, and whether every
row has reached its EOS is asked only every `EOS_CHECK_EVERY` steps. Prompts are left-padded so every
row's next token sits in the same column; the walk runs them with real tokens first (so PP decides as
it would on the unpadded prompts), and the cache carries each key's position and padding, so decoding
masks pads and follows each layer's sliding window.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor

from . import clock
from .adapters import Adapter, LayerWeights, Rotaries
from .blocks import Block
from .errors import DataError, NonFiniteError
from .layer_step import LayerHooks, finite_flag, run_layers
from .masks import decode_key_mask
from .methods import Decision, Pruner
from .record import BatchRecord
from .kv_cache import KVCache
from .walk import Capture, walk

EOS_CHECK_EVERY = 8  # decode steps between two checks of whether every row has ended (a host sync)


@dataclass
class Generation:
    """New tokens per prompt (up to and including an EOS) and what they cost.

    prefill_s / decode_s: seconds on ppcore.clock; prompt_tokens: real (non-pad) prompt tokens;
    decode_steps: steps after the first new token; record: the prefill's decisions (None at level "none").
    """

    tokens: list[list[int]]
    prefill_s: float
    decode_s: float
    prompt_tokens: int
    decode_steps: int
    batch: int
    record: Optional[BatchRecord]

    @property
    def prefill_tokens_per_s(self) -> float:
        """Prompt tokens per second of prefill (NaN when it took no measurable time)."""
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else float("nan")

    @property
    def decode_tokens_per_s(self) -> float:
        """New tokens per second over all samples while decoding (NaN without a decode step)."""
        return self.batch * self.decode_steps / self.decode_s if self.decode_s > 0 else float("nan")


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Prompts as (B, L) long ids, left-padded with `pad_id`, and their (B, L) 0/1 mask (L: longest prompt).

    Raises DataError for no prompts or an empty one.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise DataError("every prompt needs at least one token")
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), L, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):] = torch.tensor(p)
        mask[i, L - len(p):] = 1
    return ids, mask


@dataclass
class DecodeState:
    """What decoding carries from step to step: the prefill's decisions, the preallocated key/value cache
    (with each cached key's token position and realness) and each row's latest position (B, 1).
    `windows`: the model's distinct sliding windows."""

    decisions: list[dict[str, Decision]]
    cache: KVCache
    pos: Tensor
    padded: bool
    windows: tuple[int, ...]


class _StepInputs:
    """A decode step's `AttnInputs`: the new tokens' rotary and a key mask per sliding window."""

    def __init__(self, rot: Optional[Rotaries], masks: dict[Optional[int], Optional[Tensor]]) -> None:
        self.rot, self.masks = rot, masks

    def attn_mask(self, window: Optional[int]) -> Optional[Tensor]:
        return self.masks[window]

    def move_to(self, device: torch.device) -> None:
        self.rot = None if self.rot is None else {k: (c.to(device), s.to(device)) for k, (c, s) in self.rot.items()}
        self.masks = {w: None if m is None else m.to(device) for w, m in self.masks.items()}


class _Reuse(LayerHooks):
    """A decode step's hooks: the prompt's decisions, with their weights."""

    def __init__(self, pruner: Pruner, decisions: list[dict[str, Decision]]) -> None:
        self.pruner, self.decisions = pruner, decisions

    def decide(self, layer: int, block: Block, w: LayerWeights, resid: Tensor, x: Tensor) -> Decision:
        return _with_slice(self.pruner, layer, block, w, self.decisions[layer][block.name])


def prefill(adapter: Adapter, pruner: Pruner, ids: Tensor, mask: Tensor, level: str = "summary", new_tokens: int = 1,
            update_history: bool = True) -> tuple[Tensor, DecodeState, Optional[BatchRecord], Tensor]:
    """The prompt through the walk, deciding every block once; returns the first new token per row (B, 1),
    the state decoding continues from (its cache room for `new_tokens` - 1 more tokens), the walk's record
    and a 0-d bool (False: the logits were not finite).

    `ids`, `mask` (B, L): left-padded prompts (`left_pad`). `update_history` False: PP's history is left as
    it was, so a warm-up or a timing repeat does not change what the next run decides. docs/algorithm.md
    §1-5. Raises what `walk` raises.
    """
    dev = adapter.device
    cap = Capture()
    res = walk(adapter, pruner, ids, mask, level=level, capture=cap, update_history=update_history)
    lg = adapter.head(res.hidden[:, -1:])
    nxt = lg.argmax(-1).to(dev)  # (B, 1)
    # The prefill ran in the walk's layout (each row's real tokens first); the cache is in that layout,
    # so every cached key carries its token position and a flag for real tokens.
    B, cached = ids.shape[0], cap.kv[0][0].shape[2] if cap.kv else ids.shape[1]
    key_valid = (torch.ones(B, cached, dtype=torch.bool, device=dev) if cap.valid is None
                 else cap.valid.to(dev).bool())
    key_pos = torch.arange(cached, device=dev)[None].expand(B, cached)
    pos = key_valid.sum(1, keepdim=True) - 1  # (B, 1): position of each prompt's last token
    windows = tuple(sorted({w for w in adapter.windows if w is not None}))
    cache = KVCache(cap.kv, key_valid, key_pos, cached + max(new_tokens - 1, 0))
    state = DecodeState(cap.decisions, cache, pos, padded=cap.valid is not None, windows=windows)
    return nxt, state, res.record, finite_flag(lg)


def decode_one_token(adapter: Adapter, pruner: Pruner, state: DecodeState, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """One greedy step: `tokens` (B, 1), the latest token of each row, through every layer on the prompt's
    slices, writing one column of the cache; returns the logits (B, 1, vocab) on the head's device and a 0-d
    bool (False: the residual or the logits were not finite). Raises IndexError when the cache is full.
    No host-device sync."""
    cache = state.cache
    pos = state.pos + 1
    cache.add_key(pos)  # raises IndexError when full, before any state changes
    state.pos = pos
    # Keys a new token may see: real ones, and within a sliding layer's window (HF's p - w < q <= p).
    masks = {w: decode_key_mask(cache.key_valid, cache.key_pos, state.pos, w, state.padded)
             for w in (None, *state.windows)}
    h = adapter.embed(tokens, state.pos)
    inputs = _StepInputs(adapter.rotary(h, state.pos), masks)
    h, flags = run_layers(adapter, h, inputs, _Reuse(pruner, state.decisions), store=cache, flag_every_layer=False)
    cache.commit()
    lg = adapter.head(adapter.final(h))
    # inf or NaN in the residual or the logits (an fp16 LM head can overflow on finite inputs).
    dev = state.pos.device
    return lg, flags[-1].to(dev) & finite_flag(lg).to(dev)


@torch.inference_mode()
def generate(adapter: Adapter, pruner: Pruner, prompts: list[list[int]], max_new_tokens: int = 32,
             pad_id: int = 0, eos_id: Optional[int] = None, level: str = "summary",
             update_history: bool = True) -> Generation:
    """Greedy continuation of each prompt (token ids); decisions from the prompt, reused for every new token.

    Up to `max_new_tokens` per prompt; a row stops after `eos_id`. docs/algorithm.md §1-5 (decided once,
    on the prompt). `update_history` False: the prefill leaves PP's history as it was, so the same Pruner
    can run the same prompt again (a warm-up, timing repeats) and decide exactly as it did. Raises DataError
    (no prompt, an empty one, max_new_tokens < 1, or more tokens than the model's context) and
    NonFiniteError when a new token's activations or logits are inf or NaN.
    """
    if max_new_tokens < 1:
        raise DataError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    dims = adapter.dims
    ids, mask = left_pad(prompts, pad_id)
    if dims.max_positions and ids.shape[1] + max_new_tokens > dims.max_positions:
        raise DataError(f"prompt plus {max_new_tokens} new tokens exceeds the model's context of {dims.max_positions}")
    dev = adapter.device
    t0 = clock.now(dev)
    nxt, state, record, ok = prefill(adapter, pruner, ids, mask, level, max_new_tokens, update_history)
    finite: list[Tensor] = [ok]  # per token, read once at the end
    prefill_s = clock.now(dev) - t0
    out = [nxt]
    done = torch.zeros(len(prompts), dtype=torch.bool, device=dev)
    if eos_id is not None:
        done |= nxt[:, 0] == eos_id
    t1 = clock.now(dev)
    steps = 0
    for _ in range(max_new_tokens - 1):
        # Whether every row has ended costs a host sync: asked every few tokens, and only with an EOS.
        if eos_id is not None and steps % EOS_CHECK_EVERY == 0 and bool(done.all()):
            break
        lg, ok = decode_one_token(adapter, pruner, state, nxt)
        finite.append(ok)
        nxt = lg.argmax(-1).to(dev)
        if eos_id is not None:
            nxt = torch.where(done[:, None], torch.full_like(nxt, eos_id), nxt)
            done |= nxt[:, 0] == eos_id
        out.append(nxt)
        steps += 1
    decode_s = clock.now(dev) - t1  # every step run, those after the last EOS (until the next check) included
    new = torch.cat(out, 1).tolist()
    if eos_id is not None:
        new = [row[: row.index(eos_id) + 1] if eos_id in row else row for row in new]
    # Finiteness of the tokens returned (finite[i] is new token i + 1's): steps run after every row ended
    # produce nothing, so they cannot fail the generation.
    ok = torch.stack([f.to(dev) for f in finite[:max(len(row) for row in new)]])
    if not bool(ok.all()):
        raise NonFiniteError(f"generation became non-finite (inf or NaN) at new token {int((~ok).nonzero()[0, 0]) + 1} "
                             f"in {str(adapter.dtype).replace('torch.', '')}; load the model in bfloat16 or float32")
    return Generation(new, prefill_s, decode_s, int(sum(len(p) for p in prompts)), steps, len(prompts), record)


def _with_slice(pruner: Pruner, layer: int, block: Block, w: LayerWeights, d: Decision) -> Decision:
    """The prompt's decision with its weights: as captured, or rebuilt for an offloaded layer."""
    if d.slice is not None:
        return d
    if d.kept is None:
        return replace(d, slice=pruner.full_slice(layer, block, w))
    return replace(d, slice=block.slice(w, pruner.dims, d.kept))
