"""Method comparison: every method on the same batch at the same ratio (or a ratio sweep)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from ppcore import session

from .. import charts
from ..result import Result
from ..state import limits

FORMATS = {"ppl": "{:.2f}", "ppl_increase": "{:+.2f}", "seconds": "{:.3f}", "time_vs_dense": "{:.3f}",
           "flops_ratio": "{:.3f}", "decoder_flops_ratio": "{:.3f}", "probe_flops_ratio": "{:.2%}",
           "decoder_probe_flops_ratio": "{:.2%}", "prr": "{:.2f}"}


def table(r: Result) -> pd.DataFrame:
    """One row per method and ratio (also the CSV export); empty before the comparison ran."""
    return pd.DataFrame([row.row() for row in r.comparison or []])


def render(r: Result, start_compare) -> None:
    st.caption("Perplexity on this batch, median wall time (interleaved, after warm-up), FLOPs relative to dense "
               "(flops_ratio over the whole model, LM head included; decoder_flops_ratio over the decoder layers "
               "only, as the paper counts them; the probe's share likewise), and the perplexity added per unit "
               "fraction of runtime saved (PRR: lower is better; empty when a method saved no time).")
    c1, c2, c3 = st.columns([1, 2, 1])
    sweep = c1.checkbox("Ratio sweep", key="cmp_sweep")
    ratios_text = c2.text_input("Ratios", "0.2, 0.4, 0.6", key="cmp_ratios", disabled=not sweep)
    reps = c3.number_input("Repeats", 1, min(10, limits().repeats), 2, key="cmp_reps")
    if st.button("Compare all methods", key="cmp_go"):
        start_compare(ratios_text if sweep else None, int(reps))
    if not r.comparison:
        st.info(f"Press **Compare all methods** to run {', '.join(session.METHODS)} at ratio {r.analysis.ratio:.2f} "
                "on this batch.")
        return
    df = table(r)
    st.dataframe(df.style.format(FORMATS, na_rep="—"), hide_index=True, width="stretch")
    st.plotly_chart(charts.compare_scatter(df), width="stretch", key="cmp_chart")
