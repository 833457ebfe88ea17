"""The decoder layers on decided slices: written once, run by the walk and by each decode step.

For every layer: follow a dispatched model to the layer's device, then for each block in `BLOCKS`
(attention, then MLP) take its normed input, ask the caller's `LayerHooks` for the block's decision,
run the block's front and final projection on the decision's slice, its post-norm where the family has
one, and add the residual (docs/algorithm.md §2.1, §5). Keys and values go to a `KVStore` when one is
given. A finite flag per layer (or only after the last) lets the caller check for inf and NaN with one host
sync per batch.

The walk's extra work (deciding, observing, FLOPs, records, clocks) lives in its hooks; a decode step's
hooks only hand back the prompt's decisions.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Protocol

import torch
from torch import Tensor

from .adapters import Adapter, LayerWeights, Rotaries
from .blocks import BLOCKS, Block
from .slices import KVStore

if TYPE_CHECKING:
    from .methods import Decision


class AttnInputs(Protocol):
    """What attention needs besides its input: rotary and masks for the batch, on the current layer's device."""

    rot: Optional[Rotaries]  # {rotary kind: (cos, sin)}, each (B, L, d), or None (no rotary)

    def attn_mask(self, window: Optional[int]) -> Optional[Tensor]:
        """Bool mask (B or 1, 1, L, L_keys) for a layer with this sliding window; None: plain causal."""

    def move_to(self, device: torch.device) -> None:
        """Move every tensor above to `device` (a dispatched model's next layer)."""


class LayerHooks:
    """The caller's part of a layer step: which slice each block runs on, and what to do after it."""

    def decide(self, layer: int, block: Block, w: LayerWeights, resid: Tensor, x: Tensor) -> "Decision":
        """The decision for this block: `resid` (B, L, D) is the residual entering it, `x` its normed input."""
        raise NotImplementedError

    def ran(self, layer: int, block: Block, d: "Decision", resid: Tensor, z: Tensor) -> None:
        """After the block ran: `z` (B, L, C_kept) is the input of its final projection."""

    def layer_done(self, layer: int) -> None:
        """After the layer, its weights released (an offloaded layer's go back to the CPU or disk)."""


def finite_flag(h: Tensor) -> Tensor:
    """0-d bool on h's device: False when `h` holds inf or NaN. No host sync.

    inf and NaN carry into the fp32 sum; finite values cannot sum past 3e38 in any usable activation.
    A fifth of the cost of isfinite(h).all().
    """
    return torch.isfinite(h.sum(dtype=torch.float32))


def run_layers(adapter: Adapter, h: Tensor, inputs: AttnInputs, hooks: LayerHooks, *,
               store: Optional[KVStore] = None, flag_every_layer: bool = True) -> tuple[Tensor, list[Tensor]]:
    """Run every decoder layer on `h` (B, L, D); returns the last layer's output and the finite flags.

    `store`: where each layer's attention puts its keys and values and finds the cached ones it continues
    from (the walk's capture, generation's cache), or None. `flag_every_layer`: one `finite_flag` per
    layer (the walk names the first bad layer), or only the last layer's (a decode step: inf and NaN reach
    the last layer). docs/algorithm.md §2.1, §5. Raises whatever the hooks raise (e.g. a cancelled run).
    The loop itself never synchronises host and device.
    """
    flags: list[Tensor] = []
    n = adapter.dims.num_layers
    for i in range(n):
        with adapter.materialized(i) as layer_dev:
            if h.device != layer_dev:  # dispatched models: follow the layer to its device
                h = h.to(layer_dev)
                inputs.move_to(layer_dev)
            w = adapter.layer(i)
            rot = adapter.layer_rotary(inputs.rot, i)
            for block in BLOCKS:
                resid = h
                x = block.norm(w)(h)
                d = hooks.decide(i, block, w, resid, x)
                z = block.front(adapter, d.slice, x, rot, inputs.attn_mask(block.window(adapter, i)),
                                None if store is None else (store, i))
                out = block.out(d.slice, z, d.bias)
                post = block.post_norm(w)
                if post is not None:  # a norm on the block's output before the residual add (Gemma 3)
                    out = post(out)
                h = out.add_(resid)  # the block's own output tensor: no new allocation
                hooks.ran(i, block, d, resid, z)
            if flag_every_layer or i == n - 1:
                flags.append(finite_flag(h))
        hooks.layer_done(i)
    return h, flags
