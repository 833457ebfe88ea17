"""Lecture mode: a guided walk through Probe Pruning's three stages, one step at a time, each step's plain words
beside its figure, in a font a projector can carry (issue 14 item 1; the steps: app/lecture.py).

Opened by the sidebar's "Lecture mode" toggle or a link (`?lecture=1&step=3&layer=16`). Everything it draws was
computed once by the server and is held in memory for every session (app/lecture_job.py), so Previous and Next
only redraw: the walk is a fragment, and a step reads the shared data and draws. While the server prepares a
lecture for the first time, every session that opens it sees the same progress bar.
"""
from __future__ import annotations

import html
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Optional, Union

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from ppcore import session
from ppcore.record import BlockRecord

from .. import charts, lecture_job, messages, probe_charts
from ..header import header_metrics
from ..model_strip import model_strip_html
from ..probe_charts import Spec
from ..lecture import (STEPS, URL_PARAMS, LectureData, first_pruned_unit, kept_strip, lecture_settings, pruned_layers,
                       sample_scores, step_number, step_text)
from ..state import MAX_SKIP_INDEX, Settings
from ..viewlink import _write as write_query
from . import compare, history, latency, unit_why
from .latency import cpu_note

ON, STEP, LAYER = "lecture_on", "lecture_step", "lecture_layer"  # session keys: the toggle, the step, the layer
READ, LINKED_LAYER, SETTINGS = "_lecture_url_read", "_lecture_link_layer", "_lecture_settings"
POLL_S = 1.0  # while the server prepares a lecture, each page looks at its progress this often
FIRST_WAIT_S = 1.5  # a lecture read back from disk is ready within this: the page waits instead of flashing a bar
WARM_DELAY_S = 1.5  # step 1 is painted within this of its content's arrival on 2 cores: Plotly is started after it
WARM_SENT = "_lecture_plotly_warm_sent"
TEXT_CSS = ("<style>.st-key-lecture_text p, .st-key-lecture_text li {font-size: 1.4rem !important; "
            "line-height: 1.5 !important} .st-key-lecture_warm {display: none}</style>")


def _read_url() -> None:
    """Once per session: lecture mode, its step and its layer from the link."""
    if st.session_state.get(READ):
        return
    q = st.query_params
    st.session_state[ON] = str(q.get("lecture", "")).strip().lower() in ("1", "true", "yes", "on")
    st.session_state[STEP] = step_number(q.get("step", "1"))
    problems = []
    if "step" in q and str(step_number(q.get("step"), 0)) != str(q.get("step")).strip():
        problems.append(f"URL parameter step={str(q.get('step'))[:20]!r} is not a step number (1 to {len(STEPS)}); "
                        "opening step 1")
    layer = str(q.get("layer", "")).strip()  # a bad one is reported by app/viewlink.py, which reads it too
    if layer.isascii() and layer.isdigit() and int(layer) <= MAX_SKIP_INDEX:
        st.session_state[LINKED_LAYER] = int(layer)
    st.session_state["_lecture_url_problems"] = problems
    st.session_state[READ] = True


def _switched() -> None:
    """The toggle moved: a lecture opened again starts from the sidebar's settings then."""
    st.session_state.pop(SETTINGS, None)


def toggle() -> bool:
    """The sidebar's "Lecture mode" toggle (call it before the other sidebar widgets: it sits on top); whether
    lecture mode is on. Off, the lecture's parameters leave the page's address."""
    _read_url()
    st.sidebar.toggle("Lecture mode", key=ON, on_change=_switched,
                      help="A guided walk through Probe Pruning's three stages on this batch, one step at a time, "
                           "for a projector. Everything it shows is computed once by the server and kept.")
    on = bool(st.session_state.get(ON))
    if not on:
        write_query({}, URL_PARAMS)
    return on


