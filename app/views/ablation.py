"""Run an ablation, below the method comparison (Compare methods tab): one of the paper's named ablation grids
(`ppcore.ablations`) on the analysis's batch, through `ppcore.session.ablation` (issue 16; docs/app.md, Compare
methods). A table, perplexity per variant against dense, and for the grids that compare keep-sets the per-layer
Jaccard with the oracle.

The results live in the analysed Result (`Result.ablations`, one per ablation name): a new analysis starts without
them.
"""
from __future__ import annotations

from typing import Callable, Optional

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from ppcore import PruneConfig, session

from ..glossary import explain
from ..header import FORMATS, NA, text_table
from ..result import Result

CHOICE_KEY = "_ablation_choice"  # the ablation last chosen, kept while another tab is open
# The glossary entries behind each grid's question (app/glossary.py).
TERMS: dict[str, tuple[str, ...]] = {
    "history": ("history", "EMA", "probe", "ppsp-calib"),
    "probe": ("probe", "probe tokens", "probe samples", "history"),
    "score": ("PPsp", "Wanda-sp", "FLAP", "ppsp-calib", "probe"),
    "fusion": ("fusion", "fusion weight", "fixed fusion", "history"),
    "blocks": ("block ratios", "ratio", "FLOPs"),
}
# Column names as the page shows them, from AblationRow.row()'s.
COLUMNS = {"variant": "variant", "ppl": "perplexity", "ppl_vs_pp": "ppl − PP",
           "decoder_flops_ratio": "FLOPs / dense (decoder layers)",
           "decoder_probe_flops_ratio": "probe FLOPs / dense (decoder layers)",
           "jaccard_attn": "Jaccard with the oracle, heads", "jaccard_mlp": "Jaccard with the oracle, MLP channels"}
TABLE_FORMATS = {COLUMNS["ppl"]: FORMATS["ppl"], COLUMNS["ppl_vs_pp"]: FORMATS["ppl_increase"],
                 COLUMNS["decoder_flops_ratio"]: FORMATS["decoder_flops_ratio"],
                 COLUMNS["decoder_probe_flops_ratio"]: FORMATS["decoder_probe_flops_ratio"],
                 COLUMNS["jaccard_attn"]: ".3f", COLUMNS["jaccard_mlp"]: ".3f"}
DENSE_LINE, PP_BAR, ORACLE_BAR, BAR = "#555555", "#d62728", "#bbbbbb", "#1f77b4"


# --- the stored results -------------------------------------------------------------------------------------------

def stored(r: Result) -> dict[str, session.AblationResult]:
    """The ablations computed for this result, by name (Result.ablations; a new analysis starts without any)."""
    return r.ablations or {}


# --- tables and figures (no streamlit) ----------------------------------------------------------------------------

def table(res: session.AblationResult) -> pd.DataFrame:
    """One row per run (dense, the oracle where compared, the variants), the engine's figures under the page's
    column names; the Jaccard columns only for the grids that compare keep-sets."""
    df = pd.DataFrame(res.table()).drop(columns="method").rename(columns=COLUMNS)
    if not res.jaccard:
        df = df.drop(columns=[COLUMNS["jaccard_attn"], COLUMNS["jaccard_mlp"]])
    return df


def shown_table(res: session.AblationResult) -> pd.DataFrame:
    """`table` as the page shows it: text formatted like the header, NA where there is no figure."""
    return text_table(table(res), TABLE_FORMATS)


def _colour(row: session.AblationRow) -> str:
    if row.variant.endswith("(PP)"):
        return PP_BAR
    return ORACLE_BAR if row.method == "fullbatch" else BAR


def ppl_bars(res: session.AblationResult) -> go.Figure:
    """Perplexity of every run but dense, one bar each in the grid's order (PP's in red, the oracle's in grey), with
    dense's perplexity as a dashed line."""
    rows = res.rows[1:]
    fig = go.Figure(go.Bar(x=[r.variant for r in rows], y=[r.ppl for r in rows],
                           marker_color=[_colour(r) for r in rows], name="perplexity",
                           customdata=[[r.ppl_vs_pp, r.decoder_flops_ratio] for r in rows],
                           hovertemplate="%{x}<br>perplexity %{y:.2f}<br>ppl − PP %{customdata[0]:+.2f}<br>"
                                         "FLOPs / dense (decoder) %{customdata[1]:.3f}<extra></extra>"))
    fig.add_hline(y=res.dense.ppl, line_dash="dash", line_color=DENSE_LINE,
                  annotation_text=f"dense {res.dense.ppl:.2f}", annotation_position="top left")
    low = min([r.ppl for r in res.rows])
    high = max([r.ppl for r in res.rows])
    pad = max(high - low, 1e-6) * 0.3
    fig.update_layout(title=f"Ablation '{res.name}': perplexity per variant at ratio {res.ratio:.2f} (this batch)",
                      height=420, margin=dict(l=50, r=20, t=60, b=40), showlegend=False,
                      yaxis_title="perplexity on the batch")
    fig.update_yaxes(range=[max(low - pad, 0.0), high + pad])  # the differences are small: zoom on them
    return fig


