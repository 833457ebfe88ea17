"""Side by side (issue 14 item 3): two pruning configurations on the analysis's batch, and what tells them apart.

Configuration A is the analysis's own (pp at the analysis's ratio when the analysed method is dense); B is one of a
few presets a lecturer asks for (PP without its history, FLAP or Wanda-sp at the same ratio, the full-batch oracle,
another ratio), built from A with `PruneConfig.as_method` so that A's other settings (skipped layers, MLP multiple,
attention and MLP switches) carry over. `ppcore.session.side_by_side` walks the batch with both; the view draws the
perplexity and decoder FLOPs of each, the keep-sets' Jaccard per layer, the units only one of them keeps, and the
per-token loss differences (B minus A).

Every finished comparison lives in the analysed Result (`Result.side_by_side`, by B's label), so choosing a preset
again redraws it without recomputing; a new analysis starts without any.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd
import streamlit as st

from ppcore import ConfigError, PruneConfig, session

from .. import charts
from ..glossary import explain
from ..header import FORMATS, NA, Metric, figure, missing, text_table
from ..result import Result
from .controls import BLOCK_TEXT

OTHER_RATIO = "another ratio"
# Configuration B's presets, in the order the page offers them.
PRESETS = ("PP without history", "FLAP at the same ratio", "Wanda-sp at the same ratio", "the full-batch oracle",
           OTHER_RATIO)
PRESET_METHOD = {"PP without history": "pp", "FLAP at the same ratio": "flap",
                 "Wanda-sp at the same ratio": "wanda-sp", "the full-batch oracle": "fullbatch"}
# The glossary entries behind each preset's question (app/glossary.py).
TERMS: dict[str, tuple[str, ...]] = {
    "PP without history": ("history", "probe", "fusion"), "FLAP at the same ratio": ("FLAP", "probe"),
    "Wanda-sp at the same ratio": ("Wanda-sp", "probe"), "the full-batch oracle": ("oracle", "probe"),
    OTHER_RATIO: ("ratio",)}
CHOICE_KEY, RATIO_KEY = "_sbs_choice", "_sbs_ratio"  # the choices, kept while another tab is open
LIST_SHOWN = 8  # unit indices written out per table cell; the rest are counted
TOP = 10  # tokens in each of the "B worst" and "B best" tables
LOSS_FORMATS = {"loss A (nats)": ".3f", "loss B (nats)": ".3f", "B − A (nats)": "+.3f"}


# --- the two configurations (no streamlit) ------------------------------------------------------------------------

def config_a(a: session.Analysis) -> PruneConfig:
    """Configuration A: the analysis's own config; pp at the analysis's ratio when the analysed method is dense."""
    return a.cfg if a.cfg.method != "dense" else a.cfg.as_method("pp", a.ratio)


def default_other_ratio(ratio_a: float) -> float:
    """The "another ratio" preset's starting value: 0.2, or 0.4 when A's ratio is 0.2 already."""
    return 0.4 if round(ratio_a, 2) == 0.2 else 0.2


def config_b(cfg_a: PruneConfig, preset: str, ratio: Optional[float] = None) -> PruneConfig:
    """Configuration B for one of PRESETS, from A: the method's own settings through `as_method` (a baseline keeps
    its own score; only PP fuses), A's ratio unless the preset is OTHER_RATIO (`ratio`, rounded to 2 decimals).
    "PP without history" is pp with `use_history` off; its probe alone decides, so a fixed fusion A sets (which
    mixes the probe with the history) goes back to the default. Raises ConfigError as PruneConfig does, ValueError
    for an unknown preset or OTHER_RATIO without a ratio."""
    if preset == OTHER_RATIO:
        if ratio is None:
            raise ValueError(f"the preset {OTHER_RATIO!r} needs a ratio")
        return cfg_a.as_method(cfg_a.method, round(float(ratio), 2))
    if preset not in PRESET_METHOD:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    if preset == "PP without history":
        # Through a method that does not fuse and back: the fusion settings at their defaults, the rest A's.
        unfused = cfg_a.as_method("fullbatch", cfg_a.ratio).as_method("pp", cfg_a.ratio)
        return replace(unfused, use_history=False)
    return cfg_a.as_method(PRESET_METHOD[preset], cfg_a.ratio)


def entry(preset: str, ratio: Optional[float] = None) -> str:
    """The label a comparison is kept under in `Result.side_by_side`: the preset, with the ratio for OTHER_RATIO."""
    return f"{OTHER_RATIO} ({round(float(ratio), 2):.2f})" if preset == OTHER_RATIO and ratio is not None else preset


def describe(cfg: Union[PruneConfig, Mapping[str, Any]]) -> str:
    """A configuration in words: 'pp at ratio 0.40', 'pp without history at ratio 0.40', 'fullbatch (the oracle)
    at ratio 0.40'."""
    d = cfg.to_dict() if isinstance(cfg, PruneConfig) else dict(cfg)
    name = d["method"]
    if name == "pp" and not d.get("use_history", True):
        name = "pp without history"
    elif name == "fullbatch":
        name = "fullbatch (the oracle)"
    return f"{name} at ratio {d['ratio']:.2f}"


