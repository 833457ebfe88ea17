"""Pruned-channel map: what each layer kept, why (scores), and how it agrees with other methods."""
from __future__ import annotations

from typing import Callable, Optional

import pandas as pd
import streamlit as st

from ppcore import session

from .. import charts
from ..glossary import explain
from ..result import Result
from ..state import limits
from ..viewlink import show_place
from .controls import BLOCK_TEXT, block_radio, count_and_button
from .replay import needs_model


def layer_table(r: Result) -> pd.DataFrame:
    """Per layer and block: kept fraction and Jaccard with each other method (also the CSV export)."""
    return pd.DataFrame(session.layer_table(r.analysis.main, r.baselines or {}))


def render(r: Result, start_stability: Optional[Callable[[int], None]]) -> None:
    """The view; `start_stability` None (a replay, without the model) shows a note in place of the stability run."""
    method = r.analysis.cfg.method
    st.caption("**Stage 3: pruned inference.** What each layer kept (blue) for the whole batch to run on, how much, "
               "and how close that is to the oracle's and the static baselines' choices.",
               help=explain("kept heads", "oracle", "Wanda-sp", "FLAP", "Jaccard"))
    c1, c2 = st.columns([1, 2])
    c1.plotly_chart(charts.kept_map(session.kept_matrix(r.analysis.main, "attn"), "query head",
                                    f"Heads kept by {method}"), width="stretch", key="map_attn")
    c2.plotly_chart(charts.kept_map(session.kept_matrix(r.analysis.main, "mlp"), "MLP channel",
                                    f"MLP channels kept by {method}"), width="stretch", key="map_mlp")
    table = layer_table(r)
    c1, c2 = st.columns(2)
    c1.plotly_chart(charts.lines(_with_uniform(r, table), "layer", "kept_fraction", "block", "Kept fraction per layer",
                                 "kept fraction", [0, 1.05]), width="stretch", key="kept_frac")
    fitted = _allocation_note(r)
    if fitted:
        c1.caption(fitted, help=explain("kept heads"))
    block = block_radio(c2, "Agreement for", "jac_block", long=True, horizontal=True)
    c2.caption("Jaccard = shared kept units / units kept by either (1.0 = the same choice).", help=explain("Jaccard"))
    jcols = [c for c in table.columns if c.startswith("jaccard_")]
    long = table[table.block == block].melt(id_vars="layer", value_vars=jcols, var_name="against", value_name="jaccard")
    long["against"] = long["against"].str.replace("jaccard_", "", regex=False)
    c2.plotly_chart(charts.lines(long.dropna(), "layer", "jaccard", "against",
                                 f"Jaccard of {method}'s keep-set with the oracle (fullbatch) and static baselines",
                                 "Jaccard", [0, 1.05]), width="stretch", key="jaccard")
    _scores(r)
    st.subheader("Stability across consecutive batches")
    st.caption("The current batch, then further corpus batches of the same shape, through one pruner "
               "(PP's history evolves batch to batch). 1.0 = the same keep-set as on the previous batch.",
               help=explain("Jaccard", "history", "EMA"))
    if start_stability is None:
        st.info(needs_model("Measuring stability"))
        return
    out = count_and_button("Extra batches", limits().extra_batches, 3, "stab_n", "Measure stability", "stab_go",
                           start_stability)
    stab = r.stability
    if stab is not None:
        for b in BLOCK_TEXT:
            out.plotly_chart(charts.stability_chart(getattr(stab, b), b), width="stretch", key=f"stab_{b}")
            out.caption(f"{BLOCK_TEXT[b].long}: mean Jaccard over pruned layers and {stab.batches - 1} batch pairs = "
                        f"{stab.mean(b):.3f}")


def _fitted(r: Result) -> bool:
    """Whether the analysed run chose its blocks' keep counts from a fitted allocation (PP+)."""
    cfg = r.analysis.cfg
    return cfg.method == "pp-plus" and cfg.allocation != "uniform" and cfg.prunes


def _with_uniform(r: Result, table: pd.DataFrame) -> pd.DataFrame:
    """The kept-fraction table, plus PP's uniform allocation at the same nominal ratio as two more lines ("attn, PP",
    "mlp, PP") when PP+'s fitted allocation chose the counts, so that the chart shows where it moved the budget."""
    if not _fitted(r):
        return table
    main, cfg = r.analysis.main, r.analysis.cfg
    extra = [{"layer": i, "block": f"{b}, PP", "kept_fraction": f}
             for b in ("attn", "mlp") for i, f in enumerate(session.uniform_kept_fractions(main, cfg, b))]
    return pd.concat([table[["layer", "block", "kept_fraction"]], pd.DataFrame(extra)], ignore_index=True)


def _allocation_note(r: Result) -> str:
    """Plain words for PP+'s allocation and recovery under the chart (empty for every other run)."""
    cfg = r.analysis.cfg
    notes = []
    if _fitted(r):
        how = {"sensitivity": "each block's sensitivity, measured pruned alone on calibration windows",
               "local": "exchanges from PP's allocation, measured on calibration windows at this ratio"}
        notes.append(f"**PP+'s allocation** ({cfg.allocation}): each layer's heads and channels were chosen from "
                     f"{how.get(cfg.allocation, 'a fit on calibration windows')}, at the same decoder FLOPs as PP's "
                     "uniform allocation (the \"PP\" lines). Blocks PP+ keeps whole are not probed.")
    if cfg.method == "pp-plus" and cfg.recover == "on" and cfg.prunes:
        notes.append("**PP+'s recovery**: what the pruned heads and channels would have added is estimated from kept "
                     "ones (least squares on calibration statistics) and added back; every MLP keeps a fixed core "
                     "of channels, ranked once on calibration, that the estimate is made from.")
    return " ".join(notes)


@st.fragment
def _scores(r: Result) -> None:
    """Score distribution for one layer; a fragment so that the layer slider does not rerun the page."""
    st.subheader("Scores", help=explain("PPsp", "cut-off"))
    layers = r.analysis.main.layers
    c1, c2 = st.columns([3, 1])
    pruned = [i for i, layer in enumerate(layers) if layer.attn.pruned or layer.mlp.pruned] or [0]
    if "score_layer" not in st.session_state:  # seeded, not a default value: a link (app/viewlink.py) may set it
        st.session_state["score_layer"] = pruned[0]
    layer = c1.slider("Layer", 0, len(layers) - 1, key="score_layer")
    block = block_radio(c2, "Block", "score_block", long=True)
    show_place("Pruned channels", layer, block)
    rec = getattr(layers[layer], block)
    if rec.scores is None:
        why = "skipped or dense" if not rec.pruned else "not recorded"
        st.info(f"Layer {layer} has no scores for this block ({why}).")
        return
    unit = BLOCK_TEXT[block].unit
    st.plotly_chart(charts.scores_chart(rec.scores, rec.kept, unit,
                                        f"Layer {layer}: {r.analysis.cfg.method} scores, kept vs pruned"),
                    width="stretch", key="scores_chart")