def layer_jaccard(res: session.AblationResult) -> pd.DataFrame:
    """Long table of the per-layer Jaccard with the oracle: variant, block ('heads' or 'MLP channels'), layer,
    jaccard (NaN where neither run pruned the block). Empty when the grid compares no keep-sets."""
    out = []
    for row in res.rows:
        for block, arr in (("heads", row.layer_jaccard_attn), ("MLP channels", row.layer_jaccard_mlp)):
            if arr is not None:
                out += [{"variant": row.variant, "block": block, "layer": i, "jaccard": float(v)}
                        for i, v in enumerate(arr)]
    return pd.DataFrame(out, columns=["variant", "block", "layer", "jaccard"])


def jaccard_lines(df: pd.DataFrame, name: str) -> go.Figure:
    """`layer_jaccard`'s table: one line per variant, heads and MLP channels side by side; gaps at unpruned layers."""
    fig = px.line(df, x="layer", y="jaccard", color="variant", facet_col="block", markers=True,
                  title=f"Ablation '{name}': Jaccard with the oracle per layer")
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    fig.update_yaxes(range=[-0.05, 1.05])
    fig.update_layout(height=400, margin=dict(l=50, r=20, t=70, b=40), yaxis_title="Jaccard with the oracle")
    return fig


def carried_settings(cfg: PruneConfig) -> list[str]:
    """The ablated settings the analysed config sets away from PP's defaults ('use_history=False'): every variant
    that does not set them itself carries them, the (PP) row included (`ppcore.ablations.carried`)."""
    return session.carried_settings(cfg)


# --- the section --------------------------------------------------------------------------------------------------

def render(r: Result, start: Callable[[str], None]) -> None:
    """The "Run an ablation" section; `start(name)` runs one and stores it in `Result.ablations`."""
    a = r.analysis
    method = "pp" if a.cfg.method == "dense" else a.cfg.method
    st.subheader("Run an ablation", help=explain("ablation"))
    st.caption("One of the paper's ablations on this batch at ratio "
               f"{a.ratio:.2f}: PP with one part changed at a time, each variant against PP itself (the row marked "
               "(PP)) and dense. One batch and no warm-up: every variant starts from a fresh pruner, so PP's history "
               "is the calibration's, as everywhere on this page (with one batch, the frozen calibration history "
               "of the 'history' grid is therefore the same as PP's). For several seeds and many batches, run "
               "`python -m ppcore ablate NAME` (docs/ablations.md).",
               help=explain("ablation", "Jaccard with the oracle", "oracle", "perplexity", "FLOPs"))
    names = list(session.ABLATIONS)
    if "abl_name" not in st.session_state and st.session_state.get(CHOICE_KEY) in names:
        st.session_state["abl_name"] = st.session_state[CHOICE_KEY]  # back on this tab: the ablation chosen before
    c1, c2 = st.columns([3, 1])
    name = c1.selectbox("Ablation", names, key="abl_name",
                        help="the named grids of `python -m ppcore ablate` (docs/ablations.md)")
    st.session_state[CHOICE_KEY] = name  # a widget's own state goes when another tab is open; this stays
    spec = session.ABLATIONS[name]
    c1.caption(spec.question, help=explain(*TERMS[name]))
    runs = len(spec.variants) + (1 if spec.jaccard else 0)
    walk_s = max(a.seconds.values()) if a.seconds else 0.0
    if c2.button("Run the ablation", key="abl_go",
                 help=f"{runs} runs of this batch (dense is the analysis's own)"
                      + (f", about {runs * walk_s:.0f} s: each takes about as long as this analysis's walk"
                         if walk_s else "")):
        start(name)
    carried = carried_settings(a.cfg)
    if method != "pp":
        st.caption(f"The analysed method is {method}: the variants are PP's, with this analysis's other settings "
                   "(skipped layers, MLP multiple, attention and MLP switches).")
    if carried:
        st.info("This analysis sets " + ", ".join(carried) + ": every variant that does not set it itself keeps "
                "it, the (PP) row included. Set it back in the sidebar and press **Run** to ablate PP's defaults.",
                icon="ℹ️")
    res: Optional[session.AblationResult] = stored(r).get(name)
    if res is None:
        st.info(f"Press **Run the ablation** to run '{name}' ({runs} variants"
                + (", the oracle included" if spec.jaccard else "") + ") on this batch.")
        return
    st.dataframe(shown_table(res), hide_index=True, width="stretch")
    st.caption(f"ppl − PP: each row's perplexity minus '{res.reference.variant}'s ({res.reference.ppl:.2f}); FLOPs "
               "over dense's, decoder layers only (the paper's count), the probe's share likewise"
               + ("; Jaccard: the mean over the pruned layers of the keep-set's overlap with the oracle's on this "
                  f"batch ({NA} for dense and the oracle)." if res.jaccard else "."),
               help=explain("perplexity", "FLOPs", "probe") + ("\n\n" + explain("Jaccard with the oracle")
                                                                 if res.jaccard else ""))
    st.plotly_chart(ppl_bars(res), width="stretch", key="abl_ppl")
    if res.jaccard:
        st.plotly_chart(jaccard_lines(layer_jaccard(res), res.name), width="stretch", key="abl_jaccard")
