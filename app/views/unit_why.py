"""Why this head (or channel): one unit's PPsp score in its factors, its rank against the cut-off, what the oracle
and each static baseline decided for it, and every method's kept set at that layer side by side
(docs/algorithm.md §3.3-4, §8; ppcore.why)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd
import streamlit as st

from ppcore import session
from ppcore.record import BatchRecord

from .. import charts
from ..glossary import explain
from ..result import Result
from ..viewlink import show_place
from .controls import BLOCK_TEXT, block_radio
from .probe import first_pruned_layer, nothing_pruned, nothing_pruned_text
from .replay import lacking


TITLES = {"fullbatch": "fullbatch (the oracle)"}


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def picked(selection: Any, block: str) -> Optional[tuple[Optional[int], int]]:
    """(layer or None, unit) from a chart selection's first point: the head map (x = layer, y = head) gives
    (layer, head), the score chart (x = channel) gives (None, channel); None when nothing usable was clicked."""
    try:
        points = selection["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for p in points or []:
        x, y = p.get("x"), p.get("y")
        if x is None or not float(x).is_integer() or (block == "attn" and (y is None or not float(y).is_integer())):
            continue
        return (int(x), int(y)) if block == "attn" else (None, int(x))
    return None


def unit_box_key(block: str) -> str:
    """The widget key of the unit-number box now: one per block and per chart click."""
    return f"why_unit_box_{block}_{st.session_state.get('why_clicks', 0)}"


def _typed(box: str) -> None:
    """The unit-number box changed: explain that unit."""
    st.session_state["why_unit"] = int(st.session_state[box])


def _on_pick(chart_key: str, block: str) -> None:
    """A chart click: move the layer and the unit explained there before the rerun draws them."""
    hit = picked(st.session_state.get(chart_key), block)
    if hit is None:
        return
    layer, unit = hit
    if layer is not None:
        st.session_state["why_layer"] = layer
    st.session_state["why_unit"] = unit
    st.session_state["why_clicks"] = st.session_state.get("why_clicks", 0) + 1  # a fresh box shows the unit


def verdict_table(w: session.UnitWhy) -> pd.DataFrame:
    """One row per method: its decision for the unit, its rank by its own score, that score ('—' when none)."""
    rows = [{"method": f"{w.method} (this run)", "decision": "kept" if w.kept else "pruned",
             "rank": f"{w.rank} of {w.total}", "score": f"{w.score:.4g}"}]
    for v in w.others:
        rows.append({"method": TITLES.get(v.method, v.method),
                     "decision": ("kept" if v.kept else "pruned") if v.decided else "not pruned here",
                     "rank": "—" if v.rank is None else f"{v.rank} of {w.total}",
                     "score": "—" if v.score is None else f"{v.score:.4g}"})
    return pd.DataFrame(rows)


def render(r: Result) -> None:
    st.caption("Pick a head on the map (or a channel on the score chart), or type its number: the panel takes its "
               "PPsp score apart, says how far it was from the cut-off, and what the other methods decided for it.",
               help=explain("PPsp", "weight factor", "cut-off", "oracle", "Wanda-sp", "FLAP", "ppsp-calib"))
    why_not = nothing_pruned(r)
    if why_not:
        st.info(nothing_pruned_text(why_not))
        return
    if r.baselines is None:
        st.info(lacking("baselines: the other methods' decisions are not shown") if r.replayed else
                "The other methods' decisions appear once the baselines have run.")
    _panel(r)


@st.fragment
def _panel(r: Result) -> None:
    a = r.analysis
    main = a.main
    n = len(main.layers)
    if "why_layer" not in st.session_state:
        st.session_state["why_layer"] = first_pruned_layer(r)
    c1, c2, c3 = st.columns([3, 2, 1])
    layer = c1.slider("Layer", 0, n - 1, key="why_layer")
    block = block_radio(c2, "Block", "why_block", long=True, horizontal=True)
    show_place("Why this head", layer, block)
    rec = getattr(main.layers[layer], block)
    unit_name = BLOCK_TEXT[block].unit
    if "why_unit" not in st.session_state:  # open on a pruned unit: "why was this one pruned?" is the question
        kept = set(rec.kept)
        st.session_state["why_unit"] = next((u for u in range(rec.total) if u not in kept), 0)
    unit = st.session_state["why_unit"] = min(max(int(st.session_state["why_unit"]), 0), rec.total - 1)
    # The box is made anew for each block and after each click (its key says which), so that neither a number
    # typed out of range nor the other block's number stays in it: "why_unit" holds the unit explained.
    box = unit_box_key(block)
    c3.number_input(f"{unit_name.capitalize()} number", 0, rec.total - 1, value=unit, key=box,
                    on_change=_typed, args=(box,), help=f"0 to {rec.total - 1}")
    if block == "attn":
        kept = session.kept_matrix(main, "attn")
        decided = [lay.attn.pruned for lay in main.layers]
        st.plotly_chart(charts.head_picker(kept, (layer, unit), f"Heads kept by {a.cfg.method}: click one to explain",
                                           decided),
                        width="stretch", key="why_map", on_select=lambda: _on_pick("why_map", "attn"),
                        selection_mode="points")
    if not rec.pruned or rec.scores is None:
        st.info(f"Layer {layer}'s {BLOCK_TEXT[block].long.lower()} were not pruned by {a.cfg.method} (a skipped "
                "layer, a switched-off block or a dense run): nothing was scored here. Pick another layer.")
        return
    others = dict(r.baselines or {})
    w = session.unit_why(main, others, layer, block, unit)
    if block == "mlp":
        st.plotly_chart(charts.unit_scores(rec.scores, rec.kept, unit_name, unit, w.cutoff,
                                           f"Layer {layer}: {a.cfg.method} score of every MLP channel (click one)"),
                        width="stretch", key="why_scores", on_select=lambda: _on_pick("why_scores", "mlp"),
                        selection_mode="points")
    _explain(w, unit_name)
    _side_by_side(a.cfg.method, main, others, layer, block, unit_name)


# What each method's recorded score is (docs/algorithm.md §4, §4.1, §8.1b).
SCORE_NAMES = {"pp": "PPsp score", "fullbatch": "PPsp score (on the whole batch)",
               "ppsp-calib": "PPsp score (on calibration energies)", "wanda-sp": "Wanda-sp score",
               "flap": "FLAP score (fluctuation x squared weights)",
               "pp-plus": "PP+ score (PPsp, or with error_score the energy times the squared weight-column norm)"}


def headline(w: session.UnitWhy, unit_name: str) -> str:
    """The panel's first sentence: decision, score, rank and the cut-off, in plain words."""
    where = f"{unit_name.capitalize()} {w.unit} of layer {w.layer}"
    verdict = "**kept**" if w.kept else "**pruned**"
    if w.score == w.cutoff and not w.kept:
        rel = "exactly the cut-off: it tied with the cut-off, and ties drop the lower-numbered unit first"
    elif w.score == w.cutoff:
        rel = "exactly the cut-off: it is the lowest kept"
    elif np.isfinite(w.margin):
        rel = f"{w.margin:.2f}x the cut-off"
    else:
        rel = "above a cut-off of 0"
    name = SCORE_NAMES.get(w.method, "score")
    if w.forced:
        return (f"{where} was {verdict} by {w.method} whatever its score: it is one of the MLP core channels PP+'s "
                f"recovery always keeps and estimates the pruned channels from. Its {name} {w.score:.4g} ranks "
                f"{_ordinal(w.rank)} of {w.total}; the other kept channels scored at least {w.cutoff:.4g}.")
    return (f"{where} was {verdict} by {w.method}: its {name} {w.score:.4g} ranks {_ordinal(w.rank)} of "
            f"{w.total}, and {w.method} kept the top {w.n_kept}. The cut-off (the lowest kept score) is "
            f"{w.cutoff:.4g}, so this {unit_name} scored {rel}.")


