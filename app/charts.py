"""Plotly figures built from run records and tables. Figures keep Plotly's own PNG export button."""
from __future__ import annotations

import html
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

PROBE = "#d62728"  # probe picks, everywhere


def visible(tok: str) -> str:
    """A token as a chart's tick or tooltip text: newlines visible, blank tokens quoted."""
    return tok.replace("\n", "\\n") if tok.strip() else repr(tok)


def _show(tok: str) -> str:
    """`visible`, with '&', '<' and '>' as entities, since Plotly would apply a token such as '<b>' or
    '<a href=...>' as markup (Gemma's vocabulary holds such tags as single tokens; a record's labels can hold
    anything)."""
    return html.escape(visible(tok), quote=False)


def kept_map(m: np.ndarray, unit: str, title: str) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=m, zmin=0, zmax=1, colorscale=[[0, "#d9d9d9"], [1, "#1f77b4"]],
                               colorbar=dict(tickvals=[0, 1], ticktext=["pruned", "kept"]),
                               hovertemplate=f"layer %{{y}}, {unit} %{{x}}: %{{z}} (1 = kept)<extra></extra>"))
    fig.update_layout(title=title, height=420, margin=dict(l=50, r=20, t=50, b=40))
    fig.update_yaxes(title="layer", autorange="reversed")
    fig.update_xaxes(title=unit)
    return fig


def lines(df: pd.DataFrame, x: str, y: str, color: str, title: str, y_title: str, y_range=None) -> go.Figure:
    fig = px.line(df, x=x, y=y, color=color, markers=True, title=title)
    fig.update_layout(height=340, margin=dict(l=50, r=20, t=50, b=40), yaxis_title=y_title)
    if y_range:
        fig.update_yaxes(range=y_range)
    return fig


def scores_chart(scores: Sequence[float], kept: Sequence[int], unit: str, title: str) -> go.Figure:
    """Heads: one bar each, kept or pruned; channels: histograms of kept and pruned scores."""
    s = np.asarray(scores, dtype=float)
    is_kept = np.zeros(len(s), dtype=bool)
    is_kept[list(kept)] = True
    df = pd.DataFrame({unit: np.arange(len(s)), "score": s, "decision": np.where(is_kept, "kept", "pruned")})
    cmap = {"kept": "#1f77b4", "pruned": "#aaaaaa"}
    if len(s) <= 64:
        fig = px.bar(df, x=unit, y="score", color="decision", color_discrete_map=cmap, title=title)
    else:
        fig = px.histogram(df, x="score", color="decision", nbins=60, color_discrete_map=cmap, title=title,
                           barmode="overlay")
    fig.update_layout(height=320, margin=dict(l=50, r=20, t=50, b=40))
    return fig


def stability_chart(mat: np.ndarray, block: str) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=mat, zmin=0, zmax=1, colorscale="Blues", colorbar=dict(title="Jaccard"),
                               hovertemplate="batches %{y}→next, layer %{x}: %{z:.2f}<extra></extra>"))
    fig.update_layout(title=f"{block}: keep-set Jaccard between consecutive batches", height=260,
                      margin=dict(l=60, r=20, t=50, b=40))
    fig.update_yaxes(title="batch pair", dtick=1)
    fig.update_xaxes(title="layer")
    return fig


def colored_tokens(tokens: list[str], values: Sequence[Optional[float]], vmax: float, diverging: bool) -> str:
    """HTML: each token tinted by its value (red = high loss, or red/green = worse/better when diverging)."""
    spans = []
    for tok, v in zip(tokens, values):
        if v is None:
            bg = "transparent"
            tip = "first token: nothing predicts it"
        else:
            a = min(abs(v) / vmax, 1.0) if vmax > 0 else 0.0
            rgb = "214,39,40" if (v > 0 or not diverging) else "44,160,44"
            bg = f"rgba({rgb},{a:.2f})"
            tip = f"{v:+.3f}" if diverging else f"{v:.3f} nats"
        spans.append(f'<span title="{html.escape(tip)}" style="background:{bg};padding:1px 0;border-radius:2px">'
                     f"{html.escape(tok).replace(chr(10), '⏎')}</span>")
    # Large enough to read from the back of a lecture hall.
    return ('<div style="line-height:2.0;font-family:monospace;font-size:1.15rem;white-space:pre-wrap">'
            + "".join(spans) + "</div>")


