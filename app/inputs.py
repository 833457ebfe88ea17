"""The sidebar: model, batch and method settings. Widgets start from the URL and write back to it."""
from __future__ import annotations

import hashlib
from dataclasses import fields, replace
from typing import Optional

import streamlit as st

from ppcore import METHODS

from .batch import UPLOAD_TYPES, read_upload
from .state import (DEMO_CORPORA, DEVICE_CHOICES, DTYPE_CHOICES, SOURCES, SPLITS, URL_TEXT_CHARS, Settings, demo,
                    from_query, limits)

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


def _columns(file_id: Optional[str], upload: tuple[str, bytes]) -> list[str]:
    """The text columns of an uploaded .csv/.jsonl, read once per file (not on every rerun)."""
    cached = st.session_state.get("_upload_columns")
    if file_id is not None and cached and cached[0] == file_id:
        return cached[1]
    cols, _ = read_upload(*upload)
    st.session_state["_upload_columns"] = (file_id, cols)
    return cols


def sidebar() -> tuple[Settings, Optional[tuple[str, bytes]], bool]:
    """(settings, uploaded file or None, whether Run was pressed)."""
    _init_from_url()
    _restore()
    is_demo, lim = demo(), limits()
    sb = st.sidebar
    run = sb.button("Run", type="primary", width="stretch", key="run",
                    help="Prune the batch with these settings and refresh every view")
    upload: Optional[tuple[str, bytes]] = None
    with sb.expander("Model", expanded=False):
        st.text_input("Model", key="s_model", disabled=is_demo,
                      help="'default' (embedded SmolLM2-135M-Instruct), a hub id, a local checkpoint folder or a .gguf path")
        c1, c2 = st.columns(2)
        c1.selectbox("Device", DEVICE_CHOICES, key="s_device", disabled=is_demo,
                     help="map: a model too big for one device, spread by accelerate over the GPUs, the CPU "
                          "and disk (offloaded layers are loaded one at a time)")
        c2.selectbox("Dtype", DTYPE_CHOICES, key="s_dtype", disabled=is_demo)
        if is_demo:
            st.caption("Demo mode: the model, device and dtype are locked to the default; batches are capped.")
    with sb.expander("Batch", expanded=True):
        st.radio("Source", SOURCES, key="s_source", format_func=SOURCE_LABELS.get)
        source = st.session_state["s_source"]
        if source in ("paste", "upload"):
            st.radio("One sample per", SPLITS, key="s_split", horizontal=True,
                     help="paste or .txt: each non-empty line, or each paragraph separated by a blank line")
        if source == "paste":
            st.text_area("Text", key="s_text", height=140, placeholder="One sample per line",
                         max_chars=lim.text_chars if is_demo else None)
        elif source == "upload":
            f = st.file_uploader(f"File (.txt, .jsonl, .csv; up to {lim.upload_mb} MB)",
                                 type=[t.lstrip(".") for t in UPLOAD_TYPES], key="upload",
                                 max_upload_size=lim.upload_mb)
            if f is not None:
                upload = (f.name, f.getvalue())
                _remember_digest(getattr(f, "file_id", None), upload[1])
                if not f.name.lower().endswith(".txt"):
                    try:
                        cols = _columns(getattr(f, "file_id", None), upload)
                        if st.session_state.get("s_column") not in cols:
                            st.session_state["s_column"] = cols[0]
                        st.selectbox("Text column", cols, key="s_column")
                    except Exception:  # the run reports the exact problem; the picker just hides
                        pass
        elif source == "corpus":
            if is_demo:
                if st.session_state.get("s_corpus") not in DEMO_CORPORA:
                    st.session_state["s_corpus"] = DEMO_CORPORA[0]
                st.selectbox("Corpus", DEMO_CORPORA, key="s_corpus", help="embedded corpora only, eval split")
            else:
                st.text_input("Corpus", key="s_corpus", help="wiki-vital (embedded, eval split) or a path to a .txt file")
            st.number_input("Seed", step=1, key="s_seed")
        c1, c2 = st.columns(2)
        c1.number_input("Batch size", step=1, key="s_batch_size", help=f"samples, 1 to {lim.batch}")
        c2.number_input("Sequence length", step=8, key="s_seq_len",
                        help=f"tokens per sample, 2 to {lim.seq} (texts are truncated to it)")
    with sb.expander("Method", expanded=True):
        st.selectbox("Method", METHODS, key="s_method", help=METHOD_HELP)
        st.number_input("Pruning ratio", step=0.05, format="%.2f", key="s_ratio",
                        help="fraction of heads and MLP channels removed, averaged over all layers; in [0, 1)")
        c1, c2 = st.columns(2)
        c1.checkbox("Prune attention", key="s_attn")
        c2.checkbox("Prune MLP", key="s_mlp")
        st.text_input("Skipped layers", key="s_skip",
                      help="indices and ranges, e.g. 0-2 or 0,1,5 or 0-2,5; leave it empty to skip no layers")
    with sb.expander("Probe and calibration", expanded=False):
        c1, c2 = st.columns(2)
        c1.number_input("Probe token fraction", step=0.05, format="%.2f", key="s_token_frac")
        c2.number_input("Probe sample fraction", step=0.05, format="%.2f", key="s_sample_frac")
        st.number_input("EMA momentum", step=0.01, format="%.3f", key="s_ema", help="PP's history update")
        c1, c2 = st.columns(2)
        c1.number_input("Calibration windows", step=4, key="s_calib",
                        help="from wiki-vital's calibration split (never the eval text)")
        c2.number_input("Calibration length", step=16, key="s_calib_len")
        st.number_input("Calibration batch size", step=1, key="s_calib_batch_size",
                        help=f"windows per batch of the calibration pass, 1 to {lim.calib_batch} (default "
                             f"{Settings().calib_batch_size}, the official protocol's): FLAP's official bias "
                             "compensation divides by it")
    store = st.session_state["_store"]
    values = {f.name: st.session_state.get(f"s_{f.name}", store[f.name]) for f in fields(Settings)}
    store.update(values)
    s = replace(Settings(), **values).locked()
    query = s.to_query()
    if len(query.get("text", "")) > URL_TEXT_CHARS:  # a long paste stays out of the URL (browsers cap its length)
        del query["text"]
    if st.query_params.to_dict() != query:  # the URL always holds the current settings
        st.query_params.from_dict(query)
    sb.caption("Settings live in the URL: copy it to share this view"
               + (" (pasted text longer than 2000 characters is not in it)." if s.source == "paste"
                  and len(s.text) > URL_TEXT_CHARS else "."))
    return s, upload, run


def _remember_digest(file_id: Optional[str], data: bytes) -> None:
    """sha256 of an upload's bytes (part of the result key), computed once per uploaded file, not per rerun."""
    memo = st.session_state.setdefault("_upload_digest", {})
    if file_id is None or memo.get("file_id") != file_id:
        memo.update(file_id=file_id, digest=hashlib.sha256(data).hexdigest())


def upload_digest(upload: tuple[str, bytes]) -> str:
    memo = st.session_state.get("_upload_digest") or {}
    return memo.get("digest") or hashlib.sha256(upload[1]).hexdigest()
