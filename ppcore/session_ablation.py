"""The facade's ablation (see ppcore.session, which re-exports it): one named ablation grid (`ppcore.ablations`) on
the analysis's batch, for the app's Compare methods tab (issue 16: "In the app, the comparison view can run any named
ablation on the current batch"; docs/app.md, Compare methods; docs/ablations.md).

`python -m ppcore ablate NAME` runs the same grid on the default protocol: many batches, interleaved after the
official warm-up, over seeds (`ppcore.ablate_run`). Here it is ONE batch, with no warm-up, every run through a
fresh Pruner: PP's history is the calibration's, as everywhere else in the app.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from .ablations import ORACLE, ablation as named_ablation, grid
from .analysis import keep_jaccard, perplexity
from .config import PruneConfig
from .errors import ConfigError
from .flops import flops_ratios
from .progress import Progress, layer_ticks as _ticks, quiet as _quiet
from .record import BLOCK_NAMES, BatchRecord
from .fitting import build_pruner
from .walk import token_nll, walk

if TYPE_CHECKING:
    from .loading import LoadedModel
    from .session import Analysis, Calibration

__all__ = ["AblationResult", "AblationRow", "ablation"]

PP_MARK = "(PP)"  # the variant every ablation labels as PP itself: the reference of `ppl_vs_pp`



@dataclass
class AblationRow:
    """One run of the grid on the batch.

    label: the grid's label ('probe only @ 0.4'); variant: the label without the ratio ('probe only'; 'dense' and
    the oracle's label are rows too, first); config: its `PruneConfig.to_dict()`. ppl: perplexity over the batch's
    real tokens (exp of the mean next-token NLL in nats, the analysis's mask); ppl_vs_pp: ppl minus the PP reference
    variant's (the one whose label ends with '(PP)'). decoder_flops_ratio, decoder_probe_flops_ratio: pruned and
    probe FLOPs over dense's, decoder layers only (`ppcore.flops.flops_ratios`, the paper's definition).
    jaccard_attn, jaccard_mlp: mean over the layers of the keep-set's Jaccard with the oracle's (query heads, MLP
    channels), None where the ablation compares no keep-sets, for dense and the oracle itself, and for a block
    kind nothing pruned; layer_jaccard_attn, layer_jaccard_mlp: the same per layer, (layers,) float64, NaN where
    neither run pruned the block, or None likewise.
    """

    label: str
    variant: str
    config: dict[str, Any]
    ppl: float
    ppl_vs_pp: float
    decoder_flops_ratio: Optional[float]
    decoder_probe_flops_ratio: Optional[float]
    jaccard_attn: Optional[float] = None
    jaccard_mlp: Optional[float] = None
    layer_jaccard_attn: Optional[np.ndarray] = None
    layer_jaccard_mlp: Optional[np.ndarray] = None

    @property
    def method(self) -> str:
        return str(self.config["method"])

    def row(self) -> dict[str, Any]:
        """Flat, for a table: variant, method, ppl, ppl_vs_pp, the two FLOPs ratios, the two mean Jaccards."""
        return {"variant": self.variant, "method": self.method, "ppl": self.ppl, "ppl_vs_pp": self.ppl_vs_pp,
                "decoder_flops_ratio": self.decoder_flops_ratio,
                "decoder_probe_flops_ratio": self.decoder_probe_flops_ratio,
                "jaccard_attn": self.jaccard_attn, "jaccard_mlp": self.jaccard_mlp}


@dataclass
class AblationResult:
    """A named ablation on one batch: its name and question, the ratio, whether keep-sets were compared with the
    oracle (`jaccard`), the base config every variant was built on (`base`, `PruneConfig.to_dict()`), and one
    `AblationRow` per run in the grid's order (dense first, then the oracle where compared, then the variants)."""

    name: str
    question: str
    ratio: float
    jaccard: bool
    base: dict[str, Any]
    rows: list[AblationRow]

    @property
    def dense(self) -> AblationRow:
        return self.rows[0]

    @property
    def reference(self) -> AblationRow:
        """The PP reference variant (label ending with '(PP)')."""
        return next(r for r in self.rows if r.variant.endswith(PP_MARK))

    def table(self) -> list[dict[str, Any]]:
        """`AblationRow.row()` of every run, in order."""
        return [r.row() for r in self.rows]



def _per_layer(rec: BatchRecord, oracle: BatchRecord, block: str) -> tuple[Optional[float], np.ndarray]:
    """(mean over the layers either run pruned, or None; per layer (layers,) float64, NaN where neither did)."""
    vals = keep_jaccard(rec, oracle, block)
    got = [v for v in vals if v is not None]
    return (statistics.fmean(got) if got else None), np.array([np.nan if v is None else v for v in vals])


