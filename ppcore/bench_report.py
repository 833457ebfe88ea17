"""Tables and the chart of a bench run: mean and standard error over seeds, PRR, official figures.

PRR (performance degradation per unit of runtime reduction, docs/algorithm.md §9.4; `ppcore.analysis.prr`)
= (ppl - dense ppl) / (1 - seconds / dense seconds), per seed on the same batches, then averaged: lower
is better. It is undefined when a method saves no time. Rows are `ppcore.bench` rows (plain dicts).
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Optional

from .analysis import prr as prr_of

Row = dict[str, Any]


def mean_se(xs: list[float]) -> tuple[float, Optional[float]]:
    """Mean and standard error std/sqrt(n) (None for a single value), as the paper's tables report them
    (docs/algorithm.md §9.2)."""
    m = statistics.fmean(xs)
    return m, (statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else None)


def _mean_or_none(xs: list[Optional[float]]) -> Optional[float]:
    """Mean of the values, or None when any is missing (rows written before the decoder figures existed)."""
    return None if not xs or any(x is None for x in xs) else statistics.fmean(xs)


def _fmt(m: float, se: Optional[float], digits: int = 2) -> str:
    return f"{m:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")


def aggregate(rows: list[Row]) -> list[Row]:
    """One entry per (method, ratio): ppl, time, the four FLOPs figures, the achieved ratios and PRR over seeds."""
    dense = {r["seed"]: r for r in rows if r["method"] == "dense"}
    keys: list[tuple[str, float]] = []
    for r in rows:
        if (r["method"], r["ratio"]) not in keys:
            keys.append((r["method"], r["ratio"]))
    out = []
    for method, ratio in keys:
        group = [r for r in rows if r["method"] == method and r["ratio"] == ratio]
        paired = [(r, dense[r["seed"]]) for r in group if r["seed"] in dense]
        rel = [r["seconds"] / d["seconds"] for r, d in paired]
        prr = [v for r, d in paired
               if (v := prr_of(r["ppl"], d["ppl"], r["seconds"], d["seconds"])) is not None]
        out.append({
            "method": method, "ratio": ratio, "seeds": [r["seed"] for r in group],
            "ppl": mean_se([r["ppl"] for r in group]), "seconds": mean_se([r["seconds"] for r in group]),
            "time_vs_dense": mean_se(rel) if rel else None,
            "flops_ratio": statistics.fmean(r["flops_ratio"] for r in group),
            "decoder_flops_ratio": _mean_or_none([r.get("decoder_flops_ratio") for r in group]),
            "probe_flops_ratio": statistics.fmean(r["probe_flops_ratio"] for r in group),
            "decoder_probe_flops_ratio": _mean_or_none([r.get("decoder_probe_flops_ratio") for r in group]),
            "heads_removed": _mean_or_none([r.get("heads_removed") for r in group]),
            "channels_removed": _mean_or_none([r.get("channels_removed") for r in group]),
            "prr": mean_se(prr) if method != "dense" and len(prr) == len(group) and prr else None,
        })
    return out


def markdown(rows: list[Row]) -> str:
    """The seeded table: the nominal ratio and the achieved one (heads / MLP channels removed), FLOPs over the
    whole model (LM head in: what wall time pays) and over the decoder layers only (the paper's definition),
    for the pruned model and for the probe."""
    lines = ["| method | ratio | removed: heads / channels | perplexity | seconds | time / dense | FLOPs / dense "
             "(model) | FLOPs / dense (decoder) | probe FLOPs (model) | probe FLOPs (decoder) | PRR |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in aggregate(rows):
        tvd = _fmt(*a["time_vs_dense"], digits=3) if a["time_vs_dense"] else "-"
        prr = _fmt(*a["prr"]) if a["prr"] else ("-" if a["method"] == "dense" else "n/a (no time saved)")
        dec = "-" if a["decoder_flops_ratio"] is None else f"{a['decoder_flops_ratio']:.3f}"
        dec_probe = "-" if a["decoder_probe_flops_ratio"] is None else f"{a['decoder_probe_flops_ratio']:.2%}"
        removed = " / ".join("-" if a[k] is None else f"{a[k]:.1%}" for k in ("heads_removed", "channels_removed"))
        lines.append(f"| {a['method']} | {a['ratio']:.0%} | {removed} | {_fmt(*a['ppl'])} | {_fmt(*a['seconds'], 1)} | "
                     f"{tvd} | "
                     f"{a['flops_ratio']:.3f} | {dec} | {a['probe_flops_ratio']:.2%} | {dec_probe} | {prr} |")
    return "\n".join(lines)


def official_markdown(rows: list[Row]) -> str:
    """Our perplexity and per-batch losses on the official windows beside the official run's (rows of
    `ppcore.bench.official_rows`; a missing official figure, or older rows without batch losses, show '-')."""
    lines = ["| method | ratio | ours | official | diff | our batch losses | official batch losses |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        off = r.get("official_ppl")
        diff = f"{100 * (r['ppl'] / off - 1):+.2f} %" if off else "-"
        ours = _losses(r.get("batch_loss"))
        theirs = _losses(r.get("official_batch_loss")) if off else "-"
        lines.append(f"| {r['method']} | {r['ratio']:.0%} | {r['ppl']:.2f} | {off or '-'} | {diff} | {ours} "
                     f"| {theirs} |")
    return "\n".join(lines)


def _losses(xs: Optional[list[float]]) -> str:
    return ", ".join(f"{x:.4f}" for x in xs) if xs else "-"


def chart_html(rows: list[Row], title: str) -> str:
    """Perplexity against runtime (fraction of dense), one line per method across ratios."""
    import plotly.graph_objects as go

    agg = aggregate(rows)
    fig = go.Figure()
    for method in dict.fromkeys(a["method"] for a in agg):
        pts = sorted((a for a in agg if a["method"] == method and a["time_vs_dense"]), key=lambda a: a["ratio"])
        fig.add_trace(go.Scatter(
            x=[a["time_vs_dense"][0] for a in pts], y=[a["ppl"][0] for a in pts], mode="lines+markers",
            name=method, text=[f"{method} {a['ratio']:.0%}" for a in pts],
            error_y={"type": "data", "array": [a["ppl"][1] or 0 for a in pts]},
        ))
    fig.update_layout(title=title, xaxis_title="wall time / dense wall time", yaxis_title="perplexity",
                      template="plotly_white")
    return fig.to_html(include_plotlyjs=True, full_html=True)