def render(s: Settings, run_clicked: bool) -> None:
    """Lecture mode in the page's main area: the lecture of the sidebar's settings as they were when it opened (or
    when Run was last pressed), prepared by the server once (a progress bar the first time), then the walk."""
    st.html(TEXT_CSS)
    for p in st.session_state.pop("_lecture_url_problems", []):
        st.warning(messages.clean(p))
    if run_clicked or SETTINGS not in st.session_state:
        st.session_state[SETTINGS] = s
    chosen: Settings = st.session_state[SETTINGS]
    if chosen != s:
        st.info("The sidebar settings differ from the lecture's: press **Run** to lecture on them.")
    ls, notes = lecture_settings(chosen)
    for n in notes:
        st.caption(messages.clean(n))
    job = lecture_job.job(ls.key(), ls)
    if job.error is None:  # after a failure only "Try again" starts it again (no loop of failing preparations)
        job.start()
    if job.data is None and job.error is None:
        job.wait(FIRST_WAIT_S)
    if job.error is not None:
        st.error(f"The lecture could not be prepared: {job.error}")
        st.button("Try again", key="lecture_retry", on_click=job.start)
        return
    if job.data is None:
        _waiting(job)
        return
    _walk(job.data)


@st.fragment(run_every=POLL_S)
def _waiting(job: lecture_job.LectureJob) -> None:
    """The shared preparation's progress, looked at every POLL_S seconds; the whole page redraws once it is done."""
    if job.data is not None or job.error is not None:
        st.rerun(scope="app")
    elapsed = job.elapsed
    took = f" ({_minutes(elapsed)} so far)" if elapsed is not None else ""
    st.progress(job.fraction, text=f"Preparing the lecture, once for this server and every session: {job.text}{took}")
    st.caption("It is kept on the server's disk afterwards. Before class, prepare it with "
               "`python -m app.lecture_prepare` (docs/app.md, Lecture mode), and the lecture opens at once.")


def _minutes(seconds: float) -> str:
    """'42 s', '3 min 05 s': how long a wait has lasted, as a person reads it."""
    s = int(seconds)
    return f"{s} s" if s < 60 else f"{s // 60} min {s % 60:02d} s"


def _go(delta: int) -> None:
    st.session_state[STEP] = min(max(int(st.session_state.get(STEP, 1)) + delta, 1), len(STEPS))


@st.fragment
def _walk(d: LectureData) -> None:
    """One step: the counter and Previous / Next, the model overview and a layer selector on the layer-specific
    steps, then the step's words beside its figure. A fragment: a click redraws this only."""
    k = st.session_state[STEP] = min(max(int(st.session_state.get(STEP, 1)), 1), len(STEPS))
    step = STEPS[k - 1]
    c0, c1, c2 = st.columns([1, 6, 1], vertical_alignment="center")
    c0.button("◀ Previous", key="lecture_prev", on_click=_go, args=(-1,), disabled=k == 1, width="stretch")
    c1.progress(k / len(STEPS), text=f"Step {k} of {len(STEPS)}")
    c2.button("Next ▶", key="lecture_next", on_click=_go, args=(1,), disabled=k == len(STEPS), width="stretch",
              type="primary")
    st.header(f"{k}. {step.title}")
    layer = _layer(d) if step.layered else None
    write_query({"lecture": "1", "step": str(k), **({"layer": str(layer)} if layer is not None else {})},
                () if layer is not None else ("layer",))
    if layer is not None:
        a = d.result.analysis
        st.html(model_strip_html(kept_strip(d.result), layer, f"Where in the model: {a.info['layers']} decoder "
                                 f"layers, layer {layer} outlined"))
    left, right = st.columns([2, 3], gap="large")
    text = left.container(key="lecture_text")
    text.markdown(step_text(step, d.result.analysis.cfg))
    with right:
        missing = d.missing(step)
        if missing:
            st.error(messages.clean("This step cannot be drawn: " + "; ".join(missing)))
            return
        try:
            DRAW[step.slug](d, -1 if layer is None else layer, text)
        except Exception as e:  # noqa: BLE001 — one step that cannot draw says so; Previous and Next still work
            st.error(f"This step could not be drawn: {messages.failure(e)}")
    _prebuild(d, k + 1, int(st.session_state.get(LAYER, d.layer)) if layer is None else layer)