def diff_bars(tokens: list[str], diff: Sequence[float], title: str) -> go.Figure:
    labels = [f"{i + 1}:{_show(t)}" for i, t in enumerate(tokens)]
    colors = ["#d62728" if d > 0 else "#2ca02c" for d in diff]
    fig = go.Figure(go.Bar(x=labels, y=list(diff), marker_color=colors,
                           hovertemplate="%{x}<br>Δ loss %{y:+.3f}<extra></extra>"))
    fig.update_layout(title=title, height=300, margin=dict(l=40, r=20, t=50, b=100),
                      yaxis_title="pruned − dense (nats)")
    fig.update_xaxes(tickangle=-60, tickfont=dict(size=13))
    return fig


def latency_bars(df: pd.DataFrame, title: str) -> go.Figure:
    fig = px.bar(df, x="layer", y="seconds", color="part", facet_row="block", title=title,
                 color_discrete_map={"probe": PROBE, "decide": "#ff7f0e", "full inference": "#1f77b4",
                                     "dense full inference": "#bbbbbb"}, barmode="group")
    fig.update_layout(height=520, margin=dict(l=50, r=20, t=60, b=40))
    return fig


# One colour per method in every chart (Plotly's own would follow each chart's row order, so a method would change
# colour from one lecture step to the next).
# One colour per method of ppcore.config.METHODS, none shared (ppsp-calib had none and took Plotly's next, wanda-sp's
# orange, in a newcomer's compare chart).
METHOD_COLORS = {"dense": "#7f7f7f", "pp": "#1f77b4", "pp-plus": "#17becf", "fullbatch": "#9467bd",
                 "wanda-sp": "#ff7f0e", "flap": "#2ca02c", "ppsp-calib": "#8c564b"}


def compare_scatter(df: pd.DataFrame) -> go.Figure:
    """Perplexity against time relative to dense, one point per method and ratio; PRR shown as "n/a" where a
    method saved no time (never "None")."""
    df = df.assign(prr=[("n/a" if v is None or pd.isna(v) else f"{v:.2f}") for v in df["prr"]])
    fig = px.scatter(df, x="time_vs_dense", y="ppl", color="method", color_discrete_map=METHOD_COLORS,
                     symbol="ratio" if df["ratio"].nunique() > 1 else None,
                     hover_data=["ratio", "flops_ratio", "decoder_flops_ratio", "prr"], text="method",
                     title="Perplexity against time (both relative to the same batch)")
    fig.update_traces(textposition="top center", marker_size=11)
    fig.update_layout(height=420, xaxis_title="time / dense time", yaxis_title="perplexity on the batch")
    return fig


# --- stage 2 (history) and the why-panel --------------------------------------------------------------------------
KEPT, PRUNED = "#1f77b4", "#bbbbbb"
CHANGE_COLORS = {"kept by both": KEPT, "pruned by both": PRUNED, "kept thanks to the history": "#2ca02c",
                 "pruned because of the history": PROBE, "kept": KEPT, "pruned": PRUNED}


def decision_labels(total: int, kept: Sequence[int], kept_probe_only: Optional[Sequence[int]]) -> list[str]:
    """Per unit: kept / pruned, and with a probe-only keep-set, whether the history changed that."""
    k = set(kept)
    if kept_probe_only is None:
        return ["kept" if u in k else "pruned" for u in range(total)]
    a = set(kept_probe_only)
    return ["kept by both" if u in k and u in a else "pruned by both" if u not in k and u not in a
            else "kept thanks to the history" if u in k else "pruned because of the history" for u in range(total)]