def stored(r: Result) -> dict[str, session.SideBySide]:
    """The comparisons computed for this result, by B's label (Result.side_by_side; a new analysis has none)."""
    return r.side_by_side or {}


# --- figures and tables (no streamlit) ----------------------------------------------------------------------------

def metrics(res: session.SideBySide) -> list[Metric]:
    """The comparison's header line: perplexity on the batch and decoder FLOPs over dense's, of A and of B (B with
    its difference from A)."""
    spec, key = FORMATS["decoder_flops_ratio"], "decoder_flops_ratio"
    fa, fb = res.flops_a.get(key), res.flops_b.get(key)
    return [
        Metric("Perplexity, A", figure(res.ppl_a, FORMATS["ppl"]), help=f"A: {describe(res.cfg_a)}\n\n"
               + explain("perplexity")),
        Metric("Perplexity, B", figure(res.ppl_b, FORMATS["ppl"]), _change(res.ppl_a, res.ppl_b, "+.2f"),
               help=f"B: {describe(res.cfg_b)}; the change is B minus A\n\n" + explain("perplexity")),
        Metric("FLOPs / dense (decoder layers), A", figure(fa, spec),
               help="A's FLOPs over dense's, decoder layers only (the paper's count)\n\n" + explain("FLOPs")),
        Metric("FLOPs / dense (decoder layers), B", figure(fb, spec),
               _change(fa, fb, "+.3f"),
               help="B's FLOPs over dense's, decoder layers only (the paper's count); the change is B minus A\n\n"
                    + explain("FLOPs")),
    ]


def _change(a: Optional[float], b: Optional[float], spec: str) -> Optional[str]:
    """B − A written with `spec` for a metric's delta; None (no arrow) when either is missing or the difference
    rounds to zero."""
    if a is None or b is None or missing(a) or missing(b):
        return None
    text = format(b - a, spec)
    return None if float(text) == 0 else text


def short_list(units: Sequence[int], shown: int = LIST_SHOWN) -> str:
    """A list of unit indices for a table cell: 'none', '3 (1, 4, 7)', or '40 (0, 3, 5, …)' past `shown`."""
    if not units:
        return "none"
    head = ", ".join(str(u) for u in units[:shown])
    return f"{len(units)} ({head}{', …' if len(units) > shown else ''})"


def _pruned_by(d: session.LayerDiff) -> str:
    return {(True, True): "both", (True, False): "A only", (False, True): "B only", (False, False): "neither"}[
        (d.pruned_a, d.pruned_b)]


def layer_table(res: session.SideBySide) -> pd.DataFrame:
    """One row per layer and block (attention first): which configuration pruned it, the units only A keeps, only B
    keeps (as lists), the count both keep, and the keep-sets' Jaccard (NaN where neither pruned the block)."""
    rows = [{"layer": d.layer, "block": BLOCK_TEXT[d.block].short, "pruned by": _pruned_by(d),
             "only A keeps": d.only_a, "only B keeps": d.only_b, "kept by both": d.both,
             "Jaccard": d.jaccard if (d.pruned_a or d.pruned_b) else np.nan} for d in res.layers]
    return pd.DataFrame(rows, columns=["layer", "block", "pruned by", "only A keeps", "only B keeps", "kept by both",
                                       "Jaccard"])


