"""The sidebar: model, batch and method settings. Widgets start from the URL and write back to it."""
from __future__ import annotations

from dataclasses import fields, replace
from typing import Optional

import streamlit as st

from ppcore import METHODS

from .batch import read_upload
from .state import DEMO, MAX_BATCH, MAX_SEQ, SOURCES, SPLITS, Settings, from_query

SOURCE_LABELS = {"examples": "Example prompts", "paste": "Paste text", "upload": "Upload a file",
                 "corpus": "Windows from a corpus"}
METHOD_HELP = ("pp: Probe Pruning (per batch). fullbatch: the whole batch is the probe (oracle). "
               "wanda-sp, flap, ppsp-calib: static, decided once from calibration. dense: no pruning.")


def _init_from_url() -> None:
    """Once per session: seed every widget from st.query_params (a shared link restores the view)."""
    if st.session_state.get("_url_loaded"):
        return
    s, problems = from_query(st.query_params.to_dict())
    st.session_state["_store"] = {f.name: getattr(s.locked(), f.name) for f in fields(Settings)}
    st.session_state["_url_problems"] = problems
    st.session_state["_url_loaded"] = True


def _restore() -> None:
    """Streamlit drops the state of widgets that were not drawn in a run (e.g. the pasted text while
    the source is 'examples'); seed every key from the store so values survive being hidden."""
    for name, value in st.session_state["_store"].items():
        if f"s_{name}" not in st.session_state:
            st.session_state[f"s_{name}"] = value


def sidebar() -> tuple[Settings, Optional[tuple[str, bytes]], bool]:
    """(settings, uploaded file or None, whether Run was pressed)."""
    _init_from_url()
    _restore()
    sb = st.sidebar
    run = sb.button("Run", type="primary", width="stretch", key="run",
                    help="Prune the batch with these settings and refresh every view")
    upload: Optional[tuple[str, bytes]] = None
    with sb.expander("Model", expanded=False):
        st.text_input("Model", key="s_model", disabled=DEMO,
                      help="'default' (embedded SmolLM2-135M-Instruct), a hub id, a local checkpoint folder or a .gguf path")
        c1, c2 = st.columns(2)
        c1.selectbox("Device", ["auto", "cpu", "cuda"], key="s_device")
        c2.selectbox("Dtype", ["auto", "float32", "bfloat16", "float16"], key="s_dtype")
        if DEMO:
            st.caption("Demo mode: the model is locked to the default; batches are capped.")
    with sb.expander("Batch", expanded=True):
        st.radio("Source", SOURCES, key="s_source", format_func=SOURCE_LABELS.get)
        source = st.session_state["s_source"]
        if source in ("paste", "upload"):
            st.radio("One sample per", SPLITS, key="s_split", horizontal=True,
                     help="paste or .txt: each non-empty line, or each paragraph separated by a blank line")
        if source == "paste":
            st.text_area("Text", key="s_text", height=140, placeholder="One sample per line")
        elif source == "upload":
            f = st.file_uploader("File (.txt, .jsonl, .csv)", type=["txt", "jsonl", "csv"], key="upload")
            if f is not None:
                upload = (f.name, f.getvalue())
                if not f.name.lower().endswith(".txt"):
                    try:
                        cols, _ = read_upload(*upload)
                        if st.session_state.get("s_column") not in cols:
                            st.session_state["s_column"] = cols[0]
                        st.selectbox("Text column", cols, key="s_column")
                    except Exception:  # the run reports the exact problem; the picker just hides
                        pass
        elif source == "corpus":
            st.text_input("Corpus", key="s_corpus", help="wiki-vital (embedded, eval split) or a path to a .txt file")
            st.number_input("Seed", step=1, key="s_seed")
        c1, c2 = st.columns(2)
        c1.number_input("Batch size", step=1, key="s_batch_size", help=f"samples, 1 to {MAX_BATCH}")
        c2.number_input("Sequence length", step=8, key="s_seq_len",
                        help=f"tokens per sample, 2 to {MAX_SEQ} (texts are truncated to it)")
    with sb.expander("Method", expanded=True):
        st.selectbox("Method", METHODS, key="s_method", help=METHOD_HELP)
        st.number_input("Pruning ratio", step=0.05, format="%.2f", key="s_ratio",
                        help="fraction of heads and MLP channels removed, averaged over all layers; in [0, 1)")
        c1, c2 = st.columns(2)
        c1.checkbox("Prune attention", key="s_attn")
        c2.checkbox("Prune MLP", key="s_mlp")
        st.text_input("Skipped layers", key="s_skip", help="indices and ranges, e.g. 0-2 or 0,1,5; empty for none")
    with sb.expander("Probe and calibration", expanded=False):
        c1, c2 = st.columns(2)
        c1.number_input("Probe token fraction", step=0.05, format="%.2f", key="s_token_frac")
        c2.number_input("Probe sample fraction", step=0.05, format="%.2f", key="s_sample_frac")
        st.number_input("EMA momentum", step=0.01, format="%.3f", key="s_ema", help="PP's history update")
        c1, c2 = st.columns(2)
        c1.number_input("Calibration windows", step=4, key="s_calib",
                        help="from wiki-vital's calibration split (never the eval text)")
        c2.number_input("Calibration length", step=16, key="s_calib_len")
    store = st.session_state["_store"]
    values = {f.name: st.session_state.get(f"s_{f.name}", store[f.name]) for f in fields(Settings)}
    store.update(values)
    s = replace(Settings(), **values).locked()
    if st.query_params.to_dict() != s.to_query():  # the URL always holds the current settings
        st.query_params.from_dict(s.to_query())
    sb.caption("Settings live in the URL: copy it to share this view.")
    return s, upload, run
