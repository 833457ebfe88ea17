"""The sidebar: model, batch and method settings. Widgets start from the URL and write back to it.

The engine's settings (PruneConfig, CalibConfig) are drawn from their declarations (app/state.py FIELDS):
a flag is a checkbox, a setting with choices a select box, a number a number input, anything else a text
input, each with the setting's help text. SECTIONS only places them; one it does not name joins the last
section, so a setting added to the engine appears here without a change.
"""
from __future__ import annotations

import hashlib
from typing import Any, Optional

import streamlit as st

from ppcore import session

from .batch import UPLOAD_TYPES, read_upload
from .lecture import URL_PARAMS as LECTURE_PARAMS
from .state import (BY_NAME, DEMO_CORPORA, FIELDS, SOURCES, SPLITS, URL_TEXT_CHARS, VIEW_PARAMS, Settings, demo,
                    demo_changes, from_query, limits, link_notes)

SOURCE_LABELS = {"examples": "Example prompts", "paste": "Paste text", "upload": "Upload a file",
                 "corpus": "Windows from a corpus"}
LABELS = {"ratio": "Pruning ratio", "prune_attn": "Prune attention", "prune_mlp": "Prune MLP",
          "skip_layers": "Skipped layers", "token_frac": "Probe token fraction", "sample_frac": "Probe sample fraction",
          "ema": "EMA momentum", "use_history": "Use the history", "mlp_multiple": "MLP channel multiple",
          "flap_bias": "FLAP bias", "calib_windows": "Calibration windows", "calib_seq_len": "Calibration length",
          "calib_batch_size": "Calibration batch size", "calib_dataset": "Calibration dataset",
          "seq_len": "Sequence length", "score": "Unit score", "fusion": "Fusion", "probe_weight": "Fixed probe weight",
          "attn_ratio": "Attention ratio", "mlp_ratio": "MLP ratio"}
STEPS = {"ratio": 0.05, "ema": 0.01, "seq_len": 8, "calib_windows": 4, "calib_seq_len": 16}  # else 1 or 0.05
FORMATS = {"ema": "%.3f"}  # else "%.2f"
SECTIONS = (  # (expander, open at first, rows of settings): the engine's settings, in the order they are drawn
    ("Method", True, (("method",), ("ratio",), ("prune_attn",), ("prune_mlp",), ("skip_layers",))),
    ("Probe and calibration", False, (("token_frac", "sample_frac"), ("ema", "mlp_multiple"), ("use_history",),
                                      ("flap_bias",), ("calib_windows", "calib_seq_len"), ("calib_batch_size",),
                                      ("calib_dataset",))),
    ("Ablation settings", False, (("score",), ("fusion", "probe_weight"), ("attn_ratio", "mlp_ratio"))),
)
CORPORA = ("corpus", "calib_dataset")  # a server path in local mode; embedded corpora only in the demo


def _sections() -> list[tuple[str, bool, tuple[tuple[str, ...], ...]]]:
    """SECTIONS, with every engine setting it does not place appended to the last section."""
    placed = {n for _, _, rows in SECTIONS for row in rows for n in row}
    rest = tuple((f.name,) for f in FIELDS if f.group != "page" and f.name not in placed)
    return [*SECTIONS[:-1], (SECTIONS[-1][0], SECTIONS[-1][1], SECTIONS[-1][2] + rest)]


# A setting's widget keeps its value while hidden (the seed while the source is not a corpus, the pasted text
# while it is not a paste): Streamlit drops a hidden widget's state otherwise, and `_restore` alone cannot
# bring it back since Streamlit 1.67.
KEEP = "page"


def widget(where: Any, name: str, disabled: bool = False) -> None:
    """The widget of setting `name` (key s_<name>), with the setting's label, help and choices."""
    f = BY_NAME[name]
    s, key = f.setting, f"s_{name}"
    label = LABELS.get(name, name.replace("_", " ").capitalize())
    lo_hi = limits().ranges().get(name)
    help = s.help + (f" ({lo_hi[0]} to {lo_hi[1]})" if lo_hi else "")
    choices = DEMO_CORPORA if name in CORPORA and demo() else s.choices
    if choices is not None and st.session_state.get(key) not in choices:
        st.session_state[key] = choices[0]
    if s.kind is bool:
        where.checkbox(label, key=key, help=help, disabled=disabled, persist_state=KEEP)
    elif choices is not None:
        where.selectbox(label, choices, key=key, help=help, disabled=disabled, persist_state=KEEP)
    elif s.kind in (int, float):
        float_ = s.kind is float
        where.number_input(label, step=STEPS.get(name, 0.05 if float_ else 1), format=FORMATS.get(name, "%.2f")
                           if float_ else None, key=key, help=help, disabled=disabled, persist_state=KEEP)
    else:
        where.text_input(label, key=key, help=help, disabled=disabled, persist_state=KEEP)