def shown_layer_table(res: session.SideBySide) -> pd.DataFrame:
    """`layer_table` as the page shows it: unit lists shortened (`short_list`), the Jaccard to three decimals, NA
    where neither configuration pruned the block."""
    df = layer_table(res)
    for col in ("only A keeps", "only B keeps"):
        df[col] = [short_list(v) for v in df[col]]
    return text_table(df, {"Jaccard": ".3f"})


def token_losses(res: session.SideBySide, tokens: list[list[str]]) -> pd.DataFrame:
    """One row per scored position of the batch: sample, position (of the predicted token), token (its text), the
    loss under A and under B and B − A, in nats."""
    m = res.mask.numpy() > 0
    b_idx, t_idx = np.nonzero(m)
    la, lb = res.nll_a.numpy()[m], res.nll_b.numpy()[m]
    text = [tokens[b][t + 1] if b < len(tokens) and t + 1 < len(tokens[b]) else "" for b, t in zip(b_idx, t_idx)]
    return pd.DataFrame({"sample": b_idx, "position": t_idx + 1, "token": text, "loss A (nats)": la.astype(float),
                         "loss B (nats)": lb.astype(float), "B − A (nats)": (lb - la).astype(float)})


def extremes(res: session.SideBySide, tokens: list[list[str]], n: int = TOP) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The `n` tokens where B's loss rose most over A's (B worst; B − A > 0 only) and the `n` where it fell most (B
    best; B − A < 0 only), each sorted by how far, as `token_losses` rows."""
    df = token_losses(res, tokens)
    diff = df["B − A (nats)"]
    worst = df[diff > 0].sort_values("B − A (nats)", ascending=False, kind="stable").head(n)
    best = df[diff < 0].sort_values("B − A (nats)", kind="stable").head(n)
    return worst.reset_index(drop=True), best.reset_index(drop=True)


def shown_tokens(df: pd.DataFrame) -> pd.DataFrame:
    """`token_losses` rows as the page shows them: losses to three decimals, the difference signed."""
    return text_table(df, LOSS_FORMATS)


def mean_jaccard(res: session.SideBySide, block: str) -> float:
    """The mean over the layers either configuration pruned of the keep-sets' Jaccard (NaN when none)."""
    v = res.jaccard_by_layer(block)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


# --- the view -----------------------------------------------------------------------------------------------------

def _choices(ratio_a: float) -> tuple[str, float]:
    """The preset radio and, for OTHER_RATIO, the ratio input; both kept while another tab is open."""
    if "sbs_preset" not in st.session_state and st.session_state.get(CHOICE_KEY) in PRESETS:
        st.session_state["sbs_preset"] = st.session_state[CHOICE_KEY]  # back on this tab: the preset chosen before
    if "sbs_ratio" not in st.session_state:
        st.session_state["sbs_ratio"] = st.session_state.get(RATIO_KEY, default_other_ratio(ratio_a))
    c1, c2 = st.columns([5, 1])
    preset = c1.radio("Configuration B", PRESETS, key="sbs_preset", horizontal=True,
                      help="what A is compared with, on the same batch; A's other settings (skipped layers, MLP "
                           "multiple, attention and MLP switches) carry over")
    ratio = c2.number_input("B's ratio", min_value=0.0, max_value=0.95, step=0.05, format="%.2f", key="sbs_ratio",
                            disabled=preset != OTHER_RATIO, help="for 'another ratio': B is A at this ratio\n\n"
                            + explain("ratio"))
    st.session_state[CHOICE_KEY], st.session_state[RATIO_KEY] = preset, ratio  # a widget's own state goes elsewhere
    return preset, float(ratio)


