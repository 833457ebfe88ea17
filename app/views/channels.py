"""Pruned-channel map: what each layer kept, why (scores), and how it agrees with other methods."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from ppcore.analysis import keep_jaccard, kept_fractions, kept_matrix

from .. import charts
from ..engine import Result
from ..state import limits

BLOCKS = {"attn": "Attention heads", "mlp": "MLP channels"}


def layer_table(r: Result) -> pd.DataFrame:
    """Per layer and block: kept fraction and Jaccard with each other method (also the CSV export)."""
    rows = []
    for block in BLOCKS:
        frac = kept_fractions(r.main, block)
        jac = {m: keep_jaccard(r.main, rec, block) for m, rec in r.others.items()}
        for i, f in enumerate(frac):
            row = {"layer": i, "block": block, "kept_fraction": f}
            row.update({f"jaccard_{m}": jac[m][i] for m in jac})
            rows.append(row)
    return pd.DataFrame(rows)


def render(r: Result, start_stability) -> None:
    c1, c2 = st.columns([1, 2])
    c1.plotly_chart(charts.kept_map(kept_matrix(r.main, "attn"), "query head", f"Heads kept by {r.cfg.method}"),
                    width="stretch", key="map_attn")
    c2.plotly_chart(charts.kept_map(kept_matrix(r.main, "mlp"), "MLP channel", f"MLP channels kept by {r.cfg.method}"),
                    width="stretch", key="map_mlp")
    table = layer_table(r)
    c1, c2 = st.columns(2)
    c1.plotly_chart(charts.lines(table, "layer", "kept_fraction", "block", "Kept fraction per layer", "kept fraction",
                                 [0, 1.05]), width="stretch", key="kept_frac")
    block = c2.radio("Agreement for", list(BLOCKS), format_func=BLOCKS.get, horizontal=True, key="jac_block")
    jcols = [c for c in table.columns if c.startswith("jaccard_")]
    long = table[table.block == block].melt(id_vars="layer", value_vars=jcols, var_name="against", value_name="jaccard")
    long["against"] = long["against"].str.replace("jaccard_", "", regex=False)
    c2.plotly_chart(charts.lines(long.dropna(), "layer", "jaccard", "against",
                                 f"Jaccard of {r.cfg.method}'s keep-set with the oracle (fullbatch) and static baselines",
                                 "Jaccard", [0, 1.05]), width="stretch", key="jaccard")
    _scores(r)
    st.subheader("Stability across consecutive batches")
    st.caption("The current batch, then further corpus batches of the same shape, through one pruner "
               "(PP's history evolves batch to batch). 1.0 = the same keep-set as on the previous batch.")
    c1, c2 = st.columns([1, 3])
    n = c1.number_input("Extra batches", 1, limits().extra_batches, 3, key="stab_n")
    if c1.button("Measure stability", key="stab_go"):
        start_stability(int(n))
    stab = r.extras.get("stability")
    if stab:
        for b in BLOCKS:
            mat = stab[b]
            c2.plotly_chart(charts.stability_chart(mat, b), width="stretch", key=f"stab_{b}")
            mean = np.nanmean(mat) if np.isfinite(mat).any() else float("nan")
            c2.caption(f"{BLOCKS[b]}: mean Jaccard over pruned layers and {stab['batches'] - 1} batch pairs = {mean:.3f}")


@st.fragment
def _scores(r: Result) -> None:
    """Score distribution for one layer; a fragment so that the layer slider does not rerun the page."""
    st.subheader("Scores")
    c1, c2 = st.columns([3, 1])
    pruned = [i for i, l in enumerate(r.main.layers) if l.attn.pruned or l.mlp.pruned] or [0]
    layer = c1.slider("Layer", 0, len(r.main.layers) - 1, pruned[0], key="score_layer")
    block = c2.radio("Block", list(BLOCKS), format_func=BLOCKS.get, key="score_block")
    rec = getattr(r.main.layers[layer], block)
    if rec.scores is None:
        st.info(f"Layer {layer} has no scores for this block ({'skipped or dense' if not rec.pruned else 'not recorded'}).")
        return
    unit = "head" if block == "attn" else "channel"
    st.plotly_chart(charts.scores_chart(rec.scores, rec.kept, unit, f"Layer {layer}: {r.cfg.method} scores, kept vs pruned"),
                    width="stretch", key="scores_chart")
