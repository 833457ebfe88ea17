"""Tables and the chart of an ablation run (`ppcore.ablate_run.run_ablation`'s result), made from its JSON alone."""
from __future__ import annotations

from typing import Any, Optional

from .ablate_run import summary
from .bench_report import mean_se


def _vs_pp(res: dict[str, Any], label: str, pp_label: str) -> Optional[tuple[float, Optional[float]]]:
    """Mean and SE over seeds of (ppl of `label` - ppl of PP), paired by seed; None for PP itself or no PP row."""
    if label == pp_label:
        return None
    ppl = {(r["label"], r["seed"]): r["ppl"] for r in res["rows"]}
    diffs = [ppl[(label, s)] - ppl[(pp_label, s)] for s in res["seeds"] if (pp_label, s) in ppl and (label, s) in ppl]
    return mean_se(diffs) if diffs else None


def _pp_label(entries: list[dict[str, Any]], ratio: float) -> Optional[str]:
    return next((e["label"] for e in entries if e["ratio"] == ratio and e["variant"].endswith("(PP)")), None)


def _f(x: Optional[float], digits: int = 3) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _pm(m: tuple[float, Optional[float]] | None, digits: int = 2, sign: bool = False) -> str:
    if m is None:
        return ""
    value = f"{m[0]:+.{digits}f}" if sign else f"{m[0]:.{digits}f}"
    return value + (f" ± {m[1]:.{digits}f}" if m[1] is not None else "")


def markdown(res: dict[str, Any]) -> str:
    """Per ratio: one row per variant (dense first) with perplexity (mean ± SE over seeds), its paired difference
    from PP, the decoder FLOPs ratio, the probe's share of the decoder's dense FLOPs and, where measured, the
    Jaccard of the keep-sets with the full-batch oracle's."""
    entries = summary(res)
    dense = next((e for e in entries if e["method"] == "dense"), None)
    jac = any(e["jaccard"] for e in entries)
    head = ("| variant | ppl | ppl − PP | FLOPs / dense (decoder) | probe FLOPs (decoder) |"
            + (" Jaccard heads | Jaccard channels |" if jac else ""))
    rule = "|---|---:|---:|---:|---:|" + ("---:|---:|" if jac else "")
    parts = [f"**{res['ablation']}**: {res['question']}", ""]
    if res.get("carried"):
        parts += [f"Every variant also has {', '.join(res['carried'])} unless it sets it itself, the (PP) row "
                  "included: the reference is not PP's defaults.", ""]
    for ratio in res["ratios"]:
        pp = _pp_label(entries, ratio)
        parts += [f"Ratio {ratio:g} (seeds {', '.join(map(str, res['seeds']))}):", "", head, rule]
        group = ([dense] if dense else []) + [e for e in entries if e["ratio"] == ratio and e["method"] != "dense"]
        for e in group:
            cells = [e["variant"], _pm(e["ppl"]), _pm(_vs_pp(res, e["label"], pp), sign=True) if pp else "",
                     _f(e["decoder_flops_ratio"]), _f(e["decoder_probe_flops_ratio"], 4)]
            if jac:
                j = e["jaccard"] or {}
                cells += [_f(j.get("attn")), _f(j.get("mlp"))]
            parts.append("| " + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts).rstrip()


def chart_html(res: dict[str, Any]) -> str:
    """Perplexity per variant (mean ± SE over seeds), one bar group per ratio; dense as a line."""
    import plotly.graph_objects as go

    entries = summary(res)
    fig = go.Figure()
    for ratio in res["ratios"]:
        group = [e for e in entries if e["ratio"] == ratio and e["method"] != "dense"]
        fig.add_trace(go.Bar(x=[e["variant"] for e in group], y=[e["ppl"][0] for e in group], name=f"ratio {ratio:g}",
                             error_y={"type": "data", "array": [e["ppl"][1] or 0 for e in group]}))
    dense = [e for e in entries if e["method"] == "dense"]
    if dense:
        fig.add_hline(y=dense[0]["ppl"][0], line_dash="dot", annotation_text="dense")
    fig.update_layout(title=f"Ablation '{res['ablation']}': perplexity (mean ± SE over seeds "
                            f"{', '.join(map(str, res['seeds']))})", yaxis_title="perplexity", barmode="group",
                      template="plotly_white")
    return fig.to_html(include_plotlyjs=True, full_html=True)


