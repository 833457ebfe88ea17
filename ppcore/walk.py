"""The functional decoder walk: embeddings, every layer's attention and MLP blocks, final norm.

It reads the loaded model's weights through an adapter and never writes to the model: no hooks,
no module swaps, no in-place ops on parameters. A `Pruner` decides each block's keep-set; the layers
run on those slices through `ppcore.layer_step.run_layers` (the same loop as each decode step), and
the walk's hooks add what only the walk does: the decision, PP's observation of the activations, the
FLOPs, the clocks and the record.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .adapters import Adapter, LayerWeights
from .blocks import Block
from .errors import NonFiniteError
from .head_chunks import LOGITS_LIMIT, MAX_SAMPLES, head_blocks
from .layer_step import LayerHooks, run_layers
from .layout import Layout, canonical_layout, prepare_batch, to_caller_layout
from .masks import attention_mask_4d
from .methods import Decision, Energies, Pruner
from .record import BatchRecord, BlockRecord, LayerRecord, round_floats
from .scores import residual_importance
from .slices import KV
from .walk_context import WalkCtx

__all__ = ["Capture", "Layout", "WalkResult", "block_flops", "canonical_layout", "check_finite_layers", "logits",
           "prepare_batch", "to_caller_layout", "token_nll", "walk"]


@dataclass
class WalkResult:
    """One batch through the walk.

    hidden: (B, L, D) after the final norm, in the caller's layout (zeros at pads): the LM head's input.
    valid: (B, L) 0/1 in the caller's layout, or None when nothing was padded.
    flops: this batch's FLOPs counts: dense, pruned (whole model, LM head in), probe, head (see flops_ratios).
    record: what every block decided (None at level "none").
    units: prunable units over all decoder layers, {"attn", "attn_kept", "mlp", "mlp_kept"}: query heads and MLP
    channels, and how many of them the blocks kept (`ppcore.ratios.achieved_ratios`).
    """

    hidden: Tensor
    valid: Optional[Tensor]
    flops: dict[str, int]
    record: Optional[BatchRecord]
    units: dict[str, int] = field(default_factory=dict)


@dataclass
class Capture:
    """What generation reuses after the prompt: each layer's decisions (by block name) and its keys and values
    (B, heads, L_walk, d) in the walk's layout, and which cached key columns are real tokens (B, L_walk) or None.

    It is the walk's `ppcore.slices.KVStore`: attention hands it each layer's keys and values."""

    decisions: list[dict[str, Decision]] = field(default_factory=list)
    kv: list[KV] = field(default_factory=list)
    valid: Optional[Tensor] = None

    def extend(self, layer: int, k: Tensor, v: Tensor) -> KV:
        """Keep the prompt's keys and values of `layer` (layers arrive in order); they are all it attends to.
        Raises ValueError for a capture that already holds another walk's layers."""
        if layer != len(self.kv):
            raise ValueError(f"capture holds {len(self.kv)} layers' keys and values, got layer {layer}: "
                             "use a new Capture")
        self.kv.append((k, v))
        return k, v


class _WalkHooks(LayerHooks):
    """The walk's part of each layer: decide, clock the full inference, observe, count FLOPs, record."""

    def __init__(self, adapter: Adapter, pruner: Pruner, ctx: WalkCtx, level: str, capture: Optional[Capture],
                 on_layer: Optional[Callable[[int, int], None]]) -> None:
        self.adapter, self.pruner, self.ctx, self.level = adapter, pruner, ctx, level
        self.capture, self.on_layer = capture, on_layer
        B, L = ctx.position_ids.shape
        self.B, self.L = B, L
        head = B * L * adapter.outside_flops_per_token()
        self.flops = {"dense": head, "pruned": head, "probe": 0, "head": head}
        self.units = {"attn": 0, "attn_kept": 0, "mlp": 0, "mlp_kept": 0}
        self.layers: list[LayerRecord] = []
        self._blocks: dict[str, BlockRecord] = {}
        self._decided: dict[str, Decision] = {}
        self._t0 = 0.0

    def decide(self, layer: int, block: Block, w: LayerWeights, resid: Tensor, x: Tensor) -> Decision:
        d = self._decided[block.name] = self.pruner.decide(self.ctx, layer, block, w, resid, x)
        self._t0 = self.ctx.now()
        return d

    def ran(self, layer: int, block: Block, d: Decision, resid: Tensor, z: Tensor) -> None:
        ctx = self.ctx
        if ctx.timing:
            ctx.add_time(layer, block.name, full_s=ctx.now() - self._t0)
        self.pruner.observe(ctx, layer, block, z, d)
        bf = block_flops(self.adapter, block, d, self.B, self.L)
        total = block.units(self.adapter.dims)
        self.units[block.name] += total
        self.units[f"{block.name}_kept"] += total if d.kept is None else int(d.kept.shape[0])  # a shape: no sync
        for name in bf:
            self.flops[name] += bf[name]
        if self.level != "none":
            self._blocks[block.name] = _block_record(self.pruner, ctx, layer, block, d, resid, bf, self.level)

    def layer_done(self, layer: int) -> None:
        if self.capture is not None:
            # An offloaded layer's slices would pin its weights in memory: keep only the keep-sets.
            # Generation reads keep-sets and slices only: the probe's per-position energies are not kept.
            offloaded = self.adapter.offloaded(layer)
            self.capture.decisions.append({b: replace(d, energies=None, slice=None if offloaded else d.slice)
                                           for b, d in self._decided.items()})
        if self.level != "none":
            self.layers.append(LayerRecord(**self._blocks))
        self._blocks, self._decided = {}, {}
        if self.on_layer is not None:
            self.on_layer(layer + 1, self.adapter.dims.num_layers)