def stage2_bars(probe: np.ndarray, history: Optional[np.ndarray], fused: np.ndarray,
                fusion_weight: Optional[np.ndarray], labels: list[str], unit: str, title: str) -> go.Figure:
    """Few units (heads): per unit the probe's, the history's and the fused energy (log scale), and below it the
    mean fusion weight (the weight given to the probe); the x labels say what was decided and whether the history
    changed it."""
    x = [f"{unit} {u}<br>{lab}" for u, lab in enumerate(labels)]
    rows = 2 if fusion_weight is not None else 1
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        row_heights=[0.7, 0.3] if rows == 2 else [1.0],
                        subplot_titles=("Energy per " + unit + " (log scale)",) + ((
                            "Mean fusion weight: the weight given to the probe (1 = probe only, 0 = history only)",)
                            if rows == 2 else ()))
    fig.add_trace(go.Bar(x=x, y=probe, name="probe (P)", marker_color=PROBE,
                         hovertemplate="%{x}<br>probe energy %{y:.4g}<extra></extra>"), row=1, col=1)
    if history is not None:
        fig.add_trace(go.Bar(x=x, y=history, name="history (G)", marker_color="#9467bd",
                             hovertemplate="%{x}<br>history energy %{y:.4g}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Bar(x=x, y=fused, name="fused (scored by PPsp)", marker_color=KEPT,
                         hovertemplate="%{x}<br>fused energy %{y:.4g}<extra></extra>"), row=1, col=1)
    fig.update_yaxes(type="log", tickformat=".3~g", row=1, col=1)  # whole numbers, not a decade's digits
    if fusion_weight is not None:
        fig.add_trace(go.Bar(x=x, y=fusion_weight, name="fusion weight", marker_color="#ff7f0e", showlegend=False,
                             hovertemplate="%{x}<br>mean fusion weight %{y:.2f}<extra></extra>"), row=2, col=1)
        fig.update_yaxes(range=[0, 1], row=2, col=1)
    fig.update_layout(title=title, barmode="group", height=560 if rows == 2 else 420, font=dict(size=14),
                      margin=dict(l=60, r=20, t=90, b=90), legend=dict(orientation="h", y=1.12, x=0))
    return fig


def stage2_scatter(probe: np.ndarray, history: Optional[np.ndarray], scores: np.ndarray, labels: list[str], unit: str,
                   title: str) -> go.Figure:
    """Many units (MLP channels): the probe's energy against the history's, log-log, one dot per unit, coloured by
    the decision and whether the history changed it; without a history, energy against PPsp score."""
    y = history if history is not None else scores
    df = pd.DataFrame({unit: np.arange(len(probe)), "probe energy (P)": probe,
                       ("history energy (G)" if history is not None else "PPsp score"): y, "decision": labels,
                       "score": scores})
    ycol = df.columns[2]
    order = [k for k in CHANGE_COLORS if k in set(labels)]
    fig = px.scatter(df, x="probe energy (P)", y=ycol, color="decision", log_x=True, log_y=True, title=title,
                     color_discrete_map=CHANGE_COLORS, category_orders={"decision": order},
                     hover_data={unit: True, "score": ":.4g"}, render_mode="webgl")
    if history is not None:
        lo = float(np.nanmin(np.concatenate([probe[probe > 0], y[y > 0]]))) if (probe > 0).any() else 1e-6
        hi = float(np.nanmax(np.concatenate([probe, y])))
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(dash="dot", color="#888"),
                                 name="P = G", hoverinfo="skip"))
    fig.update_traces(marker=dict(size=6, opacity=0.75), selector=dict(mode="markers"))
    fig.update_layout(height=480, font=dict(size=14), margin=dict(l=60, r=20, t=60, b=50))
    fig.update_xaxes(tickformat=".2~g")  # whole values, not a decade's digits ("2 5 0.1")
    fig.update_yaxes(tickformat=".2~g")
    return fig


def history_changes_chart(df: pd.DataFrame) -> go.Figure:
    """Per layer and block: the share of units whose decision the history turned around (columns layer, block,
    share, changed)."""
    fig = px.bar(df, x="layer", y="share", color="block", barmode="group", hover_data={"changed": True},
                 title="Decisions the history turned around, per layer (share of the block's units)")
    fig.update_layout(height=340, font=dict(size=14), margin=dict(l=50, r=20, t=60, b=40),
                      yaxis_title="share of decisions", yaxis_tickformat=".0%")
    return fig