def ablation(lm: "LoadedModel", calib: Optional["Calibration"], a: "Analysis", name: str,
             progress: Progress = _quiet) -> AblationResult:
    """Ablation `name` (`ppcore.ablations.ABLATIONS`) at the analysis's ratio on its batch (`a.batch.ids` (B, L),
    `a.batch.mask`): every (label, config) of `grid(name, [a.ratio], base)`, with `base` the analysed config as pp at
    `a.ratio` (its skip layers, MLP multiple, block switches... carry over to every variant, and so do ablated
    settings it sets itself where a variant does not set them). Dense is the analysis's own (`a.nll_dense`); every
    other run goes through a fresh Pruner at level "summary" (one batch, no warm-up: PP's history is the
    calibration's, as everywhere in the app; so on one batch the 'history' grid's frozen history (ema 1) decides
    exactly as PP does).

    Per run: perplexity over the batch (the same mask as the analysis), its difference from PP's, the decoder and
    decoder-probe FLOPs ratios, and where the ablation compares keep-sets (`Ablation.jaccard`) the Jaccard of each
    block's keep-set with the oracle's (`ppcore.analysis.keep_jaccard`: per layer, and its mean over the layers).
    `progress(fraction, text)` per run and per layer. The CLI's `ablate` (`ppcore.ablate_run`) averages the same
    figures over many batches and seeds.

    Raises ConfigError for an unknown name, a variant invalid at this ratio or for this model (skipped layers, a
    block ratio it cannot meet) or one that needs calibration when `calib` is None, all before any walk; what
    `walk` raises (NonFiniteError) otherwise.
    """
    spec = named_ablation(name)
    base = replace(a.cfg, method="pp", ratio=a.ratio)  # the analysed settings, as PP (a.cfg.ratio is 0 for dense)
    labelled = grid(name, [a.ratio], base)
    n_layers = lm.adapter.dims.num_layers
    for label, cfg in labelled:
        try:
            cfg.check_layers(n_layers)
        except ConfigError as e:
            raise ConfigError(f"ablation {name}, {label}: {e}") from None
        if calib is None and cfg.needs_calibration:
            raise ConfigError(f"ablation {name}, {label}: method {cfg.method!r} needs calibration statistics")
    ids, mask = a.batch.ids, a.batch.mask
    dense_ppl = perplexity(a.nll_dense, a.nll_mask)
    runs = labelled[1:]  # dense is the analysis's
    measured: list[tuple[str, PruneConfig, float, dict[str, Optional[float]], Optional[BatchRecord]]] = [
        (labelled[0][0], labelled[0][1], dense_ppl, flops_ratios(a.dense.flops), None)]
    oracle: Optional[BatchRecord] = None
    for k, (label, cfg) in enumerate(runs):
        lo, hi = k / len(runs), (k + 1) / len(runs)
        text = f"{label} ({k + 1} of {len(runs)})"
        progress(lo, text)
        # Fresh: one batch, no warm-up.
        pruner = build_pruner(lm.adapter, cfg, calib.stats if calib is not None else None)
        res = walk(lm.adapter, pruner, ids, mask, level="summary", on_layer=_ticks(progress, lo, hi, text))
        nll, m = token_nll(lm.adapter, res.hidden, ids, res.valid)
        ppl = perplexity(nll, m)
        rec = res.record
        del res, nll, m  # the (B, L, D) hidden state goes now, before the next walk
        assert rec is not None  # level "summary" records
        if spec.jaccard and label.startswith(ORACLE):
            oracle = rec
        measured.append((label, cfg, ppl, flops_ratios(rec.flops), rec if spec.jaccard else None))
    progress(1.0, "done")
    pp_ppl = next(p for label, _, p, _, _ in measured if label.rsplit(" @ ", 1)[0].endswith(PP_MARK))
    rows = []
    for label, cfg, ppl, flops, rec in measured:
        row = AblationRow(label, label.rsplit(" @ ", 1)[0], cfg.to_dict(), ppl, ppl - pp_ppl,
                          flops["decoder_flops_ratio"], flops["decoder_probe_flops_ratio"])
        if rec is not None and oracle is not None and not label.startswith(ORACLE):
            (row.jaccard_attn, row.layer_jaccard_attn), (row.jaccard_mlp, row.layer_jaccard_mlp) = (
                _per_layer(rec, oracle, b) for b in BLOCK_NAMES)
        rows.append(row)
    return AblationResult(name, spec.question, a.ratio, spec.jaccard, base.to_dict(), rows)