def _explain(w: session.UnitWhy, unit_name: str) -> None:
    st.markdown(headline(w, unit_name))
    if w.energy_fused is None and w.method in ("pp", "fullbatch"):  # a record saved at level summary
        st.info(f"This record holds no energies for {w.method}'s score (it was saved at level summary): there is "
                "nothing to take apart. Press **Run** to recompute.")
    elif w.energy_fused is None:
        static = ("it decides once, from calibration statistics, and records no per-batch energies"
                  if w.method in ("wanda-sp", "flap", "ppsp-calib") else "it records no energies")
        st.info(f"Method '{w.method}' has no probe or history to take apart: {static}. Choose pp (or fullbatch) "
                "to see a score's factors.")
    else:
        _factors(w, unit_name)
    if w.others:
        st.dataframe(verdict_table(w), hide_index=True, width="stretch")


def _factors(w: session.UnitWhy, unit_name: str) -> None:
    """The energies behind the score, the score taken apart, and the probe-alone counterfactual."""
    assert w.energy_fused is not None and w.energy_probe is not None
    fused = float(np.sum(w.energy_fused))
    cols = st.columns(4)
    cols[0].metric("Probe energy (P)", f"{float(np.sum(w.energy_probe)):.4g}", help=explain("energy"))
    if w.energy_history is not None and w.fusion_weight is not None:
        cols[1].metric("History energy (G)", f"{float(np.sum(w.energy_history)):.4g}", help=explain("history"))
        cols[2].metric("Mean fusion weight", f"{float(np.mean(w.fusion_weight)):.2f}", help=explain("fusion weight"))
    cols[3].metric("Fused energy (scored)", f"{fused:.4g}", help=explain("fusion"))
    st.caption("P, G and the fused energy are sums over the probe's positions"
               + (" and the head's channels" if unit_name == "head" else "")
               + "; the fusion is computed position by position and channel by channel, and the fusion weight "
               "shown is its mean over those.")
    if w.weight_factor is None:
        st.caption("This record is older than schema 3: it holds no weight factor, so the score is not taken apart.")
    elif unit_name == "channel":
        st.markdown(f"**PPsp = fused energy x weight factor** = {w.energy_fused[0]:.4g} x {w.weight_factor[0]:.4g} "
                    f"= {w.score_from_factors:.4g}", help=explain("PPsp", "weight factor"))
    else:
        wf = float(np.sqrt(np.sum(np.square(w.weight_factor))))
        st.markdown(f"**PPsp of a head** = sqrt(sum over its {len(w.channels)} channels of (fused energy x weight "
                    f"factor)^2) = {w.score_from_factors:.4g}. Its fused energy is {fused:.4g} in all; its weight "
                    f"factors have an L2 norm of {wf:.4g}.", help=explain("PPsp", "weight factor"))
        st.plotly_chart(charts.contributions_chart(w.contributions, w.channels,
                                                   f"Head {w.unit}: each channel's term of the score"),
                        width="stretch", key="why_terms")
    if w.probe_only_kept is not None:
        same = w.probe_only_kept == w.kept
        st.markdown("Without the history, PPsp on the probe alone would have "
                    + ("made the same decision." if same else
                       f"**{'kept' if w.probe_only_kept else 'pruned'}** it: the history turned this decision around."))


def _side_by_side(method: str, main: BatchRecord, others: dict[str, BatchRecord], layer: int, block: str,
                  unit_name: str) -> None:
    st.subheader(f"Layer {layer}: what every method kept")
    sets = session.kept_sets({method: main, **others}, layer, block)
    if block == "attn":
        st.plotly_chart(charts.kept_sets_grid(sets, main.layers[layer].attn.total, "head",
                                              f"Layer {layer}: heads kept by each method"),
                        width="stretch", key="why_sets")
        st.markdown("  \n".join(f"**{m}** kept {s}" for m, s in sets.items()))
    else:
        mine = set(sets[method])
        st.dataframe(pd.DataFrame([{"method": m, "kept channels": len(s),
                                    f"kept by {method} too": len(mine & set(s)),
                                    f"Jaccard with {method}": len(mine & set(s)) / max(len(mine | set(s)), 1)}
                                   for m, s in sets.items()]).style.format({f"Jaccard with {method}": "{:.3f}"}),
                     hide_index=True, width="stretch")
    if not others:
        st.caption("The oracle and the static baselines join this comparison once they have run.")
