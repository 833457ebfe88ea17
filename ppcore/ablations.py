"""The paper's ablations as named grids of PruneConfig settings (issue 16, docs/ablations.md).

Each ablation is a list of `Variant`s: a label and the PruneConfig fields it sets on top of PP's defaults at the
grid's ratio. No variant has a code path of its own: every one is a setting of the one config (history: the
method, use_history and ema; probe: token_frac and sample_frac; score: score; fusion: fusion and probe_weight;
blocks: attn_ratio and mlp_ratio). `python -m ppcore ablate NAME` runs one (`ppcore.ablate_run`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

from .config import PruneConfig
from .errors import ConfigError

ORACLE = "full batch (oracle)"


@dataclass(frozen=True)
class Variant:
    """One row of an ablation: `label`, and `settings` (PruneConfig fields) set on PP's defaults at the ratio;
    a callable value gets the ratio (for the block ratios)."""

    label: str
    settings: dict[str, Any] = field(default_factory=dict)

    def config(self, ratio: float, base: PruneConfig = PruneConfig()) -> PruneConfig:
        """The variant's PruneConfig at `ratio` (ConfigError for an invalid combination)."""
        values = {k: (v(ratio) if callable(v) else v) for k, v in self.settings.items()}
        return replace(base.as_method(values.pop("method", "pp"), ratio), **values)


@dataclass(frozen=True)
class Ablation:
    """A named grid: what it asks (`question`), its variants, and whether keep-sets are compared with the
    full-batch oracle's (`jaccard`; the oracle then runs too)."""

    name: str
    question: str
    variants: tuple[Variant, ...]
    jaccard: bool = False


def _times(k: float) -> Callable[[float], float]:
    return lambda r: round(k * r, 4)


ABLATIONS: dict[str, Ablation] = {a.name: a for a in (
    Ablation("history", "Where does the decision come from: calibration alone, the probe alone, the probe fused with "
             "a frozen calibration history, or with the history PP adapts batch by batch?", (
                 Variant("calibration only (ppsp-calib)", {"method": "ppsp-calib"}),
                 Variant("probe only", {"use_history": False}),
                 Variant("probe + frozen calibration (ema 1)", {"ema": 1.0}),
                 Variant("probe + history (PP)"),
             ), jaccard=True),
    Ablation("probe", "How large must the probe be, and of what: tokens only, samples only, both; from a few percent "
             "of the batch to all of it (with PP's history)?", (
                 Variant("tokens 10% x samples 5%", {"token_frac": 0.1}),
                 Variant("tokens 25% x samples 5%", {"token_frac": 0.25}),
                 Variant("tokens 50% x samples 5% (PP)"),
                 Variant("samples 5% only (all tokens)", {"token_frac": 1.0}),
                 Variant("tokens 50% only (all samples)", {"sample_frac": 1.0}),
                 Variant("tokens 50% x samples 25%", {"sample_frac": 0.25}),
                 Variant("whole batch + history", {"token_frac": 1.0, "sample_frac": 1.0}),
             ), jaccard=True),
    Ablation("score", "Does the probe improve every metric? PPsp, Wanda-sp's and FLAP's scores, each on the probe's "
             "energy fused with the history and on calibration alone (uniform ratio, no FLAP allocation or bias).", (
                 Variant("PPsp, probe (PP)"),
                 Variant("Wanda-sp score, probe", {"score": "wanda-sp"}),
                 Variant("FLAP score, probe", {"score": "flap"}),
                 Variant("PPsp, calibration", {"method": "ppsp-calib"}),
                 Variant("Wanda-sp score, calibration", {"method": "ppsp-calib", "score": "wanda-sp"}),
                 Variant("FLAP score, calibration", {"method": "ppsp-calib", "score": "flap"}),
             )),
    Ablation("fusion", "Importance-scaled fusion against a fixed blend X * probe + (1 - X) * history.", (
                 Variant("importance-scaled (PP)"),
                 Variant("fixed X 0.1", {"fusion": "fixed", "probe_weight": 0.1}),
                 Variant("fixed X 0.5", {"fusion": "fixed", "probe_weight": 0.5}),
                 Variant("fixed X 0.9", {"fusion": "fixed", "probe_weight": 0.9}),
                 Variant("probe only (X 1)", {"fusion": "fixed", "probe_weight": 1.0}),
             )),
    Ablation("blocks", "Attention against MLP: the ratio on one block kind only, or shifted between them "
             "(ratios averaged over all layers, as ratio).", (
                 Variant("attention r, MLP r (PP)"),
                 Variant("attention only (MLP 0)", {"mlp_ratio": 0.0}),
                 Variant("MLP only (attention 0)", {"attn_ratio": 0.0}),
                 Variant("attention r/2, MLP 3r/2", {"attn_ratio": _times(0.5), "mlp_ratio": _times(1.5)}),
                 Variant("attention 3r/2, MLP r/2", {"attn_ratio": _times(1.5), "mlp_ratio": _times(0.5)}),
             )),
)}


def ablation(name: str) -> Ablation:
    """The ablation of that name; ConfigError naming the known ones otherwise."""
    if name not in ABLATIONS:
        raise ConfigError(f"unknown ablation {name!r}; choose from {', '.join(ABLATIONS)}")
    return ABLATIONS[name]


def carried(base: PruneConfig) -> list[str]:
    """The settings some ablation varies that `base` sets away from PP's defaults ('use_history=False'): every
    variant that does not set them itself keeps them, its '(PP)' row included, so the grid then ablates another
    reference than PP's."""
    default = PruneConfig()
    varied = sorted({k for a in ABLATIONS.values() for v in a.variants for k in v.settings} - {"method"})
    return [f"{k}={getattr(base, k)!r}" for k in varied if getattr(base, k) != getattr(default, k)]


def grid(name: str, ratios: list[float], base: PruneConfig = PruneConfig()) -> list[tuple[str, PruneConfig]]:
    """(label, config) of every run of the ablation: dense first, then per ratio the oracle (when the ablation
    compares keep-sets with it) and every variant. Labels carry the ratio ('probe only @ 0.4'). Raises
    ConfigError for an unknown name, no ratio, or a variant invalid at a ratio."""
    a = ablation(name)
    if not ratios:
        raise ConfigError("give at least one ratio")
    if len(set(ratios)) != len(ratios):
        raise ConfigError(f"each ratio once, got {', '.join(f'{r:g}' for r in ratios)}")
    out = [("dense", replace(base, method="dense", ratio=0.0))]
    for r in ratios:
        if a.jaccard:
            out.append((f"{ORACLE} @ {r:g}", base.as_method("fullbatch", r)))
        for v in a.variants:
            try:
                out.append((f"{v.label} @ {r:g}", v.config(r, base)))
            except ConfigError as e:
                raise ConfigError(f"ablation {name}, {v.label} at ratio {r:g}: {e}") from None
    return out
