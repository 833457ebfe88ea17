"""Open a saved run: the sidebar's file uploader (and, outside demo mode, a server path) for a run record, the
banner over a replayed result, and the note a view that needs the model shows in its place (docs/app.md, "Replay a
saved run").

Loading goes through `open_saved(data, name)`, called by the uploader's and the Open button's callbacks (they run
before the page is drawn, so the record's settings can fill the sidebar's widgets) and by tests with bytes. The
result is `app.result.replayed_result`: no model is loaded, and Run recomputes live with the record's settings.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from .. import messages
from ..result import Result, replayed_result
from ..state import FIELDS, demo, limits

UPLOAD_KEY, PATH_KEY, OPEN_KEY = "replay_file", "replay_path", "replay_open"
RUN_AGAIN = "press **Run** to recompute with these settings"


def needs_model(what: str) -> str:
    """The note shown instead of something that needs the model while the page shows a replay."""
    return (f"{what} needs the model: this page shows a saved run, replayed from its record without it. Load the "
            f"model: {RUN_AGAIN} (the sidebar holds the record's settings).")


def lacking(what: str) -> str:
    """The note for a view part a replayed record holds nothing for: what is missing and what to do."""
    return f"This saved run's record holds no {what}: {RUN_AGAIN} (the sidebar holds the record's settings)."


# --- loading ------------------------------------------------------------------------------------------------------

def _fill_sidebar(r: Result) -> None:
    """The record's settings into the sidebar's widgets and their store (app/inputs.py), before they are drawn."""
    store = st.session_state.setdefault("_store", {})
    for f in FIELDS:
        value = getattr(r.settings, f.name)
        store[f.name] = value
        st.session_state[f"s_{f.name}"] = value
    st.session_state["share_text"] = False  # a saved run's pasted text stays out of the link until ticked
    st.session_state["_linked_text"] = None


def open_saved(data: bytes, name: str) -> bool:
    """Replay the run record in `data` (a file called `name`): on success it becomes the page's result and its
    settings fill the sidebar; on failure one message is kept for the page and the previous result stays. Call it
    from a widget callback (or before the sidebar is drawn). Returns whether it opened."""
    try:
        res, problems = replayed_result(data, name)
    except Exception as e:  # noqa: BLE001 — any unreadable file is one message; the page stays usable
        st.session_state["_replay_error"] = messages.failure(e)
        return False
    st.session_state["result"], st.session_state["error"] = res, None
    st.session_state["_replay_error"] = None
    st.session_state["_auto_run_done"] = True  # a first page load does not run over the replay
    notes = list(problems)
    if res.settings.source == "upload":
        notes.append("This run was made with an uploaded file, which its record does not hold: to recompute it, "
                     "upload the file under **Batch** in the sidebar and press **Run**.")
    st.session_state["_replay_notes"] = notes
    _fill_sidebar(res)
    return True


def _uploaded() -> None:
    f = st.session_state.get(UPLOAD_KEY)
    if f is not None:
        open_saved(f.getvalue(), f.name)


def _open_path() -> None:
    """The Open button: read a record from a path on the server (never in demo mode), size checked first."""
    if demo():
        return
    raw = str(st.session_state.get(PATH_KEY) or "").strip()
    path = Path(raw).expanduser()
    try:
        if not raw or not path.is_file():
            raise FileNotFoundError(f"no file at {raw!r}: give the path of a run record (.json) on this server")
        size = path.stat().st_size
        if size > limits().record_bytes:
            raise ValueError(f"{path.name} is {size / 2**20:.1f} MB, over the {limits().record_mb} MB limit for "
                             "run records")
        data = path.read_bytes()
    except (OSError, ValueError) as e:
        st.session_state["_replay_error"] = messages.clean(f"Cannot open the saved run: {e}")
        return
    open_saved(data, path.name)


def opener() -> None:
    """The sidebar's "Open a saved run": a run record's upload (any mode, size-capped) and, outside demo mode, a
    path on the server."""
    lim = limits()
    r = st.session_state.get("result")
    with st.sidebar.expander("Open a saved run", expanded=r is not None and r.replayed is not None):
        f = st.file_uploader(f"Run record (.json, up to {lim.record_mb} MB)", type=["json"], key=UPLOAD_KEY,
                             max_upload_size=lim.record_mb, on_change=_uploaded,
                             help="A run record saved by the Export tab (or `python -m ppcore eval --record`): its "
                                  "views are drawn from the file, without the model")
        if f is not None and (r is None or r.replayed is None):  # a Run replaced it: the file is still here
            st.button("Replay this file again", key="replay_again", on_click=_uploaded)
        if not demo():
            st.text_input("Or a path on this server", key=PATH_KEY, placeholder="runs/run_pp.json")
            st.button("Open", key=OPEN_KEY, on_click=_open_path)


def messages_once() -> None:
    """The outcome of the last open: its one error, or the warnings about its settings (shown once)."""
    err = st.session_state.pop("_replay_error", None)
    if err:
        st.error(err)
    for note in st.session_state.pop("_replay_notes", None) or []:
        st.warning(messages.clean(note))


# --- the banner ---------------------------------------------------------------------------------------------------

def banner(r: Result) -> None:
    """Over a replayed result: what it is, and what it lacks."""
    rep = r.replayed
    if rep is None:
        return
    a = r.analysis
    # The record's own texts (file name, model name, date) are shown as they are: no markup of theirs takes effect.
    saved = f", saved {messages.literal(rep.saved.replace('T', ' ').replace('Z', ' UTC'))}" if rep.saved else ""
    name = f" (from {messages.literal(rep.name)})" if rep.name else ""
    text = messages.clean(f"Replay of a saved run{name}: **{a.cfg.method}** at ratio {a.ratio:.2f}, "
                          f"{messages.literal(a.info['name'])}{saved}. Views that need the model say so; {RUN_AGAIN}.")
    missing = rep.missing()
    if missing:
        text += "\n\nThis record holds no:\n" + "\n".join(f"- {m}" for m in missing)
    st.info(text, icon="📂")
