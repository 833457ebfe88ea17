"""The result header's eight metrics, as text: one definition for the page (app/main.py) and for the checks
that read the page back (bench/load_test.py). No streamlit here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

WHOLE = "whole model: the decoder layers and the LM head (what wall time pays)"
DECODER = "decoder layers only, the LM head left out: the paper's definition, for comparing with its figures"


@dataclass(frozen=True)
class Metric:
    label: str
    value: str
    delta: Optional[str] = None
    help: Optional[str] = None

    def lines(self) -> list[str]:
        """The metric's visible text lines, as a browser shows them (label, value, delta)."""
        return [self.label, self.value] + ([self.delta] if self.delta else [])


def _ratio(v: Optional[float], fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def header_metrics(s: dict[str, Any], method: str) -> list[Metric]:
    """From `ppcore.session.Analysis.summary()`: perplexities (with the change), KL, top-1 agreement, then the four
    FLOPs figures of `ppcore.flops.flops_ratios` (pruned and probe FLOPs over dense, counted over the whole
    model and over the decoder layers only). Decoder figures of an old record without a `head` count: n/a."""
    return [
        Metric("Perplexity, dense", f"{s['ppl_dense']:.2f}"),
        Metric(f"Perplexity, {method}", f"{s['ppl_pruned']:.2f}", f"{s['ppl_pruned'] - s['ppl_dense']:+.2f}"),
        Metric("KL(dense ‖ pruned)", f"{s['kl']:.4f}", help="nats, mean over the batch's real positions"),
        Metric("Top-1 agreement", f"{s['top1']:.1%}"),
        Metric("FLOPs / dense (whole model)", _ratio(s["flops_ratio"], ".3f"),
               help=f"pruned over dense FLOPs, {WHOLE}"),
        Metric("FLOPs / dense (decoder layers)", _ratio(s["decoder_flops_ratio"], ".3f"),
               help=f"pruned over dense FLOPs, {DECODER}"),
        Metric("Probe FLOPs / dense (whole model)", _ratio(s["probe_flops_ratio"], ".2%"),
               help=f"the probe's FLOPs over the dense FLOPs, {WHOLE}"),
        Metric("Probe FLOPs / dense (decoder layers)", _ratio(s["decoder_probe_flops_ratio"], ".2%"),
               help=f"the probe's FLOPs over the dense FLOPs, {DECODER}"),
    ]
