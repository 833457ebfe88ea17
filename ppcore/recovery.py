"""PP+'s recovery: the pruned channels' contribution replaced by its least-squares estimate from kept channels
(docs/algorithm.md §10.5). Pure tensor maths and the fit's storage; the fit itself (a dense pass over the
calibration windows) is `ppcore.fitting.fit_recovery`.

Notation as in `ppcore.compensation`: a block's final projection W (D, C), its input channels x (C,), kept
channels K, pruned channels P. The block's output W x = W_K x_K + W_P x_P loses W_P x_P when P is pruned. Recovery
regresses x_P on a set of kept channels R (the regressors), with the covariance S and mean mu of x measured once on
calibration windows (every position but the first, the attention sink):

    x_P ~ mu_P + A (x_R - mu_R),  A = S_PR (S_RR + lam I)^-1,

so the block computes W_K x_K + M x_R + b with M = W_P A (added to the regressors' columns of the kept weights) and
b = W_P (mu_P - A mu_R). This is the best linear estimate of x_P from x_R on the calibration statistics (for every
W_P at once); with A = 0 it is PP+'s mean compensation. The regressors are every kept channel for attention (its C
is small), and for the MLP a fixed core of channels, ranked once on calibration and always kept, so that the solve
stays r x r with r far below C (`core_size`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from .cache import cache_root
from .errors import ConfigError

if TYPE_CHECKING:
    from .config import PruneConfig
    from .stats import CalibStats

RECOVER_VERSION = 1  # bump when the fit or its stored format changes
CORE_FRACTION = 1 / 6  # the MLP's core: this fraction of its channels, rounded to mlp_multiple (256 of 1536)
RIDGE = 1e-3  # lam = RIDGE x the mean variance of the regressors: keeps S_RR + lam I well conditioned
# A block recovers only where its solve costs at most this share of the FLOPs its pruning saves on the batch: on a
# tiny batch the per-batch solve would cost more than pruning saves (the run would cost more than dense)
MAX_COST_SHARE = 0.5


def core_size(channels: int, multiple: int) -> int:
    """The MLP core's size for `channels` intermediate channels: CORE_FRACTION of them rounded to the nearest
    multiple of `multiple` (at least one multiple, at most every channel)."""
    m = max(1, multiple)
    return min(channels, max(m, round(channels * CORE_FRACTION / m) * m))


def core_ranking(energy: Tensor, w_fin: Tensor) -> Tensor:
    """(C,) channel indices, best first, by the output error their removal would add on calibration: `energy` (C,)
    sum of E[x_c^2] over positions times ||W[:, c]||^2 of the final projection `w_fin` (D, C)."""
    return (energy.float() * w_fin.float().square().sum(0)).argsort(descending=True)


@dataclass
class BlockCov:
    """One block's calibration statistics for recovery: `cols` (r0,) the channels that may be regressors (every
    channel for attention, the MLP's ranked core, best first), `cov` (C, r0) the covariance of every channel with
    them, `mean` (C,); fp32, over every calibration position but the first."""

    cols: Tensor
    cov: Tensor
    mean: Tensor

    def to(self, device: torch.device) -> "BlockCov":
        return BlockCov(self.cols.to(device), self.cov.to(device), self.mean.to(device))


def complement(kept: Tensor, channels: int) -> Tensor:
    """(C - k,) the channels not in `kept` (k,), ascending. The count is a shape, so no host-device sync."""
    mask = torch.ones(channels, dtype=torch.int8, device=kept.device).index_fill(0, kept, 0)
    return mask.argsort(descending=True, stable=True)[:channels - kept.shape[0]]


def recovery_terms(w_fin: Tensor, st: BlockCov, kept: Tensor, reg_pos: Tensor) -> tuple[Tensor, Tensor, int]:
    """M (D, r) and b (D,) of the module docstring, in fp32, and their FLOPs.

    `w_fin` (D, C) the final projection, `kept` (k,) the kept channels ascending, `reg_pos` (r,) positions in
    `st.cols` of the regressors (all of them kept). The pruned channels are the complement of `kept`. FLOPs:
    `recovery_flops`. No host sync: a failed factorisation (never, with the ridge) would give NaN, which the walk's
    finite check reports.
    """
    D, C = w_fin.shape
    pruned = complement(kept, C)
    w = w_fin.float()
    w_p = w.index_select(1, pruned)  # (D, p)
    s_r = st.cov.index_select(1, reg_pos)  # (C, r)
    s_rr = s_r.index_select(0, st.cols.index_select(0, reg_pos))  # (r, r)
    s_pr = s_r.index_select(0, pruned)  # (p, r)
    r = s_rr.shape[0]
    lam = RIDGE * s_rr.diagonal().mean().clamp_min(1e-12)
    chol, _ = torch.linalg.cholesky_ex(s_rr + lam * torch.eye(r, device=s_rr.device))
    p = pruned.shape[0]
    if p < D:  # solve for A^T (r, p), then W_P A: the cheaper order when fewer channels are pruned than D
        m = w_p @ torch.cholesky_solve(s_pr.T, chol).T
    else:  # solve for M^T = (S_RR + lam I)^-1 S_RP W_P^T (r, D)
        m = torch.cholesky_solve(s_pr.T @ w_p.T, chol).T
    mu_r = st.mean.index_select(0, st.cols.index_select(0, reg_pos))
    b = w_p @ st.mean.index_select(0, pruned) - m @ mu_r
    return m, b, recovery_flops(D, p, r)


def recovery_flops(d_out: int, pruned: int, regressors: int) -> int:
    """FLOPs of `recovery_terms` for D = `d_out`, p = `pruned`, r = `regressors`: r^3/3 (Cholesky), the cheaper
    of 2 r^2 p + 2 D p r (A first) and 2 r p D + 2 r^2 D (M first), and 2 D (p + r) for the bias."""
    D, p, r = d_out, pruned, regressors
    return r ** 3 // 3 + 2 * r * p * D + 2 * r * r * min(p, D) + 2 * D * (p + r)


# --- the fit's storage: in memory on the calibration statistics, on disk beside them ---------------------------
def recover_key(cfg: "PruneConfig", calib: "CalibStats") -> str:
    """Key (20 hex digits) of a recovery fit: the calibration's key, RECOVER_VERSION, the core's fraction and the
    ridge, and mlp_multiple (the core's rounding). The fit covers every layer and block, so no other setting enters."""
    parts = [str(calib.meta.get("key")), str(RECOVER_VERSION), repr(CORE_FRACTION), repr(RIDGE), str(cfg.mlp_multiple)]
    return "recover-" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def recover_path(key: str, cache_dir: str | Path | None = None) -> Path:
    """Where a recovery fit with `key` is cached on disk."""
    return cache_root(cache_dir) / "recover" / f"{key}.safetensors"


Fit = dict[tuple[int, str], BlockCov]


def _to_tensors(fit: Fit) -> dict[str, Tensor]:
    out = {}
    for (layer, name), st in fit.items():
        for field in ("cols", "cov", "mean"):
            out[f"{layer}.{name}.{field}"] = getattr(st, field).detach().cpu().contiguous()
    return out


def _from_tensors(t: dict[str, Tensor]) -> Fit:
    keys = {tuple(k.split(".")[:2]) for k in t}
    return {(int(layer), name): BlockCov(t[f"{layer}.{name}.cols"], t[f"{layer}.{name}.cov"],
                                         t[f"{layer}.{name}.mean"]) for layer, name in keys}


def stored_recovery(cfg: "PruneConfig", calib: "CalibStats") -> Optional[Fit]:
    """The recovery fit for `cfg` on `calib` if one was made: from memory (`calib.fits`), else from the disk cache
    (then kept in memory); None when there is none. A damaged disk entry reads as none (it is fitted again)."""
    return calib.stored_fit(recover_key(cfg, calib), recover_path, lambda path: _from_tensors(load_file(str(path))))


def keep_recovery(key: str, fit: Fit, calib: "CalibStats") -> None:
    """Keep a new fit in memory and, when the calibration is cached on disk, beside it (`CalibStats.keep_fit`)."""
    calib.keep_fit(key, fit, recover_path, lambda f, path: save_file(_to_tensors(f), str(path)))


def recovery_record(cfg: "PruneConfig", calib: "CalibStats", fit: Fit) -> dict:
    """What a run records about its recovery fit (`EvalResult.fitted["recovery"]`): the fit's key, the calibration
    windows it was measured on (key, count, length, hash; every position but the first), the MLP core's size and
    the ridge."""
    src = calib.source
    cores = [st.cols.shape[0] for (_, name), st in fit.items() if name != "attn"]
    return {"fit_key": recover_key(cfg, calib), "ridge": RIDGE, "mlp_core": max(cores) if cores else None,
            "fitted_on": {"calibration": calib.meta.get("key"), "windows": int(calib.meta.get("windows", 0)),
                          "tokens": int(calib.meta.get("seq_len", 0)),
                          "windows_sha256_16": calib.meta.get("windows_sha256_16"),
                          "positions": "every position but the first",
                          "source_windows": None if src is None else int(src.windows.shape[0])}}


NOT_RECOVERED = ("pp-plus's recovery is fitted on the calibration windows before the first batch, and no fit was made "
                 "for this calibration: build the pruner with ppcore.build_pruner, which fits it")


def recovery_fit(cfg: "PruneConfig", calib: "CalibStats") -> Fit:
    """`stored_recovery`, or ConfigError (NOT_RECOVERED) when there is none."""
    fit = stored_recovery(cfg, calib)
    if fit is None:
        raise ConfigError(NOT_RECOVERED)
    return fit