def history_drift(mat: np.ndarray, unit: str, title: str) -> go.Figure:
    """Batches x units: each batch's history over the first batch's, minus 1 (0 = unchanged), diverging colours."""
    lim = float(np.nanmax(np.abs(mat))) if np.isfinite(mat).any() else 1.0
    fig = go.Figure(go.Heatmap(z=mat, zmin=-lim, zmax=lim, zmid=0, colorscale="RdBu_r",
                               colorbar=dict(title="change", tickformat="+.2%"),
                               hovertemplate=f"batch %{{y}}, {unit} %{{x}}: %{{z:+.2%}}<extra></extra>"))
    fig.update_layout(title=title, height=220 + 26 * mat.shape[0], font=dict(size=14),
                      margin=dict(l=60, r=20, t=60, b=40))
    fig.update_yaxes(title="batch", dtick=1, autorange="reversed")
    fig.update_xaxes(title=unit)
    return fig


def head_picker(kept: np.ndarray, selected: tuple[int, int], title: str,
                decided: Optional[Sequence[bool]] = None) -> go.Figure:
    """Heads x layers as clickable squares (kept blue, pruned grey, layers the method did not decide, i.e. skipped,
    as open squares; the selected (layer, head) outlined in red): a scatter, so that Streamlit reports the clicked
    point (x = layer, y = head). `decided` (L,): whether each layer's attention was decided (default: all)."""
    L, H = kept.shape
    ls, hs = np.mgrid[0:L, 0:H]
    k = kept.reshape(-1) > 0.5
    dec = np.repeat(np.ones(L, dtype=bool) if decided is None else np.asarray(decided, dtype=bool), H)
    fig = go.Figure()
    for name, mask, color in (("kept", k & dec, KEPT), ("pruned", ~k & dec, PRUNED)):
        fig.add_trace(go.Scatter(x=ls.reshape(-1)[mask], y=hs.reshape(-1)[mask], mode="markers", name=name,
                                 marker=dict(symbol="square", size=16, color=color),
                                 hovertemplate="layer %{x}, head %{y}: " + name + "<extra>click to explain</extra>"))
    if not dec.all():
        fig.add_trace(go.Scatter(x=ls.reshape(-1)[~dec], y=hs.reshape(-1)[~dec], mode="markers",
                                 name="not pruned (skipped layer)",
                                 marker=dict(symbol="square-open", size=14, color=KEPT, line_width=1.5),
                                 hovertemplate="layer %{x}, head %{y}: skipped, never scored<extra></extra>"))
    fig.add_trace(go.Scatter(x=[selected[0]], y=[selected[1]], mode="markers", name="explained", hoverinfo="skip",
                             marker=dict(symbol="square-open", size=24, color=PROBE, line_width=3)))
    fig.update_layout(title=title, height=180 + 30 * H, font=dict(size=14), margin=dict(l=50, r=20, t=70, b=40),
                      legend=dict(orientation="h", y=1.12, x=0), clickmode="event+select")
    fig.update_yaxes(title="head", autorange="reversed", dtick=1)
    fig.update_xaxes(title="layer", dtick=1 if L <= 40 else None, range=[-0.6, L - 0.4])
    return fig


def unit_scores(scores: Sequence[float], kept: Sequence[int], unit: str, selected: int, cutoff: float,
                title: str) -> go.Figure:
    """One block's scores by unit index (kept blue, pruned grey), the cut-off as a line, the explained unit
    marked; clickable (a scatter)."""
    s = np.asarray(scores, dtype=float)
    k = np.zeros(len(s), dtype=bool)
    k[list(kept)] = True
    fig = go.Figure()
    for name, mask, color in (("kept", k, KEPT), ("pruned", ~k, PRUNED)):
        idx = np.nonzero(mask)[0]
        fig.add_trace(go.Scattergl(x=idx, y=s[idx], mode="markers", name=name, marker=dict(color=color, size=7),
                                   hovertemplate=f"{unit} %{{x}}: score %{{y:.4g}} ({name})"
                                                 "<extra>click to explain</extra>"))
    fig.add_hline(y=cutoff, line_dash="dot", line_color=PROBE, annotation_text="cut-off (lowest kept score)",
                  annotation_position="top left", annotation_bgcolor="rgba(255,255,255,0.85)")
    fig.add_trace(go.Scatter(x=[selected], y=[s[selected]], mode="markers", name="explained", hoverinfo="skip",
                             marker=dict(symbol="circle-open", size=18, color=PROBE, line_width=3)))
    fig.update_layout(title=title, height=360, font=dict(size=14), margin=dict(l=60, r=20, t=60, b=40),
                      clickmode="event+select", legend=dict(orientation="h", y=1.1, x=0))
    fig.update_xaxes(title=unit)
    fig.update_yaxes(title="score", type="log" if (s > 0).all() and s.max() > 100 * s.min() else "linear",
                     tickformat=".2~g")
    return fig


