"""Method comparison: every method on the same batch at the same ratio (or a ratio sweep)."""
from __future__ import annotations

from typing import Optional

import pandas as pd
import streamlit as st

from ppcore import session

from .. import charts
from ..header import FORMATS, NA, speed_note, text_table
from ..glossary import explain
from ..result import Result
from ..state import limits
from .controls import reused_line
from .latency import cpu_note

# The table as the page shows it: every figure written as the header writes it, NA where there is none.
TABLE_FORMATS = {name: FORMATS[name] for name in ("ratio", "ppl", "ppl_increase", "seconds", "time_vs_dense",
                                                  "flops_ratio", "decoder_flops_ratio", "probe_flops_ratio",
                                                  "decoder_probe_flops_ratio", "prr")}


def table(r: Result) -> pd.DataFrame:
    """One row per method and ratio (also the CSV export); empty before the comparison ran."""
    return pd.DataFrame([row.row() for row in r.comparison or []])


def shown_table(df: pd.DataFrame) -> pd.DataFrame:
    """`table`'s rows as the page shows them: text, formatted like the header, with NA for a missing figure."""
    return text_table(df, TABLE_FORMATS)


def speed_notes(rows: list[session.CompareRow], method: str, device: str, batch: tuple[int, int]) -> list[str]:
    """The Latency view's sentence for `method` (pp when the analysed method is dense): in full at the first ratio
    compared, one line for each further ratio of a sweep. Empty when the comparison has no such rows."""
    dense = next((c.timing for c in rows if c.timing.method == "dense"), None)
    name = method if method != "dense" else "pp"
    runs = [c.timing for c in rows if c.timing.method == name]
    if dense is None or not runs:
        return []
    return [speed_note(dense, t, device, batch, short=k > 0,
                       largest=(limits().batch, limits().seq)) for k, t in enumerate(runs)]


def render(r: Result, start_compare) -> None:
    st.caption("Perplexity on this batch, median wall time (interleaved, after warm-up), FLOPs relative to dense "
               "(flops_ratio over the whole model, LM head included; decoder_flops_ratio over the decoder layers "
               "only, as the paper counts them; the probe's share likewise), and the perplexity added per unit "
               f"fraction of runtime saved (PRR: lower is better; {NA} for dense and for a method that saved no "
               "time, or under 3 %, within the timings' noise).",
               help=explain("perplexity", "FLOPs", "PRR", "oracle", "Wanda-sp", "FLAP", "ppsp-calib"))
    c1, c2, c3 = st.columns([1, 2, 1])
    sweep = c1.checkbox("Ratio sweep", key="cmp_sweep")
    ratios_text = c2.text_input("Ratios", "0.2, 0.4, 0.6", key="cmp_ratios", disabled=not sweep)
    reps = c3.number_input("Repeats", 1, min(10, limits().repeats), 2, key="cmp_reps")
    if st.button("Compare all methods", key="cmp_go"):
        start_compare(ratios_text if sweep else None, int(reps))
    if not r.comparison:
        names = ", ".join(dict.fromkeys((*session.COMPARED_METHODS, r.analysis.cfg.method)))
        st.info(f"Press **Compare all methods** to run {names} at ratio {r.analysis.ratio:.2f} on this batch.")
        return
    reused_line(r.reused.get("comparison"), "cmp_again",
                lambda: start_compare(ratios_text if sweep else None, int(reps), fresh=True))
    a = r.analysis
    device = a.info["device"]
    notes = speed_notes(r.comparison, a.cfg.method, device, tuple(a.batch.ids.shape))
    if notes:
        st.info("\n\n".join(notes), icon="⏱️")
    threads: Optional[int] = r.latency.threads if r.latency is not None else None
    caveat = cpu_note(device, threads)
    if caveat:
        st.warning(caveat, icon="ℹ️")
    df = table(r)
    st.dataframe(shown_table(df), hide_index=True, width="stretch")
    st.plotly_chart(charts.compare_scatter(df), width="stretch", key="cmp_chart")
    if df["ratio"][df["method"] != "dense"].nunique() > 1:  # a sweep: perplexity against the ratio, per method
        st.plotly_chart(charts.ratio_sweep(df), width="stretch", key="cmp_sweep_chart")