@torch.inference_mode()
def walk(
    adapter: Adapter,
    pruner: Pruner,
    input_ids: Tensor,
    attention_mask: Optional[Tensor] = None,
    *,
    level: str = "summary",
    update_history: bool = True,
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
    decisions, history and losses however they were padded; the record's `input_ids`, `attention_mask`,
    probe picks and importance columns are in that layout (column = token position). `hidden` comes back
    in the caller's layout. `update_history` False: PP's history is not updated (the warm-up batch).
    `timing`: per-block clocks (seconds on ppcore.clock); `phase` and `index` label the record.
    `capture`: filled with the decisions and keys and values generation reuses.
    `on_layer(done, total)` runs after each layer: for progress, and to cancel a run by raising.
    docs/algorithm.md §1-5. Raises DataError for a bad batch and NonFiniteError when activations
    overflow (inf or NaN), naming the first layer; the check costs no host sync per layer, one per batch.
    """
    if getattr(pruner, "poisoned", None):
        raise NonFiniteError(f"this Pruner's history is unusable ({pruner.poisoned}); build a new Pruner")
    ids0, valid0 = prepare_batch(adapter, input_ids, attention_mask)
    layout = canonical_layout(ids0, valid0)
    ids, valid = layout.ids, layout.valid
    B, L = ids.shape
    dev = ids.device
    mask_for_pos = valid if valid is not None else torch.ones(B, L, device=dev)
    pos = adapter.position_ids(mask_for_pos)
    ctx = WalkCtx(position_ids=pos, valid=valid, mask4d=attention_mask_4d(valid, L, dev), rot=None,
                  update_history=update_history, timing=timing or level != "none", device=dev,
                  keeps_decisions=capture is not None)
    if capture is not None:
        capture.valid = valid
    t_start = ctx.now()
    h = adapter.embed(ids, pos)
    if adapter.uses_rotary:
        ctx.rot = adapter.rotary(h, pos)
    t_embed = ctx.now()
    pruner.prepare()  # FLAP's global allocation reads every layer once, before any is materialised
    hooks = _WalkHooks(adapter, pruner, ctx, level, capture, on_layer)
    h, finite = run_layers(adapter, h, ctx, hooks, store=capture)
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
            layers=hooks.layers, times={"embed_s": t_embed - t_start, "layers_s": t_layers - t_embed},
        )
        record.flops = dict(hooks.flops)
        record.units = dict(hooks.units)
    return WalkResult(to_caller_layout(hidden, layout), layout.caller_valid, hooks.flops, record, hooks.units)


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


def block_flops(adapter: Adapter, block: Block, d: Decision, B: int, L: int) -> dict[str, int]:
    """Dense, pruned and probe FLOPs of one block on B x L tokens, from the slice's shapes (no device sync;
    docs/algorithm.md §2.5). Raises nothing."""
    return {"dense": block.flops(adapter, B, L), "pruned": block.flops(adapter, B, L, d.slice) + d.extra_flops,
            "probe": d.probe_flops}


def _block_record(pruner: Pruner, ctx: WalkCtx, layer: int, block: Block, d: Decision, resid: Tensor,
                  flops: dict[str, int], level: str) -> BlockRecord:
    total = block.units(pruner.dims)
    kept = list(range(total)) if d.kept is None else d.kept.tolist()
    rec = BlockRecord(
        pruned=d.pruned, total=total, kept=kept,
        probe_tokens=[] if d.probe_tokens is None else d.probe_tokens.tolist(),
        probe_samples=[] if d.probe_samples is None else d.probe_samples.tolist(),
        scores=None if d.scores is None else round_floats(d.scores.float().cpu()),
        flops=dict(flops),
        times={k: round(v, 6) for k, v in ctx.times.get(block.key(layer), {}).items()},
    )
    e = d.energies
    if e is not None and e.history_rows is not None and e.weight_pow4 is not None:
        # The counterfactual keep-set is a few integers: recorded at every level (a stability run needs no more).
        alone = block.ppsp(e.probe, e.weight_pow4, pruner.dims)
        keep = getattr(pruner.method, "keep", None)  # a probing method's own rule (PP+'s core is kept either way)
        rec.kept_probe_only = (keep(layer, block, alone) if keep else pruner.keep_top(block, alone, layer)).tolist()
    if d.forced is not None:
        rec.forced = d.forced.tolist()
    if level == "full":
        rec.importance = round_floats(residual_importance(resid, ctx.valid).cpu(), 5)
        if e is not None:
            _stage2(rec, e)
    return rec


def _stage2(rec: BlockRecord, e: Energies) -> None:
    """Fill a record's per-channel stage-2 fields from a probing method's energies (docs/algorithm.md §3.3-4): what
    the probe saw, what the history held, how they were fused, and PPsp's weight factor."""
    rec.energy_probe = round_floats(e.probe.cpu())
    rec.energy_fused = round_floats(e.fused.cpu())
    if e.weight_pow4 is not None:
        rec.weight_factor = round_floats(e.weight_pow4.sqrt().cpu())
    if e.history_rows is not None:
        rec.energy_history = round_floats(e.history.cpu())
        rec.fusion_weight = round_floats(e.fusion_weight.cpu())