def contributions_chart(values: Sequence[float], channels: Sequence[int], title: str) -> go.Figure:
    """A head's PPsp terms per channel: fused energy x weight factor (the score is their L2 norm)."""
    fig = go.Figure(go.Bar(x=[str(c) for c in channels], y=list(values), marker_color=KEPT,
                           hovertemplate="channel %{x}: %{y:.4g}<extra></extra>"))
    fig.update_layout(title=title, height=300, font=dict(size=14), margin=dict(l=60, r=20, t=60, b=50),
                      xaxis_title="channel of the o_proj input", yaxis_title="energy x weight factor")
    return fig


def kept_sets_grid(sets: dict[str, Sequence[int]], total: int, unit: str, title: str) -> go.Figure:
    """Methods x units: which units each method kept at one block (1 = kept), the units where methods disagree
    marked on the axis."""
    methods = list(sets)
    z = np.zeros((len(methods), total))
    for i, m in enumerate(methods):
        z[i, list(sets[m])] = 1
    differ = [u for u in range(total) if 0 < z[:, u].sum() < len(methods)]
    fig = go.Figure(go.Heatmap(z=z, x=list(range(total)), y=methods, zmin=0, zmax=1, xgap=2, ygap=2,
                               colorscale=[[0, PRUNED], [1, KEPT]], showscale=False,
                               hovertemplate=f"%{{y}}, {unit} %{{x}}: %{{z}} (1 = kept)<extra></extra>"))
    ticktext = [f"<b>{u}*</b>" if u in differ else str(u) for u in range(total)]
    fig.update_layout(title=title, height=140 + 34 * len(methods), font=dict(size=14),
                      margin=dict(l=110, r=20, t=60, b=40))
    fig.update_xaxes(title=f"{unit} (* = the methods disagree)", tickvals=list(range(total)), ticktext=ticktext)
    fig.update_yaxes(autorange="reversed")
    return fig


# --- side by side: two configurations on one batch ----------------------------------------------------------------
SIDE_COLORS = {"heads": KEPT, "MLP channels": "#ff7f0e"}


def pair_jaccard(attn: Sequence[float], mlp: Sequence[float], title: str) -> go.Figure:
    """Per layer, the Jaccard of configuration A's and B's keep-sets: attention heads and MLP channels, (layers,)
    each, in [0, 1], NaN where neither configuration pruned the block (a gap in the line)."""
    fig = go.Figure()
    for name, values in (("heads", attn), ("MLP channels", mlp)):
        v = [float(x) if np.isfinite(x) else None for x in np.asarray(values, dtype=float)]  # None: a gap
        fig.add_trace(go.Scatter(x=list(range(len(v))), y=v, mode="lines+markers", name=name, connectgaps=False,
                                 line=dict(color=SIDE_COLORS[name]), marker=dict(size=8),
                                 hovertemplate=f"layer %{{x}}, {name}: Jaccard %{{y:.3f}}<extra></extra>"))
    fig.update_layout(title=title, height=360, font=dict(size=14), margin=dict(l=60, r=20, t=60, b=40),
                      legend=dict(orientation="h", y=1.12, x=0))
    fig.update_yaxes(title="Jaccard (1 = the same units kept)", range=[-0.05, 1.05])
    layers = len(np.asarray(attn))
    fig.update_xaxes(title="layer", dtick=1 if layers <= 40 else None, range=[-0.5, layers - 0.5])
    return fig