def render(r: Result, start: Callable[[str, PruneConfig, PruneConfig], None]) -> None:
    """The Side by side view; `start(label, cfg_a, cfg_b)` runs both configurations on the batch and keeps the
    comparison in `Result.side_by_side` under `label`."""
    a = r.analysis
    cfg_a = config_a(a)
    st.caption("Two pruning configurations on this same batch: A is this analysis's"
               + (" (pp at its ratio, since the analysed method is dense)" if a.cfg.method == "dense" else "")
               + ", B the one you choose. Both start from a fresh pruner (PP's history is the calibration's), one "
               "batch and no warm-up, as everywhere on this page. The view shows where they keep different heads "
               "and MLP channels, and which tokens one of them predicts worse.",
               help=explain("Jaccard", "perplexity", "FLOPs", "oracle"))
    preset, ratio = _choices(cfg_a.ratio)
    label = entry(preset, ratio)
    try:
        cfg_b: Optional[PruneConfig] = config_b(cfg_a, preset, ratio)
        problem = None
    except ConfigError as e:  # a setting of A that B's method cannot take: said once, nothing runs
        cfg_b, problem = None, f"B cannot be built from this analysis's settings: {e}"
    if cfg_b is not None:
        try:
            cfg_b.check_layers(len(a.main.layers))  # e.g. a ratio the skipped layers leave too little room for
        except ConfigError as e:
            cfg_b, problem = None, f"B cannot run on this model: {e}"
    st.markdown(f"**A**: {describe(cfg_a)}  ·  **B**: {describe(cfg_b) if cfg_b is not None else '?'}",
                help=explain(*TERMS[preset]))
    same = cfg_b is not None and cfg_b == cfg_a
    walk_s = max(a.seconds.values()) if a.seconds else 0.0
    if st.button("Run side by side", key="sbs_go", disabled=cfg_b is None or same,
                 help="two runs of this batch, one per configuration"
                      + (f", about {2 * walk_s:.0f} s: each takes about as long as this analysis's walk"
                         if walk_s else "")) and cfg_b is not None:
        start(label, cfg_a, cfg_b)
    if problem is not None:
        st.warning(problem, icon="⚠️")
        return
    if same:
        st.info(f"B would be A itself ({describe(cfg_a)}): choose another configuration B.")
        return
    res = stored(r).get(label)
    if res is None:
        st.info(f"Press **Run side by side** to run A and B ({label}) on this batch.")
        return
    note = r.reused.get(label)
    if note:
        st.caption(f"This comparison was {note}.")
    _draw(res, a.batch.labels)


def _draw(res: session.SideBySide, tokens: list[list[str]]) -> None:
    """One finished comparison (of the A and B named above it): the header line, the Jaccard per layer, the per-layer
    table, the loss differences."""
    for col, m in zip(st.columns(4), metrics(res)):
        col.metric(m.label, m.value, m.delta, delta_color="inverse" if m.delta else "normal", help=m.help)

    st.subheader("Which heads and channels each keeps")
    ja, jm = mean_jaccard(res, "attn"), mean_jaccard(res, "mlp")
    st.plotly_chart(charts.pair_jaccard(res.jaccard_by_layer("attn"), res.jaccard_by_layer("mlp"),
                                        "Keep-set Jaccard of A and B per layer"), width="stretch", key="sbs_jaccard")
    st.caption(f"Per layer, the share of kept units the two configurations have in common (Jaccard): 1 means A and "
               f"B keep exactly the same heads (or MLP channels), 0 that they keep none in common. Mean over the "
               f"pruned layers: heads {figure(ja, '.3f')}, MLP channels {figure(jm, '.3f')}. Gaps are layers neither "
               "prunes (skipped).", help=explain("Jaccard"))
    st.dataframe(shown_layer_table(res), hide_index=True, width="stretch", key="sbs_layers")
    st.caption("Per layer and block: the units (head or channel indices) only A keeps and only B keeps, with their "
               f"count first; how many both keep; the Jaccard ({NA} where neither configuration prunes the block).")

    st.subheader("Which tokens each predicts better")
    st.plotly_chart(charts.loss_diff_heatmap(res.loss_diff.numpy(), res.mask.numpy(), tokens,
                                             "Per-token loss, B minus A (nats)", res.nll_a.numpy(),
                                             res.nll_b.numpy()),
                    width="stretch", key="sbs_heat")
    st.caption("Each cell is one predicted token of the batch (hover for its text): its loss under B minus its loss "
               "under A, in nats. Red: B predicts that token worse than A (positive); blue: better (negative); white: "
               "about the same, or a pad.", help=explain("perplexity"))
    worst, best = extremes(res, tokens)
    c1, c2 = st.columns(2)
    for col, df, title, none in ((c1, worst, f"Where B is worst (top {TOP})", "B predicts no token worse than A."),
                                 (c2, best, f"Where B is best (top {TOP})", "B predicts no token better than A.")):
        col.markdown(f"**{title}**")
        if df.empty:
            col.info(none)
        else:
            col.dataframe(shown_tokens(df), hide_index=True, width="stretch")