def _layer(d: LectureData) -> int:
    """The layer selector of the layer-specific steps: the link's layer, else the middle pruned layer."""
    n = len(d.result.analysis.main.layers)
    if LAYER not in st.session_state:
        linked = st.session_state.pop(LINKED_LAYER, None)
        if linked is not None and linked >= n:
            st.warning(f"URL parameter layer={linked} is out of range: this model has {n} layers (0 to {n - 1}); "
                       f"the lecture opens on layer {d.layer}")
            linked = None
        st.session_state[LAYER] = d.layer if linked is None else linked
    elif not 0 <= int(st.session_state[LAYER]) < n:  # another lecture's model had more layers
        st.session_state[LAYER] = d.layer
    return int(st.slider("Layer", 0, n - 1, key=LAYER, persist_state="page",
                         help="The layer the stage figures show; the strip above outlines it."))


def _whole(d: LectureData, layer: int) -> bool:
    """Say so when `layer` runs whole (a skipped layer): nothing was probed, fused or scored there."""
    if layer in pruned_layers(d.result):
        return False
    first = (pruned_layers(d.result) or [0])[0]
    st.info(f"Layer {layer} runs whole: the first layers are skipped, as in the paper. Pick layer {first} or later.")
    return True


Figure = Union[go.Figure, Spec]  # a Plotly figure, or a Vega-Lite spec (the importance step: app/probe_charts.py)
Build = Callable[[LectureData, int], Optional[Figure]]


def _figure(d: LectureData, build: Build, layer: int = -1) -> Optional[Figure]:
    """`build(d, layer)`, made once per lecture and layer on this server (`d.figures`) and shared by every session:
    building a Plotly figure takes up to 0.4 s of a 2-core server, a redraw of the built one a few milliseconds.
    Waits for a build `_prebuild` started; raises what `build` raises (and keeps nothing then)."""
    key = (build.__name__, layer)
    made = d.figures.get(key)
    if made is None:
        made = Future()
        made.set_result(build(d, layer))
        d.figures[key] = made
    return made.result()


def _chart(d: LectureData, build: Build, layer: int = -1) -> None:
    """The figure `build` makes at `layer` (-1: one that no layer changes), built once (`_figure`), drawn."""
    fig = _figure(d, build, layer)
    if isinstance(fig, dict):
        probe_charts.draw(fig, f"lecture_{build.__name__}")
    elif fig is not None:
        st.plotly_chart(fig, width="stretch", key=f"lecture_{build.__name__}")