def loss_diff_heatmap(diff: np.ndarray, mask: np.ndarray, tokens: list[list[str]], title: str,
                      loss_a: Optional[np.ndarray] = None, loss_b: Optional[np.ndarray] = None) -> go.Figure:
    """Samples x predicted positions: B's per-token loss minus A's (nats), `diff` and `mask` (B, L-1), column t the
    prediction of position t + 1; red where B predicts worse, blue where better, white at 0 and at masked cells
    (blank). Hover shows the predicted token (`tokens[b][t + 1]`) and, when given, each loss (`loss_a`, `loss_b`)."""
    d = np.where(np.asarray(mask) > 0, np.asarray(diff, dtype=float), np.nan)
    B, T = d.shape
    text = [[_show(tokens[b][t + 1]) if b < len(tokens) and t + 1 < len(tokens[b]) else "" for t in range(T)]
            for b in range(B)]
    la = np.full_like(d, np.nan) if loss_a is None else np.asarray(loss_a, dtype=float)
    lb = np.full_like(d, np.nan) if loss_b is None else np.asarray(loss_b, dtype=float)
    lim = float(np.nanmax(np.abs(d))) if np.isfinite(d).any() else 1.0
    lim = lim if lim > 0 else 1.0
    fig = go.Figure(go.Heatmap(z=d, x=np.arange(1, T + 1), zmin=-lim, zmax=lim, zmid=0, colorscale="RdBu_r",
                               colorbar=dict(title="B − A (nats)"),
                               customdata=np.dstack([np.array(text, dtype=object), la, lb]),
                               hovertemplate="sample %{y}, position %{x}<br>token %{customdata[0]}<br>"
                                             "B − A %{z:+.3f} nats<br>A %{customdata[1]:.3f}, B %{customdata[2]:.3f}"
                                             "<extra></extra>"))
    fig.update_layout(title=title, height=260 + 16 * B, font=dict(size=14), margin=dict(l=60, r=20, t=60, b=40))
    fig.update_yaxes(title="sample", autorange="reversed", dtick=1 if B <= 32 else None)
    fig.update_xaxes(title="position of the predicted token")
    return fig


# --- lecture mode (app/views/lecture.py) -----------------------------------------------------------------------------

def sample_bars(scores: Sequence[float], picked: Sequence[int], title: str) -> go.Figure:
    """One bar per sample (its score at the probe's tokens), the samples the probe picked in red."""
    s = np.asarray(scores, dtype=float)
    colors = [PROBE if b in set(picked) else PRUNED for b in range(len(s))]
    fig = go.Figure(go.Bar(x=[f"sample {b}" + (" (probe)" if b in set(picked) else "") for b in range(len(s))],
                           y=s, marker_color=colors, hovertemplate="%{x}: %{y:.4g}<extra></extra>"))
    fig.update_layout(title=title, height=380, margin=dict(l=50, r=20, t=50, b=60), font=dict(size=15),
                      yaxis_title="score at the probe's tokens")
    return fig


def ratio_sweep(df: pd.DataFrame) -> go.Figure:
    """Perplexity against the pruning ratio, one line per method (rows of `ppcore.session.CompareRow.row()`: method,
    ratio, ppl), dense as a dashed line; a log scale, since the worst methods' perplexity grows by orders."""
    pruned = df[df["method"] != "dense"].sort_values(["method", "ratio"])
    fig = px.line(pruned, x="ratio", y="ppl", color="method", color_discrete_map=METHOD_COLORS, markers=True,
                  log_y=True, title="Perplexity against the pruning ratio, per method",
                  hover_data={"ppl": ":.2f", "ratio": ":.2f"})
    dense = df[df["method"] == "dense"]["ppl"]
    if len(dense):
        fig.add_hline(y=float(dense.iloc[0]), line_dash="dash", line_color="#555555",
                      annotation_text=f"dense {float(dense.iloc[0]):.2f}", annotation_position="bottom right")
    fig.update_traces(marker_size=10, line_width=3)
    ppl = df["ppl"].astype(float)
    ppl = ppl[np.isfinite(ppl) & (ppl > 0)]
    if len(ppl):  # the range from the data: a log axis otherwise stretches to its annotations
        fig.update_yaxes(range=[np.log10(ppl.min() / 1.3), np.log10(ppl.max() * 1.3)])
    fig.update_layout(height=460, font=dict(size=15), xaxis_title="pruning ratio (share of heads and channels removed)",
                      yaxis_title="perplexity on the batch (log scale)")
    fig.update_xaxes(tickformat=".1f")
    return fig
