"""History view: stage 2 of Probe Pruning drawn (docs/algorithm.md §3.3-3.4).

For one layer and block: what the probe saw, what the history holds at the same positions, the fusion weight
that mixed them, the fused energy PPsp scored, and which heads or channels the history changed against the
probe alone; then, per layer, how many it changed; then, in a stability run, how the history moves batch to batch.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from ppcore import session
from ppcore.record import BLOCK_NAMES, BlockRecord

from .. import charts
from ..glossary import explain
from ..result import Result
from ..state import limits
from ..viewlink import show_place
from .controls import BLOCK_TEXT, block_radio, count_and_button
from .probe import first_pruned_layer, nothing_pruned, nothing_pruned_text
from .replay import lacking, needs_model


def has_stage2(r: Result) -> bool:
    """Whether the analysed method recorded energies (a probing method: pp or fullbatch)."""
    layer = r.analysis.main.layers[first_pruned_layer(r)]
    return any(getattr(layer, b).energy_fused is not None for b in BLOCK_NAMES)


def has_history(r: Result) -> bool:
    """Whether the analysed run fused a history (pp with use_history)."""
    layer = r.analysis.main.layers[first_pruned_layer(r)]
    return any(getattr(layer, b).energy_history is not None for b in BLOCK_NAMES)


def changes_table(r: Result) -> pd.DataFrame:
    """Per layer and block: decisions the history turned around, and their share of the block's units (rows where
    it fused only)."""
    main = r.analysis.main
    rows = [{"layer": i, "block": BLOCK_TEXT[b].long, "changed": c, "share": c / getattr(main.layers[i], b).total}
            for b in BLOCK_NAMES for i, c in enumerate(session.history_changes(main, b)) if c is not None]
    return pd.DataFrame(rows, columns=["layer", "block", "changed", "share"])


def render(r: Result, start_stability: Optional[Callable[[int], None]]) -> None:
    """The view; `start_stability` None (a replay, without the model) shows a note in place of the drift's button."""
    st.caption("**Stage 2: history-informed pruning.** The probe is small, so PP does not trust it alone. For every "
               "position and channel it keeps a *history*: the mean squared activation of earlier batches "
               "(calibration data at first). It mixes the two with a *fusion weight* that favours whichever is "
               "larger, then scores each head and channel with PPsp on the fused energy.",
               help=explain("history", "fusion", "fusion weight", "energy", "EMA"))
    method = r.analysis.cfg.method
    why_not = nothing_pruned(r)
    if why_not:
        st.info(nothing_pruned_text(why_not))
        return
    if not has_stage2(r) and r.replayed is not None and "energies" in r.replayed.lacks:
        st.info(lacking("stage-2 energies (it was saved at level summary)"))
        return
    if not has_stage2(r):
        st.info(f"Method '{method}' has no stage 2: only pp (probe + history) and fullbatch (the whole batch as "
                "its probe, no history) compute energies from a probe. Choose pp in the sidebar and press **Run**.")
        return
    if not has_history(r):
        st.info(f"This {method} run fuses no history ("
                + ("fullbatch probes the whole batch" if method == "fullbatch" else "use_history is off")
                + "): the fused energy is the probe's own, and the history changes nothing.")
    if has_history(r):
        df = changes_table(r)
        st.plotly_chart(charts.history_changes_chart(df), width="stretch", key="hist_changes")
        st.caption(f"Over all pruned layers the history changed {int(df['changed'].sum())} decisions on this batch.")
    _panel(r, start_stability)


@st.fragment
def _panel(r: Result, start_stability: Optional[Callable[[int], None]]) -> None:
    """One layer and block, and the history's drift there (a fragment: moving the slider redraws this only)."""
    _layer(r)
    if has_history(r):
        _drift(r, start_stability)


