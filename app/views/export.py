"""Export: the run record (JSON, the documented schema) and the tables (CSV)."""
from __future__ import annotations

import json

import streamlit as st

from ..result import Result
from . import channels, compare, latency, outputs


def record_json(r: Result) -> str:
    """The bytes of the "Run record (JSON)" download: the record the sidebar's "Open a saved run" replays."""
    return json.dumps(r.run_record().to_dict())


def render(r: Result) -> None:
    st.caption("The run record follows the schema in docs/run-record.md: the chosen method's batch at full "
               "detail, then dense and the baselines, with the per-token numbers the views draw. Open it again "
               "under **Open a saved run** in the sidebar to replay it without the model; "
               "ppcore.RunRecord.load() reads it back. Every chart can also be saved as a PNG from its toolbar "
               "(Plotly's camera icon; on the Probe tab, \"Download as PNG\").")
    # Each file is made when its button is clicked, not on every rerun of this tab (the record is several MB).
    st.download_button("Run record (JSON)", lambda: record_json(r),
                       file_name=f"run_{r.analysis.cfg.method}_{r.key}.json", mime="application/json", key="dl_record")
    tables = {"layers": channels.layer_table(r)}
    tokens = outputs.token_table(r)
    if not tokens.empty:
        tables["tokens"] = tokens
    if r.latency is not None:
        tables["latency"] = latency.layer_times(r.latency)
        tables["latency summary"] = latency.summary_table(r.latency)
    if r.comparison:
        tables["methods"] = compare.table(r)
    for name, df in tables.items():
        slug = name.replace(" ", "_")
        st.download_button(f"{name} table (CSV)", lambda df=df: df.to_csv(index=False),
                           file_name=f"{slug}_{r.key}.csv", mime="text/csv", key=f"dl_{slug}")
