"""Plotly figures built from run records and tables. Figures keep Plotly's own PNG export button."""
from __future__ import annotations

import html
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

PROBE = "#d62728"  # probe picks, everywhere


def _show(tok: str) -> str:
    return tok.replace("\n", "\\n") if tok.strip() else repr(tok)


def importance_heatmap(grid: Sequence[Sequence[float]], tokens: list[list[str]], probe_tokens: list[int],
                       probe_samples: list[int], title: str) -> go.Figure:
    """Residual importance, samples x tokens; probe token columns and sample rows marked in red."""
    z = np.asarray(grid, dtype=float)
    B, L = z.shape
    text = [[_show(tokens[b][t]) if t < len(tokens[b]) else "" for t in range(L)] for b in range(B)]
    fig = go.Figure(go.Heatmap(z=z, customdata=text, colorscale="Viridis", colorbar=dict(title="‖h‖"),
                               hovertemplate="sample %{y}, position %{x}<br>token %{customdata}<br>"
                                             "importance %{z:.3g}<extra></extra>"))
    for t in probe_tokens:  # a red tick above each probe token column
        fig.add_shape(type="rect", x0=t - 0.5, x1=t + 0.5, y0=1.0, y1=1.05, xref="x", yref="paper",
                      fillcolor=PROBE, line_width=0)
    for b in probe_samples:  # and left of each probe sample row
        fig.add_shape(type="rect", x0=-0.03, x1=0.0, y0=b - 0.5, y1=b + 0.5, xref="paper", yref="y",
                      fillcolor=PROBE, line_width=0)
    cells = [(b, t) for b in probe_samples for t in probe_tokens]
    if cells:
        fig.add_trace(go.Scatter(x=[t for _, t in cells], y=[b for b, _ in cells], mode="markers", name="probe",
                                 marker=dict(symbol="square-open", color=PROBE, size=9, line_width=2),
                                 customdata=[text[b][t] for b, t in cells],
                                 hovertemplate="probe: sample %{y}, position %{x}<br>token %{customdata}"
                                               "<extra></extra>"))
    fig.update_layout(title=title, height=260 + 14 * B, margin=dict(l=60, r=20, t=70, b=40), showlegend=False)
    fig.update_yaxes(title="sample", autorange="reversed", dtick=1 if B <= 16 else None)
    fig.update_xaxes(title="token position")
    return fig


def token_strip(values: Sequence[float], tokens: list[str], probe_tokens: list[int], title: str) -> go.Figure:
    """One sample's importance per token, with the token text on the axis; probe tokens in red."""
    n = len([t for t in tokens if t != ""]) or len(tokens)
    labels = [f"{i}:{_show(t)}" for i, t in enumerate(tokens[:n])]
    colors = [PROBE if i in set(probe_tokens) else "#7f7f7f" for i in range(n)]
    fig = go.Figure(go.Bar(x=labels, y=list(values)[:n], marker_color=colors,
                           hovertemplate="%{x}<br>importance %{y:.3g}<extra></extra>"))
    fig.update_layout(title=title, height=300, margin=dict(l=40, r=20, t=50, b=100))
    fig.update_xaxes(tickangle=-60, tickfont=dict(size=9))
    return fig


def pick_by_layer(m: np.ndarray, title: str) -> go.Figure:
    """Layers x token positions: which tokens the probe picked in each layer."""
    fig = go.Figure(go.Heatmap(z=m, colorscale=[[0, "#f0f0f0"], [1, PROBE]], showscale=False,
                               hovertemplate="layer %{y}, position %{x}: %{z}<extra></extra>"))
    fig.update_layout(title=title, height=360, margin=dict(l=50, r=20, t=50, b=40))
    fig.update_yaxes(title="layer", autorange="reversed")
    fig.update_xaxes(title="token position")
    return fig


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
    return '<div style="line-height:1.9;font-family:monospace;white-space:pre-wrap">' + "".join(spans) + "</div>"


def diff_bars(tokens: list[str], diff: Sequence[float], title: str) -> go.Figure:
    labels = [f"{i + 1}:{_show(t)}" for i, t in enumerate(tokens)]
    colors = ["#d62728" if d > 0 else "#2ca02c" for d in diff]
    fig = go.Figure(go.Bar(x=labels, y=list(diff), marker_color=colors,
                           hovertemplate="%{x}<br>Δ loss %{y:+.3f}<extra></extra>"))
    fig.update_layout(title=title, height=300, margin=dict(l=40, r=20, t=50, b=100),
                      yaxis_title="pruned − dense (nats)")
    fig.update_xaxes(tickangle=-60, tickfont=dict(size=9))
    return fig


def latency_bars(df: pd.DataFrame, title: str) -> go.Figure:
    fig = px.bar(df, x="layer", y="seconds", color="part", facet_row="block", title=title,
                 color_discrete_map={"probe": PROBE, "decide": "#ff7f0e", "full inference": "#1f77b4",
                                     "dense full inference": "#bbbbbb"}, barmode="group")
    fig.update_layout(height=520, margin=dict(l=50, r=20, t=60, b=40))
    return fig


def compare_scatter(df: pd.DataFrame) -> go.Figure:
    fig = px.scatter(df, x="time_vs_dense", y="ppl", color="method",
                     symbol="ratio" if df["ratio"].nunique() > 1 else None,
                     hover_data=["ratio", "flops_ratio", "decoder_flops_ratio", "prr"], text="method",
                     title="Perplexity against time (both relative to the same batch)")
    fig.update_traces(textposition="top center", marker_size=11)
    fig.update_layout(height=420, xaxis_title="time / dense time", yaxis_title="perplexity on the batch")
    return fig
