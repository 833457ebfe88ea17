"""Activation statistics at the inputs of o_proj and down_proj (docs/algorithm.md §3.1-3.4, §8.1a).

`CalibStats` is filled by one dense pass over calibration windows and never changes afterwards;
it is what the static baselines score and what PP's history starts from. `History` is PP's
per-run, per-position state, updated by EMA on kept channels after each full inference.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor



@dataclass
class BlockStats:
    """Calibration statistics of one final projection's input x (B x L x C), all fp32 (docs/algorithm.md §8.1a).

    sq:       (L, C) running mean over samples of x^2, per position (PP history init, Wanda-sp).
    mean:     (C,) true mean of x over samples and positions (FLAP's corrected compensation).
    baseline: (C,) the official `baseline_inp` averaged over positions, i.e. mean / batch size.
    fluc:     (C,) FLAP's fluctuation summed over positions, updated exactly as the official code.
    mean_rest: (C,) mean of x over samples and every position but the first (PP+'s compensation, docs/algorithm.md
              "PP+"): the first position (the attention sink) is far from the others in many channels.
    """

    sq: Tensor
    mean: Tensor
    baseline: Tensor
    fluc: Tensor
    n: int = 0
    mean_rest: Optional[Tensor] = None


class StatsAccumulator:
    """Running calibration statistics, one `BlockStats` per (layer, block name) (docs/algorithm.md §3.2, §8.1a)."""

    def __init__(self) -> None:
        self.blocks: dict[tuple[int, str], BlockStats] = {}

    @torch.no_grad()
    def update(self, layer: int, block: str, x: Tensor) -> None:
        """Fold one dense batch's final projection input x (B, L, C) into the block's statistics
        (docs/algorithm.md §3.2, §8.1a).

        Raises ValueError when L differs from the block's earlier batches.
        """
        x = x.float()
        B, L, C = x.shape
        st = self.blocks.get((layer, block))
        if st is None:
            z = torch.zeros(C, device=x.device)
            st = BlockStats(torch.zeros(L, C, device=x.device), z.clone(), z.clone(), z.clone(), 0, z.clone())
            self.blocks[(layer, block)] = st
        if L != st.sq.shape[0]:
            raise ValueError("calibration windows must all have the same length")
        n = st.n
        keep, add = n / (n + B), 1.0 / (n + B)
        st.sq.mul_(keep).add_(x.square().sum(0), alpha=add)
        st.mean.mul_(keep).add_(x.mean((0, 1)), alpha=B * add)
        if L > 1:
            st.mean_rest.mul_(keep).add_(x[:, 1:].mean((0, 1)), alpha=B * add)
        # Official baseline_inp: the batch *mean* divided by (n + B), so it ends as mean / B.
        base_old = st.baseline.clone()
        st.baseline.mul_(keep).add_(x.mean((0, 1)), alpha=add)
        if n > 0:
            dev = ((x - st.baseline) * (x - base_old)).sum((0, 1))
            st.fluc.mul_((n - 1) / (n + B - 1)).add_(dev, alpha=add)
        st.n = n + B

    def finish(self, meta: dict) -> "CalibStats":
        """The statistics gathered so far, with `meta` (key, windows, seq_len, batch_size, ...)."""
        return CalibStats(blocks=self.blocks, meta=meta)


@dataclass
class CalibSource:
    """Where a calibration pass's statistics came from, for what is fitted on the same windows later (PP+'s
    allocation, `ppcore.allocation`): the windows (N, L) token ids, and the cache folder and switch of the pass."""

    windows: Tensor
    cache_dir: Optional[str] = None
    cache: bool = True


@dataclass
class CalibStats:
    """A calibration pass's statistics: (layer, block name) -> `BlockStats`, and `meta` (docs/algorithm.md §7).

    `source`: the windows the pass ran on (None when unknown); `fits`: what was fitted on them since, by key
    (`ppcore.allocation`), shared by every copy (`to_layers`). Raises KeyError from `get` for a block the pass did
    not see.
    """

    blocks: dict[tuple[int, str], BlockStats]
    meta: dict = field(default_factory=dict)
    source: Optional[CalibSource] = None
    fits: dict = field(default_factory=dict)

    def stored_fit(self, key: str, path_of: Callable[[str, Optional[str]], Path],
                   read: Callable[[Path], Any]) -> Any:
        """A fit made on these statistics' windows under `key` (PP+'s allocation or recovery): from memory (`fits`),
        else from the disk cache at `path_of(key, cache_dir)` through `read` (then kept in memory); None when there
        is none. A damaged entry (`read` raises or returns None) reads as none, so it is fitted again."""
        if key in self.fits:
            return self.fits[key]
        src = self.source
        path = path_of(key, src.cache_dir) if src is not None and src.cache else None
        if path is None or not path.is_file():
            return None
        try:
            fit = read(path)
        except Exception:
            return None
        if fit is not None:
            self.fits[key] = fit
        return fit

    def keep_fit(self, key: str, fit: Any, path_of: Callable[[str, Optional[str]], Path],
                 write: Callable[[Any, Path], None]) -> None:
        """Keep a new fit in memory and, when these statistics are cached on disk, at `path_of(key, cache_dir)`
        through `write(fit, path)` (written whole to a temporary name, then renamed: a reader never sees half)."""
        self.fits[key] = fit
        src = self.source
        if src is None or not src.cache:
            return
        path = path_of(key, src.cache_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
        write(fit, tmp)
        tmp.replace(path)

    def get(self, layer: int, block: str) -> BlockStats:
        """The statistics of one block ("attn" or "mlp"); KeyError when absent."""
        return self.blocks[(layer, block)]

    @property
    def seq_len(self) -> int:
        """Tokens per calibration window (the rows of every `sq`)."""
        return next(iter(self.blocks.values())).sq.shape[0]

    @property
    def batch_size(self) -> int:
        """The calibration pass's batch size (FLAP's official baseline divides by it, docs/algorithm.md §8.1a).
        KeyError when the meta lacks it."""
        return int(self.meta["batch_size"])

    def to(self, device: torch.device) -> "CalibStats":
        """A copy with every tensor on `device`."""
        return self.to_layers(lambda _: device)

    def to_layers(self, device_of: Callable[[int], torch.device]) -> "CalibStats":
        """Each layer's statistics on that layer's device (a dispatched model spans several)."""
        moved = {
            (i, b): BlockStats(v.sq.to(device_of(i)), v.mean.to(device_of(i)), v.baseline.to(device_of(i)),
                               v.fluc.to(device_of(i)), v.n,
                               None if v.mean_rest is None else v.mean_rest.to(device_of(i)))
            for (i, b), v in self.blocks.items()
        }
        return CalibStats(moved, dict(self.meta), self.source, self.fits)

    def to_tensors(self) -> dict[str, Tensor]:
        """Flat CPU tensors for safetensors: '<layer>.<block>.<sq|mean|baseline|fluc|mean_rest|n>'."""
        out: dict[str, Tensor] = {}
        for (layer, block), st in self.blocks.items():
            for name in ("sq", "mean", "baseline", "fluc", "mean_rest"):
                if getattr(st, name) is not None:
                    out[f"{layer}.{block}.{name}"] = getattr(st, name).detach().cpu().contiguous()
            out[f"{layer}.{block}.n"] = torch.tensor([st.n])
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], meta: dict) -> "CalibStats":
        """The inverse of `to_tensors`; KeyError or ValueError for tensors that are not such a file."""
        blocks: dict[tuple[int, str], BlockStats] = {}
        keys = {tuple(k.split(".")[:2]) for k in tensors}
        for layer_s, block in keys:
            p = f"{layer_s}.{block}."
            blocks[(int(layer_s), block)] = BlockStats(
                tensors[p + "sq"], tensors[p + "mean"], tensors[p + "baseline"], tensors[p + "fluc"],
                int(tensors[p + "n"][0]), tensors.get(p + "mean_rest"),
            )
        return cls(blocks, meta)


class History:
    """PP's historical states: per (layer, block name) a (positions x channels) fp32 mean of x^2
    (docs/algorithm.md §3.1)."""

    def __init__(self, calib: Optional[CalibStats], device: Optional[torch.device] = None) -> None:
        """A copy of the calibration's per-position energies, on `device` or beside each layer's stats
        (docs/algorithm.md §3.2)."""
        self.states: dict[tuple[int, str], Tensor] = {}
        if calib is not None:
            for key, st in calib.blocks.items():
                self.states[key] = st.sq.to(device=device or st.sq.device, dtype=torch.float32, copy=True)

    def has(self, layer: int, block: str) -> bool:
        """Whether the block has a history (it always does when calibration covered it)."""
        return (layer, block) in self.states

    def rows(self, layer: int, block: str, tokens: Tensor, width: Optional[int] = None) -> Tensor:
        """History rows (n_t, C) at the probe's original positions `tokens` (n_t,); positions never seen read
        as 0 (docs/algorithm.md §3.3). `width`: a bound on the positions (the batch's L), which, when the
        history has that many rows, spares the masking. KeyError for a block without a history."""
        H = self.states[(layer, block)]
        if width is not None and width <= H.shape[0]:
            return H.index_select(0, tokens)
        inside = tokens < H.shape[0]
        G = H.index_select(0, tokens.clamp_max(H.shape[0] - 1))
        return G * inside[:, None].to(G.dtype)

    @torch.no_grad()
    def ema(self, layer: int, block: str, z: Tensor, kept: Optional[Tensor], valid: Optional[Tensor],
            momentum: float) -> None:
        """H[:L, kept] <- m * H[:L, kept] + (1 - m) * mean_b z^2, the mean over each position's non-pad samples
        (docs/algorithm.md §3.4).

        `z` (B, L, C_kept) the final projection's input on the kept channels `kept` (C_kept,) (None: all),
        `valid` (B, L) 0/1 or None. Pruned channels are neither updated nor decayed; positions with no real
        token are left alone; the history grows when L exceeds its rows. KeyError for a block without one.
        """
        key = (layer, block)
        H = self.states[key]
        B, L, _ = z.shape
        if L > H.shape[0]:
            H = torch.cat([H, H.new_zeros(L - H.shape[0], H.shape[1])])
            self.states[key] = H
        z2 = z.float().square()
        if valid is None:
            batch = z2.sum(0) / B
        else:
            v = valid.to(z2.dtype)
            count = v.sum(0)
            batch = (z2 * v[..., None]).sum(0) / count.clamp_min(1.0)[:, None]
        rows = H[:L]
        old = rows if kept is None else rows.index_select(1, kept)
        new = old * momentum + batch * (1 - momentum)
        if valid is not None:
            new = torch.where((count > 0)[:, None], new, old)
        if kept is None:
            rows.copy_(new)
        else:
            rows.index_copy_(1, kept, new)
