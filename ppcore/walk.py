"""The functional decoder walk: embeddings, every layer's attention and MLP blocks, final norm.

It reads the loaded model's weights through an adapter and never writes to the model: no hooks,
no module swaps, no in-place ops on parameters. A `Pruner` decides each block's keep-set; the walk
runs the block on that slice and hands the intermediate activations back for PP's history.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .adapters import Adapter
from .blocks import attention_mask_4d, attn_front, attn_out, mlp_front, mlp_out
from .errors import DataError, NonFiniteError
from .flops import attn_flops, mlp_flops
from .methods import Decision, Pruner
from .record import BatchRecord, BlockRecord, LayerRecord, round_floats
from .scores import residual_importance
from .walk_context import WalkCtx


@dataclass
class WalkResult:
    hidden: Tensor  # (B, L, D) after the final norm, in the caller's layout (zeros at pads): the LM head's input
    valid: Optional[Tensor]  # (B, L) in the caller's layout, or None when nothing was padded
    flops: dict[str, int]  # this batch: dense, pruned (whole model, LM head in), probe, head (see flops_ratios)
    record: Optional[BatchRecord]


@dataclass
class Capture:
    """What generation reuses after the prompt: each layer's decisions and its keys and values."""

    decisions: list[dict[str, Decision]] = field(default_factory=list)
    kv: list[tuple[Tensor, Tensor]] = field(default_factory=list)  # per layer, in the walk's layout
    valid: Optional[Tensor] = None  # (B, L_walk) which cached key columns are real tokens; None: all


@dataclass
class Layout:
    """A batch in the walk's layout: each row's real tokens first, in order, then its pads, and no
    pad-only columns. Column t is then token position t of every sample, whatever side the caller
    padded and however many pad columns it added, so PP's probe, its per-position history and every
    decision see the same thing for the same real tokens (spec 2.3, 3.3)."""

    ids: Tensor  # (B, L_walk)
    valid: Optional[Tensor]  # (B, L_walk) float 0/1, None when no row is shorter than L_walk
    back: Optional[Tensor]  # (B, L) walk column of each caller column (0 at pads); None: same layout
    caller_valid: Optional[Tensor]  # (B, L) the caller's 0/1 mask (float), None when nothing was padded


def canonical_layout(ids: Tensor, valid: Optional[Tensor]) -> Layout:
    """Move every row's real tokens to its first columns and drop pad-only columns (see `Layout`).

    A batch already in that layout (unpadded, or right-padded to its longest row) is returned as is,
    without a copy. Shapes: `ids` (B, L) long, `valid` (B, L) 0/1 float or None.
    """
    if valid is None:
        return Layout(ids, None, None, None)
    B, L = ids.shape
    real = valid.bool()
    lengths = real.sum(1)
    width = int(lengths.max())
    right = torch.arange(L, device=ids.device)[None] < lengths[:, None]
    if width == L and torch.equal(real, right):
        return Layout(ids, valid, None, valid)
    order = torch.argsort((~real).to(torch.int8), dim=1, stable=True)[:, :width]  # real columns first, in order
    walk_valid = right[:, :width]
    back = torch.where(real, torch.cumsum(real, 1) - 1, torch.zeros_like(ids))
    return Layout(ids.gather(1, order), None if bool(walk_valid.all()) else walk_valid.float(), back, valid)


def to_caller_layout(hidden: Tensor, layout: Layout) -> Tensor:
    """(B, L_walk, D) hidden states back in the caller's (B, L) layout, zeros at the caller's pads."""
    if layout.caller_valid is None:
        return hidden
    out = hidden
    if layout.back is not None:
        back = layout.back.to(hidden.device)
        out = hidden.gather(1, back[..., None].expand(-1, -1, hidden.shape[-1]))
    return out * layout.caller_valid.to(device=hidden.device, dtype=hidden.dtype)[..., None]