OTHER_MODEL = "another model…"  # the model picker's entry for a hub id, a folder or a .gguf path


def _model_picker(disabled: bool = False) -> None:
    """The embedded models by name, or any other model typed in; the chosen model's licence under it.

    The setting itself stays `model` (key s_model): a named choice writes it, OTHER_MODEL shows its text input."""
    named = session.named_models()
    current = st.session_state.get("s_model", "default")
    if st.session_state.get("_model_for_choice") != current:  # the URL, or the text input, set another model
        st.session_state["s_model_choice"] = current if current in named else OTHER_MODEL
    st.selectbox("Model", [*named, OTHER_MODEL], key="s_model_choice", disabled=disabled,
                 format_func=lambda n: f"{n}: {named[n]}" if n in named else n,
                 help="A model shipped in PyPI wheels (converted once on first use, then cached), or another one")
    choice = st.session_state["s_model_choice"]
    if choice == OTHER_MODEL:
        widget(st, "model", disabled)  # starts on the current model: the settings stay runnable until edited
    else:
        st.session_state["s_model"] = choice
    st.session_state["_model_for_choice"] = st.session_state.get("s_model")
    terms = session.licence(st.session_state.get("s_model", ""))
    if terms is not None:
        line, path = terms
        st.caption(f"Licence: {line}")
        if path is not None:
            st.download_button("Licence terms (HTML)", path.read_bytes(), file_name=path.name, mime="text/html",
                               key="licence_terms", width="stretch", on_click="ignore")  # no rerun: a run goes on


def _row(names: tuple[str, ...], disabled: bool = False) -> None:
    """One line of the sidebar: one setting across, or several side by side."""
    for where, name in zip(st.columns(len(names)) if len(names) > 1 else [st], names):
        widget(where, name, disabled)


SHARE_TEXT = "Put this text in the link"  # the checkbox that lets pasted text into the URL (off until ticked)


def _init_from_url() -> None:
    """Once per session: seed every widget from st.query_params (a shared link restores the view). Demo mode's
    changes to the link's settings become warnings (`_url_problems`), and what the recipient must do that a link
    cannot (upload the sender's file, paste their text) notes (`_url_notes`). A link that carries pasted text
    was shared on purpose: its text stays in the URL until the recipient unticks SHARE_TEXT or edits it (their own
    text is theirs to share)."""
    if st.session_state.get("_url_loaded"):
        return
    params = st.query_params.to_dict()
    s, problems = from_query(params)
    locked = s.locked()
    st.session_state["_store"] = {f.name: getattr(locked, f.name) for f in FIELDS}
    st.session_state["_url_problems"] = problems + (demo_changes(s, locked) if demo() else [])
    st.session_state["_url_notes"] = link_notes(s, params)
    st.session_state["share_text"] = locked.source == "paste" and bool(locked.text)
    st.session_state["_linked_text"] = locked.text if st.session_state["share_text"] else None
    st.session_state["_url_loaded"] = True


