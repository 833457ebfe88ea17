"""Latency: dense vs pruned wall time on the same batch, split into probe, decision and full inference."""
from __future__ import annotations

from typing import Optional

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from ppcore import session

from .. import charts
from ..header import FORMATS, speed_note, text_table
from ..glossary import explain
from ..result import Result
from ..state import limits
from .controls import count_and_button, reused_line

PARTS = (("probe", "probe_s"), ("decide", "decide_s"), ("full inference", "full_s"),
         ("dense full inference", "dense_full_s"))


def layer_times(lat: session.Latency) -> pd.DataFrame:
    """Long table: per layer and block, probe / decide / full seconds of the pruned run, and dense full time."""
    return pd.DataFrame([{"layer": b.layer, "block": b.block, "part": part, "seconds": getattr(b, name),
                          "block_flops_ratio": b.flops_ratio} for b in lat.blocks for part, name in PARTS])


def summary_table(lat: session.Latency) -> pd.DataFrame:
    """One row per method: median seconds, time against dense, the four FLOPs figures (whole model, LM
    head included, which is what wall time pays; and decoder layers only, the paper's definition), the
    share of the time spent probing and deciding, and the weight copies the run holds."""
    return pd.DataFrame([{"method": t.method, "ratio": t.ratio, "seconds (median)": t.seconds,
                          "time / dense": t.time_vs_dense, "FLOPs / dense (whole model)": t.flops["flops_ratio"],
                          "FLOPs / dense (decoder layers)": t.flops["decoder_flops_ratio"],
                          "probe FLOPs / dense (whole model)": t.flops["probe_flops_ratio"],
                          "probe FLOPs / dense (decoder layers)": t.flops["decoder_probe_flops_ratio"],
                          "probe + decide share of its time": t.probe_decide_share,
                          "weight copies held (MiB)": t.held_bytes / 2**20}
                         for t in lat.runs])


# The summary table as the page shows it: ratios and shares written as the header writes them.
SUMMARY_FORMATS = {"ratio": FORMATS["ratio"], "seconds (median)": FORMATS["seconds"],
                   "time / dense": FORMATS["time_vs_dense"], "FLOPs / dense (whole model)": FORMATS["flops_ratio"],
                   "FLOPs / dense (decoder layers)": FORMATS["decoder_flops_ratio"],
                   "probe FLOPs / dense (whole model)": FORMATS["probe_flops_ratio"],
                   "probe FLOPs / dense (decoder layers)": FORMATS["decoder_probe_flops_ratio"],
                   "probe + decide share of its time": FORMATS["share"], "weight copies held (MiB)": FORMATS["mib"]}


def cpu_note(device: str, threads: Optional[int] = None) -> Optional[str]:
    """What a CPU measurement can and cannot say (None on any other device): shared by Latency and Compare."""
    if not str(device).startswith("cpu"):
        return None
    return (f"Measured on a CPU{f' ({threads} threads)' if threads else ''}: only ratios mean anything. Small "
            "batches are dominated by fixed overheads (probing, slicing, Python), and other load on the machine "
            "shifts absolute times; a GPU with large batches is where pruning's FLOPs savings become wall time. "
            "Latency, Compare and the lecture each time their own runs, so the same method's time / dense can "
            "differ between them by several percent: a difference that small is noise, not a result.")


def latency_note(lat: session.Latency) -> Optional[str]:
    """The plain sentence under the Latency view's title: did the method beat dense, and why not (None for dense)."""
    if len(lat.runs) < 2:
        return None
    return speed_note(lat.runs[0], lat.runs[-1], lat.device, lat.batch, lat.blocks,
                      largest=(limits().batch, limits().seq))


def render(r: Result, start_latency) -> None:
    st.caption("Every method is warmed up first, then the runs are interleaved repeat by repeat and the medians "
               "kept. End-to-end runs take no per-block clock; separate runs record probe, decision and full "
               "inference time per block.", help=explain("FLOPs", "probe"))
    out = count_and_button("Repeats", limits().repeats, 3, "lat_reps", "Measure latency", "lat_go", start_latency)
    lat = r.latency
    if lat is None:
        method = r.analysis.cfg.method
        out.info(f"Press **Measure latency** to time dense and {method} on this batch: the page then says whether "
                 f"{method} ran faster than dense, against what its FLOPs predict." if method != "dense" else
                 "Press **Measure latency** to time dense on this batch.")
        return
    reused_line(r.reused.get("latency"), "lat_again", lambda: start_latency(lat.repeats, fresh=True))
    note = latency_note(lat)
    if note:
        st.info(note, icon="⏱️")
    caveat = cpu_note(lat.device, lat.threads)
    if caveat:
        st.warning(caveat, icon="ℹ️")
    st.dataframe(shown_summary(lat), hide_index=True, width="stretch")
    st.plotly_chart(per_layer_chart(lat), width="stretch", key="lat_layers")


def shown_summary(lat: session.Latency) -> pd.DataFrame:
    """`summary_table` as the page shows it (text, formatted like the header)."""
    return text_table(summary_table(lat), SUMMARY_FORMATS)


def per_layer_chart(lat: session.Latency) -> go.Figure:
    """Per layer and block: the pruned run's probe, decision and full-inference seconds beside dense's."""
    return charts.latency_bars(layer_times(lat), f"Per layer: {lat.runs[-1].method} vs dense (batch {lat.batch[0]} "
                                                 f"x {lat.batch[1]}, median of {lat.repeats})")
