"""The latency script's yardstick (bench/app_latency.py): the smallest Streamlit page with one Plotly chart.

How long a new browser session takes to draw it says how fast this machine's browser and Streamlit are today,
apart from anything the app does, so that app timings from different days can be compared: on 2026-12-01 it
took 1.75-1.9 s on the project's 2-core machine, on 2026-12-02 3.35-3.8 s.
"""
import plotly.graph_objects as go
import streamlit as st

st.set_page_config(page_title="yardstick", layout="wide")
st.header("Yardstick")
st.plotly_chart(go.Figure(go.Bar(x=[1, 2, 3], y=[3, 1, 2]), layout={"title": {"text": "yardstick chart"}}))