def _layer(r: Result) -> None:
    """Stage 2 at the chosen layer and block."""
    a = r.analysis
    n = len(a.main.layers)
    c1, c2 = st.columns([3, 1])
    if "hist_layer" not in st.session_state:  # seeded, not a default value: a link (app/viewlink.py) may set it
        st.session_state["hist_layer"] = first_pruned_layer(r)
    layer = c1.slider("Layer", 0, n - 1, key="hist_layer")
    block = block_radio(c2, "Block", "hist_block", long=True)
    show_place("History", layer, block)
    rec = getattr(a.main.layers[layer], block)
    if not rec.pruned or rec.energy_fused is None:
        st.info(f"Layer {layer}'s {BLOCK_TEXT[block].long.lower()} were not pruned (a skipped layer or a "
                "switched-off block): nothing was probed or fused here.")
        return
    s = session.stage2(rec)
    unit = BLOCK_TEXT[block].unit
    effect = session.history_effect(rec)
    m1, m2, m3 = st.columns(3)
    m1.metric("Probe positions", len(rec.probe_tokens), help=explain("probe tokens"))
    if effect is not None:
        m2.metric(f"{unit.capitalize()} decisions the history changed", f"{effect.changed} of {rec.total}",
                  help=f"{len(effect.gained)} kept thanks to the history, {len(effect.lost)} pruned because of it: "
                       "the keep-set from the fused energy against the one PPsp would pick from the probe alone.")
    if s.fusion_weight is not None:
        m3.metric("Mean fusion weight", f"{float(np.mean(s.fusion_weight)):.2f}",
                  help=explain("fusion weight") + "\n\nAbove 0.5 the probe weighed more, below it the history did.")
    st.plotly_chart(stage2_figure(rec, layer, block), width="stretch", key="hist_energies")
    st.caption("P, G and the fused energy are sums over the probe's positions" + (" and each head's channels" if
               rec.total <= 64 and block == "attn" else "") + ". The fusion mixes P and G position by position, "
               "so a fused sum can exceed both sums, and the mean fusion weight (a mean of per-position weights) "
               "need not match P / (P + G) of the sums. Kept or pruned follows the PPsp score, energy x the "
               "weight factor, not the energy alone.", help=explain("fusion", "fusion weight", "PPsp"))
    if effect is not None:
        if effect.changed:
            st.markdown(f"The history **kept** {unit}s {_short(effect.gained)} that the probe alone would have "
                        f"pruned, and **pruned** {_short(effect.lost)} that the probe alone would have kept.")
        else:
            st.markdown(f"Here the history changed nothing: the probe alone would have kept the same {unit}s.")
        if rec.total > 64:
            st.caption("Each dot is one channel. Above the dotted line the history expected more energy than the "
                       "probe saw; green and red dots are the decisions the history turned around.")


def stage2_figure(rec: BlockRecord, layer: int, block: str) -> go.Figure:
    """Stage 2 of one pruned block (`rec`, with energies): per head, bars of the probe's, the history's and the
    fused energy with the fusion weight; per MLP channel (over 64 units), P against G as dots. Each unit coloured by
    what the history did to its decision (`charts.decision_labels`)."""
    s = session.stage2(rec)
    unit = BLOCK_TEXT[block].unit
    labels = charts.decision_labels(rec.total, s.kept, s.kept_probe_only)
    title = f"Layer {layer}, {BLOCK_TEXT[block].long}: probe, history and fused energy"
    if rec.total <= 64:
        return charts.stage2_bars(s.energy_probe, s.energy_history, s.energy_fused, s.fusion_weight, labels, unit,
                                  title)
    return charts.stage2_scatter(s.energy_probe, s.energy_history, s.scores, labels, unit, title)


def _short(units: list[int], n: int = 12) -> str:
    """'[3, 17, 40]' or '[3, 17, … 40 more]' for long lists."""
    return str(units) if len(units) <= n else f"[{', '.join(map(str, units[:n]))}, … {len(units) - n} more]"


def _drift(r: Result, start_stability: Optional[Callable[[int], None]]) -> None:
    st.subheader("How the history moves batch to batch")
    st.caption("The current batch, then further corpus batches of the same shape, through one pruner. After every "
               "batch the history takes an exponential moving average of the kept channels' energies, so it drifts "
               "away from the calibration data slowly. Each cell: a unit's history, summed over the batch's "
               "positions and its channels, against the first batch's.", help=explain("EMA"))
    if start_stability is None:
        st.info(needs_model("Running consecutive batches"))
        return
    out = count_and_button("Extra batches", limits().extra_batches, 3, "hist_stab_n", "Run consecutive batches",
                           "hist_stab_go", start_stability)
    stab = r.stability
    if stab is None or not stab.history:
        out.info("Press **Run consecutive batches** (the same run as the stability chart of Pruned channels).")
        return
    layer = int(st.session_state.get("hist_layer", first_pruned_layer(r)))
    block = st.session_state.get("hist_block", "attn")
    unit = BLOCK_TEXT[block].unit
    h = stab.history[block][:, layer, :].astype(np.float64)  # (batches, units)
    if not np.isfinite(h).all():
        out.info(f"Layer {layer}'s {BLOCK_TEXT[block].long.lower()} are not pruned (a skipped layer or a "
                 "switched-off block): nothing reads or updates their history. Pick a pruned layer.")
        return
    drift = h / np.where(h[:1] > 0, h[:1], np.nan) - 1.0
    out.plotly_chart(charts.history_drift(drift, unit, f"Layer {layer}, {BLOCK_TEXT[block].long}: history at each "
                                                       "batch against the first (calibration) state"),
                     width="stretch", key="hist_drift")
    changed = stab.history_changed[block][:, layer]
    out.caption("Units the history changed at this layer, batch by batch: "
                + ", ".join("—" if not np.isfinite(c) else str(int(c)) for c in changed))
