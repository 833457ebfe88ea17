"""Probe Pruning Lab (placeholder page until the app issue lands): loads the default model and
shows its configuration. A thin layer over ppcore's public API."""
from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ppcore import PPCoreError, load_model  # noqa: E402


@st.cache_resource(show_spinner="Loading the model (the first start converts the GGUF once, ~20 s)...")
def _model(name: str, device: str, dtype: str):
    return load_model(name, device=device, dtype=dtype)


st.set_page_config(page_title="Probe Pruning Lab", layout="wide")
st.title("Probe Pruning Lab")
st.caption("Engine: ppcore. The interactive views (probe, pruned channels, outputs, latency) come with the app issue.")
name = st.text_input("Model", value="default", help="'default', a hub id, a checkpoint folder or a .gguf path")
col1, col2 = st.columns(2)
device = col1.selectbox("Device", ["auto", "cpu", "cuda"])
dtype = col2.selectbox("Dtype", ["auto", "float32", "bfloat16", "float16"])
try:
    lm = _model(name, device, dtype)
except PPCoreError as e:
    st.error(str(e))
    st.stop()
st.subheader("Model configuration")
st.json(lm.info())