def _restore() -> None:
    """Seed every setting's widget key from the store (the URL's values on a session's first run, the last
    values after): with KEEP, a widget hidden for a while (the pasted text while the source is 'examples')
    comes back with its value."""
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
        _model_picker(disabled=is_demo)
        _row(("device", "dtype"), disabled=is_demo)
        if is_demo:
            st.caption("Demo mode: the model, device and dtype are locked to the default; batches are capped.")
    with sb.expander("Batch", expanded=True):
        st.radio("Source", SOURCES, key="s_source", format_func=SOURCE_LABELS.get)
        source = st.session_state["s_source"]
        if source in ("paste", "upload"):
            st.radio("One sample per", SPLITS, key="s_split", horizontal=True, help=BY_NAME["split"].setting.help,
                     persist_state=KEEP)
        if source == "paste":
            st.text_area("Text", key="s_text", height=140, placeholder="One sample per line",
                         max_chars=lim.text_chars if is_demo else None, persist_state=KEEP)
            linked = st.session_state.get("_linked_text")
            if linked is not None and st.session_state.get("s_text") != linked:
                st.session_state["share_text"] = False  # the recipient edited the link's text: theirs, unshared
                st.session_state["_linked_text"] = None
            st.checkbox(SHARE_TEXT, key="share_text",
                        help="Off: the page's address (the link you copy to share this view) holds your settings "
                             f"but not your text. On: it holds the text too, up to {URL_TEXT_CHARS:,} characters.")
        elif source == "upload":
            upload = _upload(lim.upload_mb)
        elif source == "corpus":
            _row(("corpus",))
            _row(("seed",))
        _row(("batch_size", "seq_len"))
    for title, expanded, rows in _sections():
        with sb.expander(title, expanded=expanded):
            for names in rows:
                _row(names)
    store = st.session_state["_store"]
    values = {f.name: st.session_state.get(f"s_{f.name}", store[f.name]) for f in FIELDS}
    store.update(values)
    s = Settings(**values).locked()
    query = link_query(s, bool(st.session_state.get("share_text")))
    current = st.query_params.to_dict()
    # The open view's place (app/viewlink.py) and lecture mode's (app/views/lecture.py) stay beside the settings.
    query.update({k: v for k, v in current.items() if k in VIEW_PARAMS or k in LECTURE_PARAMS})
    if current != query:  # the URL always holds the current settings
        st.query_params.from_dict(query)
    sb.caption(link_caption(s, "text" in query))
    return s, upload, run


def link_query(s: Settings, share_text: bool) -> dict[str, str]:
    """The URL parameters of settings `s`: those that differ from the defaults, and the pasted text only when the
    source is paste, the user ticked SHARE_TEXT (`share_text`), and it fits in a URL (URL_TEXT_CHARS)."""
    query = s.to_query()
    if not (s.source == "paste" and share_text and len(s.text) <= URL_TEXT_CHARS):
        query.pop("text", None)
    return query


def link_caption(s: Settings, has_text: bool) -> str:
    """What the page's address holds, said under the sidebar."""
    out = "The page's address holds these settings: copy it to share this view."
    if s.source == "paste" and s.text:
        if has_text:
            out += " It holds your pasted text too."
        elif len(s.text) > URL_TEXT_CHARS:
            out += f" Your pasted text is not in it: it is over {URL_TEXT_CHARS:,} characters."
        else:
            out += f" Your pasted text is not in it (tick **{SHARE_TEXT}** to add it)."
    elif s.source == "upload":
        out += " A file cannot travel in a link: whoever opens it is asked to upload the file."
    return out


def _upload(upload_mb: int) -> Optional[tuple[str, bytes]]:
    """The file uploader, and the text-column picker of a .csv or .jsonl: (name, bytes), or None."""
    f = st.file_uploader(f"File (.txt, .jsonl, .csv; up to {upload_mb} MB)",
                         type=[t.lstrip(".") for t in UPLOAD_TYPES], key="upload", max_upload_size=upload_mb)
    if f is None:
        return None
    upload = (f.name, f.getvalue())
    _remember_digest(getattr(f, "file_id", None), upload[1])
    if not f.name.lower().endswith(".txt"):
        try:
            cols = _columns(getattr(f, "file_id", None), upload)
            if st.session_state.get("s_column") not in cols:
                st.session_state["s_column"] = cols[0]
            st.selectbox("Text column", cols, key="s_column", help=BY_NAME["column"].setting.help)
        except Exception:  # the run reports the exact problem; the picker just hides
            pass
    return upload


def _remember_digest(file_id: Optional[str], data: bytes) -> None:
    """sha256 of an upload's bytes (part of the result key), computed once per uploaded file, not per rerun."""
    memo = st.session_state.setdefault("_upload_digest", {})
    if file_id is None or memo.get("file_id") != file_id:
        memo.update(file_id=file_id, digest=hashlib.sha256(data).hexdigest())


def upload_digest(upload: tuple[str, bytes]) -> str:
    memo = st.session_state.get("_upload_digest") or {}
    return memo.get("digest") or hashlib.sha256(upload[1]).hexdigest()