@st.cache_resource(show_spinner=False)
def _builder() -> ThreadPoolExecutor:
    """The server's one thread that builds lecture figures ahead (`_prebuild`): builders are plain functions of the
    shared data, with no Streamlit call."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="lecture-figures")


def _prebuild(d: LectureData, k: int, layer: int) -> None:
    """Start building step `k`'s figures at `layer` on the server's figure thread while the page shows the step
    before it, so that Next only draws; this run does not wait for them (a click meanwhile is not held up). Nothing
    where the step draws no figure (a layer run whole, a failed part): the step says why when shown."""
    if not 1 <= k <= len(STEPS) or d.missing(STEPS[k - 1]):
        return
    step = STEPS[k - 1]
    if step.layered and layer not in pruned_layers(d.result):
        return
    for build, layered in FIGURES[step.slug]:
        key = (build.__name__, layer if layered else -1)
        if key not in d.figures:
            d.figures[key] = _builder().submit(build, d, key[1])


# --- the steps' figures: (data, layer or -1, the text column for a sentence about this batch) ----------------------

def _model(d: LectureData, layer: int, text: DeltaGenerator) -> None:
    a = d.result.analysis
    info, (B, L) = a.info, tuple(a.batch.ids.shape)
    s = a.summary()
    # No layer selector and no Plotly on this first step: fewer components for a new page to load first. The batch
    # is an escaped HTML table: no data grid to load, and no Markdown (st.table would render a pasted text's links).
    st.html(model_strip_html(kept_strip(d.result), None, f"Where in the model: {info['layers']} decoder layers"))
    text.markdown(f"Here: **{info['name']}**, {info['layers']} layers of {info['heads']} attention heads and "
                  f"{info['intermediate']} MLP channels, pruned at ratio **{a.ratio:.2f}**: the batch runs on "
                  f"{s['decoder_flops_ratio']:.0%} of the decoder's FLOPs.")
    st.markdown(f"**The batch**: {messages.clean(a.batch.description)}, {B} samples of up to {L} tokens.")
    texts = [_cut("".join(a.batch.tokens[b][: a.batch.lengths[b]]).strip(), 160) for b in range(B)]
    st.html(batch_table(texts))
    _warm_plotly()


def _warm_plotly() -> None:
    """An empty Plotly chart and an empty Vega-Lite one in a hidden container, so that the browser loads and starts
    Plotly (4.7 MB of JavaScript, about 2 s of a 2-core machine's browser) and Vega-Lite (step 2's heat map) while
    the lecturer speaks over step 1, which draws neither, rather than when Next is pressed. The first time in a
    session it is sent WARM_DELAY_S after the step's visible content: sent with it, the browser often started
    Plotly before it had painted the step, and step 1 took 4.5 s to appear instead of 2-2.5 s. (A timed fragment
    rerun in place of the wait measured worse: 2.4-3.4 s.) A full rerun (a sidebar widget) stops the wait at once;
    a Next, a fragment rerun, which Streamlit does not let interrupt a running script, waits for the rest of it: at
    most WARM_DELAY_S, once per session."""
    if not st.session_state.get(WARM_SENT):
        wait, end = st.empty(), time.monotonic() + WARM_DELAY_S
        while time.monotonic() < end:
            time.sleep(0.1)
            wait.empty()  # a Streamlit call: where a full rerun asked for meanwhile stops this one
        st.session_state[WARM_SENT] = True
    with st.container(key="lecture_warm"):
        st.plotly_chart(go.Figure(), key="lecture_warm_chart")
        st.vega_lite_chart({"data": {"values": []}, "mark": "point"}, key="lecture_warm_vega")


def batch_table(texts: list[str]) -> str:
    """The batch as a plain HTML table (sample, text), each text escaped: shown as typed, never as Markdown or
    markup. Not a dataframe, so that a lecture's first page loads no data-grid code in the browser."""
    rows = "".join(f"<tr><td>{b}</td><td>{html.escape(t)}</td></tr>" for b, t in enumerate(texts))
    return ('<table class="pp-batch" style="width: 100%; border-collapse: collapse; font-size: 0.95rem">'
            "<thead><tr><th style='text-align: left'>sample</th><th style='text-align: left'>text</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def _attn_with_importance(d: LectureData, layer: int) -> Optional[BlockRecord]:
    """The layer's attention record when it holds an importance grid (else one note, and None); None too when the
    layer is not pruned (`_whole` said so)."""
    if _whole(d, layer):
        return None
    rec = d.result.analysis.main.layers[layer].attn
    if rec.importance is None:
        st.info("This record holds no importance grid.")
        return None
    return rec


# Builders: (data, layer) -> the figure, or None where the step draws none (it says why itself).

def _importance_figure(d: LectureData, layer: int) -> Optional[Spec]:
    a, rec = d.result.analysis, d.result.analysis.main.layers[layer].attn
    if rec.importance is None:
        return None
    fig = probe_charts.importance_heatmap(rec.importance, a.batch.labels, rec.probe_tokens, rec.probe_samples,
                                          f"Layer {layer}, attention: how loud each word is (log colour scale)",
                                          log=True)
    return fig if probe_charts.cells_drawn(fig) else None  # all pads: no empty chart (the step's text still says)


def _importance(d: LectureData, layer: int, text: DeltaGenerator) -> None:
    rec = _attn_with_importance(d, layer)
    if rec is None:
        return
    a = d.result.analysis
    _chart(d, _importance_figure, layer)
    words = ", ".join(repr(_token(a.batch.labels, t)) for t in rec.probe_tokens[:8])
    text.markdown(f"Here, at layer {layer}: the probe keeps **{len(rec.probe_tokens)} of {a.batch.ids.shape[1]}** "
                  f"positions, among them {words}{' …' if len(rec.probe_tokens) > 8 else ''}.")


def _samples_figure(d: LectureData, layer: int) -> Optional[go.Figure]:
    rec = d.result.analysis.main.layers[layer].attn
    if rec.importance is None:
        return None
    return charts.sample_bars(sample_scores(rec.importance, rec.probe_tokens), rec.probe_samples,
                              f"Layer {layer}: each sample's loudness at the probe's positions")


def _samples(d: LectureData, layer: int, text: DeltaGenerator) -> None:
    rec = _attn_with_importance(d, layer)
    if rec is None:
        return
    a = d.result.analysis
    B, L = tuple(a.batch.ids.shape)
    _chart(d, _samples_figure, layer)
    share = len(rec.probe_samples) * len(rec.probe_tokens) / max(sum(a.batch.lengths), 1)
    text.markdown(f"Here: **{len(rec.probe_samples)} of {B}** samples at **{len(rec.probe_tokens)} of {L}** "
                  f"positions: the probe is **{share:.1%}** of the batch's tokens.")


def _history_figure(d: LectureData, layer: int) -> Optional[go.Figure]:
    rec = d.result.analysis.main.layers[layer].attn
    return None if rec.energy_fused is None else history.stage2_figure(rec, layer, "attn")


def _history(d: LectureData, layer: int, text: DeltaGenerator) -> None:
    if _whole(d, layer):
        return
    rec = d.result.analysis.main.layers[layer].attn
    if rec.energy_fused is None:
        st.info("This record holds no stage-2 energies.")
        return
    _chart(d, _history_figure, layer)
    effect = session.history_effect(rec)
    if effect is None:
        text.markdown("Here the run fused no history: the probe decided alone.")
    elif effect.changed:
        text.markdown(f"Here, at layer {layer}, the history **kept** heads {effect.gained} that the probe alone "
                      f"would have pruned, and **pruned** {effect.lost}.")
    else:
        text.markdown(f"Here, at layer {layer}, the history agreed with the probe: it changed no head's fate.")


def _kept_map_figure(d: LectureData, layer: int) -> go.Figure:
    return charts.kept_map(session.kept_matrix(d.result.analysis.main, "attn"), "query head",
                           "Heads kept by pp, every layer")


def _scores_figure(d: LectureData, layer: int) -> Optional[go.Figure]:
    attn = d.result.analysis.main.layers[layer].attn
    if attn.scores is None:
        return None
    return charts.scores_chart(attn.scores, attn.kept, "head", f"Layer {layer}: PPsp score of each head")


def _kept(d: LectureData, layer: int, text: DeltaGenerator) -> None:
    a = d.result.analysis
    _chart(d, _kept_map_figure)
    if _whole(d, layer):
        return
    attn, mlp = a.main.layers[layer].attn, a.main.layers[layer].mlp
    if attn.scores is not None:
        _chart(d, _scores_figure, layer)
    text.markdown(f"Here, at layer {layer}: **{len(attn.kept)} of {attn.total}** heads and **{len(mlp.kept)} of "
                  f"{mlp.total}** MLP channels kept.")


def _why_figure(d: LectureData, layer: int) -> Optional[go.Figure]:
    r = d.result
    if first_pruned_unit(r, layer) is None:
        return None
    sets = session.kept_sets({"pp": r.analysis.main, **(r.baselines or {})}, layer, "attn")
    return charts.kept_sets_grid(sets, r.analysis.main.layers[layer].attn.total, "head",
                                 f"Layer {layer}: heads kept by each method")


def _why(d: LectureData, layer: int, text: DeltaGenerator) -> None:
    if _whole(d, layer):
        return
    r = d.result
    unit = first_pruned_unit(r, layer)
    if unit is None:
        st.info(f"PP pruned no head at layer {layer}: pick another layer.")
        return
    w = session.unit_why(r.analysis.main, dict(r.baselines or {}), layer, "attn", unit)
    text.markdown(unit_why.headline(w, "head"))
    _chart(d, _why_figure, layer)
    st.dataframe(unit_why.verdict_table(w), hide_index=True, width="stretch")


def _hurt_most(d: LectureData) -> tuple[Any, int]:
    """The change in loss, pruned − dense ((B, L-1) nats, 0 where not scored), and the sample it rose most on."""
    a = d.result.analysis
    diff = (a.nll_pruned - a.nll_dense) * a.nll_mask
    return diff, int(diff.sum(1).argmax())


def _outputs_figure(d: LectureData, layer: int) -> Optional[go.Figure]:
    a = d.result.analysis
    if a.nll_dense is None or a.nll_pruned is None or a.nll_mask is None:
        return None
    diff, b = _hurt_most(d)
    n = a.batch.lengths[b]
    return charts.diff_bars(a.batch.labels[b][1:n], [float(v) for v in diff[b, : n - 1]],
                            f"Sample {b} (hurt most): change in loss on each word, pruned − dense")


def _outputs(d: LectureData, layer: int, text: DeltaGenerator) -> None:
    a = d.result.analysis
    metrics = header_metrics(a.summary(), a.cfg.method)[:4]
    for col, m in zip(st.columns(4), metrics):
        col.metric(m.label, m.value, m.delta, delta_color="inverse" if m.delta else "normal", help=m.help)
    if a.nll_dense is None or a.nll_pruned is None or a.nll_mask is None:
        return
    diff, b = _hurt_most(d)
    n = a.batch.lengths[b]
    _chart(d, _outputs_figure)
    d_b = diff[b, : n - 1]
    worse, much = int((d_b > 0).sum()), int((d_b > 1).sum())
    text.markdown(f"Here: sample {b} is the one pruning hurt most: its loss rose on **{worse} of {n - 1}** words, by "
                  f"more than 1 nat (the word at least e = 2.7 times less likely) on **{much}**.")


def _timed_note(d: LectureData, part: str) -> None:
    """Under a timed figure: when and where it was measured, and what a CPU measurement can say."""
    st.caption(f"Measured on this server's machine: {d.when.get(part, 'just now')}.")
    lat = d.result.latency
    note = cpu_note(d.result.analysis.info["device"], lat.threads if lat is not None else None)
    if note:
        st.warning(note, icon="ℹ️")


def _pruned_nothing(df: pd.DataFrame) -> list[str]:
    """The methods of a comparison that pruned nothing (decoder FLOPs equal to dense's), said under its figure: with
    one calibration batch FLAP prunes nothing, and its perplexity is dense's, not a winner's."""
    rows = df[(df["method"] != "dense") & (df["decoder_flops_ratio"].astype(float) >= 0.999)]
    methods = sorted(set(rows["method"]))
    if methods:
        st.caption(f"{', '.join(methods)} pruned nothing with these settings (FLAP needs at least two calibration "
                   "batches): its perplexity is dense's.")
    return methods


def _at_ratio(d: LectureData) -> pd.DataFrame:
    """The comparison's rows at the lecture's ratio, and dense's."""
    df = compare.table(d.result)
    return df[np.isclose(df["ratio"].astype(float), d.result.analysis.ratio) | (df["method"] == "dense")]


def _compare_figure(d: LectureData, layer: int) -> go.Figure:
    return charts.compare_scatter(_at_ratio(d))


def _compare(d: LectureData, layer: int, text: DeltaGenerator) -> None:
    at = _at_ratio(d)
    st.dataframe(compare.shown_table(at[["method", "ratio", "ppl", "ppl_increase", "seconds", "time_vs_dense",
                                         "decoder_flops_ratio", "prr"]]), hide_index=True, width="stretch")
    _chart(d, _compare_figure)
    _pruned_nothing(at)
    _timed_note(d, "comparison")


def _sweep_figure(d: LectureData, layer: int) -> go.Figure:
    return charts.ratio_sweep(compare.table(d.result))


def _sweep(d: LectureData, layer: int, text: DeltaGenerator) -> None:
    df = compare.table(d.result)
    _chart(d, _sweep_figure)
    grid = df[df["method"] != "dense"].pivot_table(index="method", columns="ratio", values="ppl")
    st.dataframe(grid.map(lambda v: f"{v:.2f}").rename(columns=lambda c: f"ratio {c:.2f}"), width="stretch")
    idle = _pruned_nothing(df)
    top = max(d.sweep)
    ranked = grid.loc[[m for m in grid.index if m not in idle], top] if top in grid.columns else pd.Series()
    if len(ranked):
        text.markdown(f"Here, at ratio {top:.2f}, **{ranked.idxmin()}** keeps the lowest perplexity of the methods "
                      "that pruned.")
    _timed_note(d, "comparison")


def _latency_figure(d: LectureData, layer: int) -> Optional[go.Figure]:
    return None if d.result.latency is None else latency.per_layer_chart(d.result.latency)


def _latency(d: LectureData, layer: int, text: DeltaGenerator) -> None:
    lat = d.result.latency
    assert lat is not None  # `needs` guarantees it
    note = latency.latency_note(lat)
    if note:
        st.info(note, icon="⏱️")
    st.dataframe(latency.shown_summary(lat), hide_index=True, width="stretch")
    _chart(d, _latency_figure)
    _timed_note(d, "latency")


def _cut(text: str, n: int) -> str:
    """`text` up to `n` characters, cut at a word's end where one is near, with "…" where it was cut."""
    if len(text) <= n:
        return text
    head = text[:n]
    space = head.rfind(" ")
    return (head[:space] if space > n // 2 else head).rstrip() + "…"


def _token(tokens: list[list[str]], t: int) -> str:
    """The text at position t of the first sample that has one."""
    return next((row[t] for row in tokens if t < len(row) and row[t] != ""), "")


DRAW: dict[str, Callable[[LectureData, int, DeltaGenerator], None]] = {
    "model": _model, "importance": _importance, "samples": _samples, "history": _history, "kept": _kept,
    "why": _why, "outputs": _outputs, "compare": _compare, "sweep": _sweep, "latency": _latency}
assert set(DRAW) == {s.slug for s in STEPS}, "every lecture step needs its figure"
# Each step's Plotly figures, with whether the layer changes them: what `_prebuild` makes ahead of the step.
FIGURES: dict[str, tuple[tuple[Build, bool], ...]] = {
    "model": (), "importance": ((_importance_figure, True),), "samples": ((_samples_figure, True),),
    "history": ((_history_figure, True),), "kept": ((_kept_map_figure, False), (_scores_figure, True)),
    "why": ((_why_figure, True),), "outputs": ((_outputs_figure, False),), "compare": ((_compare_figure, False),),
    "sweep": ((_sweep_figure, False),), "latency": ((_latency_figure, False),)}
assert set(FIGURES) == set(DRAW), "every lecture step says which figures it draws"