def logits(adapter: Adapter, hidden: Tensor) -> Tensor:
    """The LM head on the walk's output: (B, L, D) -> (B, L, vocab) logits, on the head's device
    (docs/algorithm.md §9.3).

    Raises ValueError when they would exceed `ppcore.head_chunks.LOGITS_LIMIT` values (a 262k vocabulary on
    a 20 x 512 batch: 10 GiB): take what is needed block by block instead (`token_nll` for losses,
    `head_blocks` for the slices).
    """
    n = hidden[..., :1].numel() * adapter.dims.vocab
    if n > LOGITS_LIMIT:
        raise ValueError(f"the logits of {tuple(hidden.shape[:-1])} positions over a vocabulary of "
                         f"{adapter.dims.vocab:,} would hold {n:,} values (over {LOGITS_LIMIT:,}): compute them "
                         "block by block (ppcore.head_chunks.head_blocks), or token_nll for losses")
    with torch.inference_mode():
        return adapter.head(hidden)


@torch.inference_mode()
def token_nll(adapter: Adapter, hidden: Tensor, input_ids: Tensor, valid: Optional[Tensor],
              chunk: int = MAX_SAMPLES) -> tuple[Tensor, Tensor]:
    """Per-token NLL of predicting token t+1 from position t, (B, L-1) fp32, and its 0/1 mask.

    The LM head runs a block at a time (`ppcore.head_chunks.head_blocks`: up to `chunk` samples, or a run of
    one sample's tokens for a large vocabulary) so that full-vocabulary logits never exist for the whole batch
    at once. Pad targets (and predictions from pads) are masked out. `hidden` (B, L, D),
    `input_ids` (B, L), `valid` (B, L) 0/1 or None; nats. docs/algorithm.md §9.3. Raises NonFiniteError
    when the loss holds inf or NaN (an overflowing LM head).
    """
    ids = input_ids.to(hidden.device)
    B, L = ids.shape
    nll = torch.empty(B, max(L - 1, 0), device=hidden.device, dtype=torch.float32)
    for s, t in head_blocks(B, max(L - 1, 0), adapter.dims.vocab, max_samples=chunk):
        lg = adapter.head(hidden[s, :-1][:, t]).float()  # on the head's device when dispatched
        # Flat (tokens x vocab) layout: the (N, C, L) layout's kernel loses ~1e-4 of accuracy here.
        target = ids[s, 1:][:, t].reshape(-1).to(lg.device)
        flat = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), target, reduction="none")
        nll[s, t] = flat.view(lg.shape[0], -1).to(nll.device)
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