def prepare_batch(adapter: Adapter, input_ids: Tensor, attention_mask: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
    """Move a batch to the model's device and validate it; returns (ids, valid-or-None).

    `attention_mask` (B, L) 0/1: each row's real tokens must be contiguous (pads before them, after them,
    or both); a pad between two real tokens is refused, since where the tokens after it sit would be a
    guess. The context limit applies to the real tokens, not to pad columns. Raises DataError.
    """
    input_ids = _as_tensor("input_ids", input_ids)
    if input_ids.dim() != 2 or input_ids.numel() == 0:
        raise DataError(f"input_ids must be a non-empty (samples x tokens) array, got shape {tuple(input_ids.shape)}")
    if input_ids.dtype == torch.bool or input_ids.is_floating_point() or input_ids.is_complex():
        raise DataError(f"input_ids must be integer token ids, got dtype {str(input_ids.dtype).replace('torch.', '')}")
    dims = adapter.dims
    B, L = input_ids.shape
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= dims.vocab:
        raise DataError(f"token ids must lie in [0, {dims.vocab}) for this model, got {lo if lo < 0 else hi}")
    ids = input_ids.to(adapter.device, torch.long)
    valid = None
    if attention_mask is not None:
        am = _as_tensor("attention_mask", attention_mask).to(adapter.device)
        if am.shape != input_ids.shape:
            raise DataError(f"attention_mask shape {tuple(am.shape)} differs from input_ids {tuple(input_ids.shape)}")
        bad = am[(am != 0) & (am != 1)] if am.dtype != torch.bool else am[:0]
        if bad.numel():
            raise DataError(f"attention_mask values must be 0 (pad) or 1 (real token), got {bad[0].item()!r}")
        if not bool((am.sum(1) > 0).all()):
            raise DataError("every sample needs at least one real token (attention_mask row of zeros)")
        real = am.bool()
        if not bool(real.all()):
            valid = am.to(torch.float32)
            cols = torch.arange(L, device=real.device)
            first = torch.where(real, cols, L).amin(1)
            last = torch.where(real, cols, -1).amax(1)
            holes = (last - first + 1) != real.sum(1)
            if bool(holes.any()):
                row = int(holes.nonzero()[0, 0])
                raise DataError(f"attention_mask row {row} has a pad between real tokens; pad each row on its left "
                                "or right only (as tokenizers do), or split the row into separate samples")
    width = L if valid is None else int(valid.sum(1).max())
    if dims.max_positions and width > dims.max_positions:
        raise DataError(f"sequence length {width} exceeds the model's context of {dims.max_positions} tokens; "
                        "use a shorter --seq-len or truncate the inputs")
    return ids, valid


def _as_tensor(name: str, x) -> Tensor:
    if isinstance(x, Tensor):
        return x
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as e:
        raise DataError(f"{name} must be a rectangular array of numbers ({type(e).__name__}: {e})") from None


@torch.inference_mode()
def walk(
    adapter: Adapter,
    pruner: Pruner,
    input_ids: Tensor,
    attention_mask: Optional[Tensor] = None,
    *,
    update_history: bool = True,
    level: str = "summary",
    timing: bool = True,
    phase: str = "single",
    index: int = 0,
    capture: Optional[Capture] = None,
    on_layer: Optional[Callable[[int, int], None]] = None,
) -> WalkResult:
    """Run one batch through the decoder with `pruner`'s keep-sets. `level`: none|summary|full.

    `input_ids` (B, L) token ids and `attention_mask` (B, L) 0/1 (None: nothing padded; pads on the
    left, the right or both; a pad between real tokens is refused). The batch runs in the walk's layout
    (`canonical_layout`): real tokens first, no pad-only columns, so the same real tokens give the same
    decisions, history and losses however they were padded; the record's `input_ids`, `attention_mask`, probe picks and importance columns are in
    that layout (column = token position). `hidden` comes back in the caller's layout.
    `on_layer(done, total)` runs after each layer: for progress, and to cancel a run by raising.
    Raises DataError for a bad batch and NonFiniteError when activations overflow (inf or NaN), naming
    the first layer; the check costs no host sync per layer, one per batch.
    """
    if getattr(pruner, "poisoned", None):
        raise NonFiniteError(f"this Pruner's history is unusable ({pruner.poisoned}); build a new Pruner")
    ids0, valid0 = prepare_batch(adapter, input_ids, attention_mask)
    layout = canonical_layout(ids0, valid0)
    ids, valid = layout.ids, layout.valid
    B, L = ids.shape
    dims = adapter.dims
    dev = ids.device
    mask_for_pos = valid if valid is not None else torch.ones(B, L, device=dev)
    pos = adapter.position_ids(mask_for_pos)
    ctx = WalkCtx(position_ids=pos, valid=valid, mask4d=attention_mask_4d(valid, L, dev), rot=None,
                  update_history=update_history, timing=timing or level != "none", cuda=dev.type == "cuda")
    if capture is not None:
        capture.valid = valid
    t_start = ctx.now()
    h = adapter.embed(ids, pos)
    if adapter.uses_rotary:
        ctx.rot = adapter.rotary(h, pos)
    t_embed = ctx.now()
    layers: list[LayerRecord] = []
    head = B * L * adapter.outside_flops_per_token()
    flops = {"dense": head, "pruned": head, "probe": 0, "head": head}
    pruner.prepare()  # FLAP's global allocation reads every layer once, before any is materialised
    finite: list[Tensor] = []  # per layer, on its device: read once after the last layer (no sync per layer)
    for i in range(dims.num_layers):
        blocks: dict[str, BlockRecord] = {}
        decided: dict[str, Decision] = {}
        with adapter.materialized(i) as layer_dev:
            if h.device != layer_dev:  # dispatched models: follow the layer to its device
                h = h.to(layer_dev)
                ctx.move_to(layer_dev)
            w = adapter.layer(i)
            for block in ("attn", "mlp"):
                resid = h
                x = (w.attn_norm if block == "attn" else w.mlp_norm)(h)
                d = decided[block] = pruner.decide(ctx, i, block, w, resid, x)
                t0 = ctx.now()
                if block == "attn":
                    z, k, v = attn_front(d.slice, x, dims.head_dim, ctx.rot, ctx.attn_mask(adapter.windows[i]))
                    h = resid + attn_out(d.slice, z, d.bias)
                    if capture is not None:
                        capture.kv.append((k, v))
                else:
                    z = mlp_front(d.slice, x, adapter.act)
                    h = resid + mlp_out(d.slice, z, d.bias)
                ctx.add_time(i, block, full_s=ctx.now() - t0)
                pruner.observe(ctx, i, block, z, d)
                bf = block_flops(adapter, block, d, B, L)
                for name in bf:
                    flops[name] += bf[name]
                if level != "none":
                    blocks[block] = _block_record(adapter, ctx, i, block, d, resid, bf, level)
            # inf and NaN carry into the fp32 sum; finite values cannot sum past 3e38 in any usable
            # activation. A fifth of the cost of isfinite(h).all().
            finite.append(torch.isfinite(h.sum(dtype=torch.float32)))
        if capture is not None:
            # An offloaded layer's slices would pin its weights in memory: keep only the keep-sets.
            capture.decisions.append({b: replace(d, slice=None) for b, d in decided.items()}
                                     if adapter.offloaded(i) else decided)
        if level != "none":
            layers.append(LayerRecord(blocks["attn"], blocks["mlp"]))
        if on_layer is not None:
            on_layer(i + 1, dims.num_layers)
    t_layers = ctx.now()
    try:
        check_finite_layers(finite, adapter.dtype)
    except NonFiniteError:
        if pruner.history is not None and update_history:
            pruner.poisoned = "an earlier batch's activations were non-finite"
        raise
    hidden = adapter.final(h)
    record = None
    if level != "none":
        record = BatchRecord(
            method=pruner.cfg.method, ratio=pruner.cfg.ratio, phase=phase, index=index,
            input_ids=ids.tolist(), attention_mask=None if valid is None else valid.long().tolist(),
            layers=layers, times={"embed_s": t_embed - t_start, "layers_s": t_layers - t_embed},
        )
        record.flops = dict(flops)
    return WalkResult(to_caller_layout(hidden, layout), layout.caller_valid, flops, record)


def check_finite_layers(flags: list[Tensor], dtype: torch.dtype) -> None:
    """Raise NonFiniteError naming the first layer whose output holds inf or NaN (`flags`: one 0-d bool
    tensor per layer, possibly on several devices; this is the walk's one host sync for the check)."""
    if not flags:
        return
    ok = torch.stack([f.to(flags[-1].device) for f in flags])
    if bool(ok.all()):
        return
    first = int((~ok).nonzero()[0, 0])
    name = str(dtype).replace("torch.", "")
    hint = ("float16 holds values up to 65504 only: load the model in bfloat16 (same memory, float32's range) "
            "or float32 (--dtype bfloat16 / --dtype float32)") if dtype == torch.float16 else (
            "the weights or the input are unusable; try float32 (--dtype float32)")
    raise NonFiniteError(f"the residual stream became non-finite (inf or NaN) at the output of decoder layer "
                         f"{first} in {name}; no result is reported. {hint}")


def block_flops(adapter: Adapter, block: str, d: Decision, B: int, L: int) -> dict[str, int]:
    """Dense, pruned and probe FLOPs of one block, from the slice's shapes (no device sync)."""
    dims = adapter.dims
    if block == "attn":
        dense = attn_flops(B, L, dims, dims.num_heads, dims.num_kv_heads)
        pruned = attn_flops(B, L, dims, d.slice.n_heads, d.slice.n_kv)
    else:
        dense = mlp_flops(B, L, dims, dims.intermediate, adapter.gated_mlp)
        pruned = mlp_flops(B, L, dims, d.slice.up_w.shape[0], adapter.gated_mlp)
    return {"dense": dense, "pruned": pruned, "probe": d.probe_flops}


def _block_record(adapter: Adapter, ctx: WalkCtx, layer: int, block: str, d: Decision, resid: Tensor,
                  flops: dict[str, int], level: str) -> BlockRecord:
    dims = adapter.dims
    total = dims.num_heads if block == "attn" else dims.intermediate
    kept = list(range(total)) if d.kept is None else d.kept.tolist()
    rec = BlockRecord(
        pruned=d.pruned, total=total, kept=kept,
        probe_tokens=[] if d.probe_tokens is None else d.probe_tokens.tolist(),
        probe_samples=[] if d.probe_samples is None else d.probe_samples.tolist(),
        scores=None if d.scores is None else round_floats(d.scores.float().cpu()),
        flops=dict(flops),
        times={k: round(v, 6) for k, v in ctx.times.get((layer, block), {}).items()},
    )
    if level == "full":
        rec.importance = round_floats(residual_importance(resid, ctx.valid).cpu(), 5)
        if d.energies is not None:
            e_probe, e_hist, e_fused = d.energies
            rec.energy_probe = round_floats(e_probe.cpu())
            rec.energy_history = None if e_hist is None else round_floats(e_hist.cpu())
            rec.energy_fused = round_floats(e_fused.cpu())
    return rec


def logits(adapter: Adapter, hidden: Tensor) -> Tensor:
    with torch.inference_mode():
        return adapter.head(hidden)


@torch.inference_mode()
def token_nll(adapter: Adapter, hidden: Tensor, input_ids: Tensor, valid: Optional[Tensor],
              chunk: int = 4) -> tuple[Tensor, Tensor]:
    """Per-token NLL of predicting token t+1 from position t, (B, L-1) fp32, and its 0/1 mask.

    The LM head runs a few samples at a time so that full-vocabulary logits never exist for the
    whole batch at once. Pad targets (and predictions from pads) are masked out.
    """
    ids = input_ids.to(hidden.device)
    B, L = ids.shape
    nll = torch.empty(B, max(L - 1, 0), device=hidden.device, dtype=torch.float32)
    for s in range(0, B, chunk):
        lg = adapter.head(hidden[s:s + chunk, :-1]).float()  # on the head's device when dispatched
        # Flat (tokens x vocab) layout: the (N, C, L) layout's kernel loses ~1e-4 of accuracy here.
        target = ids[s:s + chunk, 1:].reshape(-1).to(lg.device)
        flat = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), target, reduction="none")
        nll[s:s + chunk] = flat.view(lg.shape[0], -1).to(nll.device)
    if valid is None:
        mask = torch.ones_like(nll)
    else:
        valid = valid.to(nll.device)
        mask = (valid[:, 1:] * valid[:, :-1]).float()
    nll = torch.where(mask.bool(), nll, torch.zeros_like(nll))
    if not bool(torch.isfinite(nll).all()):
        raise NonFiniteError("the loss is non-finite (inf or NaN): the LM head's logits overflowed "
                             f"in {str(hidden.dtype).replace('torch.', '')}; load the model in bfloat16 or float32")
    return nll, mask
