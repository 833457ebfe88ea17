"""Greedy generation: pruning decided once on the prompt (prefill), reused while decoding.

The prefill is an ordinary walk that also captures each layer's keep-sets and its keys and values
(only for the key/value heads the kept query heads read). Each decode step then runs one token per
sample through the same slices, appending to that cache. Prompts are left-padded so every row's
next token sits in the same column; the walk runs them with real tokens first (so PP decides as it
would on the unpadded prompts), and the cache carries each key's position and padding, so decoding
masks pads and follows each layer's sliding window.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor

from .adapters import Adapter, LayerWeights
from .blocks import attn_front, attn_out, mlp_front, mlp_out, slice_attn, slice_mlp
from .errors import DataError, NonFiniteError
from .methods import Decision, Pruner
from .record import BatchRecord
from .walk import Capture, walk


@dataclass
class Generation:
    tokens: list[list[int]]  # new tokens per prompt (up to and including an EOS)
    prefill_s: float
    decode_s: float
    prompt_tokens: int  # real (non-pad) prompt tokens
    decode_steps: int
    batch: int
    record: Optional[BatchRecord]  # the prefill's decisions

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else float("nan")

    @property
    def decode_tokens_per_s(self) -> float:
        return self.batch * self.decode_steps / self.decode_s if self.decode_s > 0 else float("nan")


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise DataError("every prompt needs at least one token")
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), L, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):] = torch.tensor(p)
        mask[i, L - len(p):] = 1
    return ids, mask


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def generate(adapter: Adapter, pruner: Pruner, prompts: list[list[int]], max_new_tokens: int = 32,
             pad_id: int = 0, eos_id: Optional[int] = None, level: str = "summary") -> Generation:
    """Greedy continuation of each prompt; decisions from the prompt, reused for every new token."""
    if max_new_tokens < 1:
        raise DataError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    dims = adapter.dims
    ids, mask = left_pad(prompts, pad_id)
    if dims.max_positions and ids.shape[1] + max_new_tokens > dims.max_positions:
        raise DataError(f"prompt plus {max_new_tokens} new tokens exceeds the model's context of {dims.max_positions}")
    dev = adapter.device
    cap = Capture()
    _sync(dev)
    t0 = time.perf_counter()
    res = walk(adapter, pruner, ids, mask, level=level, capture=cap)
    lg = adapter.head(res.hidden[:, -1:])
    finite: list[Tensor] = [torch.isfinite(lg.sum(dtype=torch.float32))]  # per token, read once at the end
    nxt = lg.argmax(-1).to(dev)  # (B, 1)
    _sync(dev)
    prefill_s = time.perf_counter() - t0

    # The prefill ran in the walk's layout (each row's real tokens first); the cache is in that layout,
    # so every cached key carries its token position and a flag for real tokens.
    B, cached = len(prompts), cap.kv[0][0].shape[2] if cap.kv else ids.shape[1]
    kval = (torch.ones(B, cached, dtype=torch.bool, device=dev) if cap.valid is None
            else cap.valid.to(dev).bool())
    kpos = torch.arange(cached, device=dev)[None].expand(B, cached)
    pos = kval.sum(1, keepdim=True) - 1  # (B, 1): position of each prompt's last token
    padded = cap.valid is not None
    windows = sorted({w for w in adapter.windows if w is not None})
    out = [nxt]
    done = torch.zeros(len(prompts), dtype=torch.bool, device=dev)
    if eos_id is not None:
        done |= nxt[:, 0] == eos_id
    t1 = time.perf_counter()
    steps = 0
    for _ in range(max_new_tokens - 1):
        if bool(done.all()):
            break
        pos = pos + 1
        kpos = torch.cat([kpos, pos], 1)
        kval = torch.cat([kval, torch.ones_like(kval[:, :1])], 1)
        # Keys a new token may see: real ones, and within a sliding layer's window (HF's p - w < q <= p).
        masks: dict[Optional[int], Optional[Tensor]] = {None: kval[:, None, None, :] if padded else None}
        for w in windows:
            masks[w] = (kval & (kpos > pos - w))[:, None, None, :]
        h = adapter.embed(nxt, pos)
        rot = adapter.rotary(h, pos) if adapter.uses_rotary else None
        for i in range(dims.num_layers):
            with adapter.materialized(i) as layer_dev:
                if h.device != layer_dev:  # dispatched models: follow the layer to its device
                    h = h.to(layer_dev)
                    rot = None if rot is None else (rot[0].to(layer_dev), rot[1].to(layer_dev))
                key_mask = masks[adapter.windows[i]]
                if key_mask is not None and key_mask.device != h.device:
                    key_mask = key_mask.to(h.device)
                w = adapter.layer(i)
                da, dm = (_with_slice(pruner, i, b, w, cap.decisions[i][b]) for b in ("attn", "mlp"))
                z, k, v = attn_front(da.slice, w.attn_norm(h), dims.head_dim, rot, key_mask, past=cap.kv[i])
                cap.kv[i] = (k, v)
                h = h + attn_out(da.slice, z, da.bias)
                h = h + mlp_out(dm.slice, mlp_front(dm.slice, w.mlp_norm(h), adapter.act), dm.bias)
        lg = adapter.head(adapter.final(h))
        # inf or NaN in the residual or the logits (an fp16 LM head can overflow on finite inputs).
        ok_h, ok_lg = torch.isfinite(h.sum(dtype=torch.float32)), torch.isfinite(lg.sum(dtype=torch.float32))
        finite.append(ok_h.to(dev) & ok_lg.to(dev))
        nxt = lg.argmax(-1).to(dev)
        if eos_id is not None:
            nxt = torch.where(done[:, None], torch.full_like(nxt, eos_id), nxt)
            done |= nxt[:, 0] == eos_id
        out.append(nxt)
        steps += 1
    if finite:
        ok = torch.stack([f.to(dev) for f in finite])
        if not bool(ok.all()):
            raise NonFiniteError(f"generation became non-finite (inf or NaN) at new token {int((~ok).nonzero()[0, 0]) + 1} "
                                 f"in {str(adapter.dtype).replace('torch.', '')}; load the model in bfloat16 or float32")
    _sync(dev)
    decode_s = time.perf_counter() - t1
    new = torch.cat(out, 1).tolist()
    if eos_id is not None:
        new = [row[: row.index(eos_id) + 1] if eos_id in row else row for row in new]
    return Generation(new, prefill_s, decode_s, int(sum(len(p) for p in prompts)), steps, len(prompts), res.record)


def _with_slice(pruner: Pruner, layer: int, block: str, w: LayerWeights, d: Decision) -> Decision:
    """The prompt's decision with its weights: as captured, or rebuilt for an offloaded layer."""
    if d.slice is not None:
        return d
    if d.kept is None:
        return replace(d, slice=pruner.full_slice(layer, block, w))
    sl = slice_attn(w, pruner.dims, d.kept) if block == "attn" else slice_mlp(w, d.kept)
    return replace(d, slice=sl)
