"""Latency: dense vs pruned wall time on the same batch, split into probe, decision and full inference."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from .. import charts
from ..engine import Result
from ..state import limits


def layer_times(lat: dict) -> pd.DataFrame:
    """Long table: per layer and block, probe / decide / full seconds of the pruned run, and dense full time."""
    run = lat["runs"][-1]
    rows = []
    for b in run["blocks"]:
        for part, key in (("probe", "probe_s"), ("decide", "decide_s"), ("full inference", "full_s"),
                          ("dense full inference", "dense_full_s")):
            rows.append({"layer": b["layer"], "block": b["block"], "part": part, "seconds": b[key],
                         "block_flops_ratio": b["flops_ratio"]})
    return pd.DataFrame(rows)


def summary_table(lat: dict) -> pd.DataFrame:
    """One row per method: median seconds, time against dense, and the four FLOPs figures (whole model, LM
    head included, which is what wall time pays; and decoder layers only, the paper's definition)."""
    return pd.DataFrame([{"method": x["method"], "ratio": x["ratio"], "seconds (median)": x["seconds"],
                          "time / dense": x["time_vs_dense"], "FLOPs / dense (whole model)": x["flops_ratio"],
                          "FLOPs / dense (decoder layers)": x.get("decoder_flops_ratio"),
                          "probe FLOPs / dense (whole model)": x["probe_flops_ratio"],
                          "probe FLOPs / dense (decoder layers)": x.get("decoder_probe_flops_ratio")}
                         for x in lat["runs"]])


def render(r: Result, start_latency) -> None:
    st.caption("Every method is warmed up first, then the runs are interleaved repeat by repeat and the medians "
               "kept. End-to-end runs take no per-block clock; separate runs record probe, decision and full "
               "inference time per block.")
    c1, c2 = st.columns([1, 3])
    reps = c1.number_input("Repeats", 1, limits().repeats, 3, key="lat_reps")
    if c1.button("Measure latency", key="lat_go"):
        start_latency(int(reps))
    lat = r.extras.get("latency")
    if not lat:
        c2.info("Press **Measure latency** to time dense and the chosen method on this batch.")
        return
    if lat["device"].startswith("cpu"):
        st.warning(f"Measured on a CPU ({lat['threads']} threads): only ratios mean anything. Small batches are "
                   "dominated by fixed overheads (probing, slicing, Python), and other load on the machine shifts "
                   "absolute times; a GPU with large batches is where pruning's FLOPs savings become wall time.",
                   icon="ℹ️")
    st.dataframe(summary_table(lat), hide_index=True, width="stretch")
    st.plotly_chart(charts.latency_bars(layer_times(lat), f"Per layer: {lat['runs'][-1]['method']} vs dense "
                                        f"(batch {lat['batch'][0]} x {lat['batch'][1]}, median of {lat['repeats']})"),
                    width="stretch", key="lat_layers")
