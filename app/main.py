"""Probe Pruning Lab: the page layout and the run loop. A thin layer over ppcore.session and its run record.

The page opens on the embedded default model and the example prompts and runs them once; after that
only the Run button recomputes. Results live in this session's st.session_state, so moving a
layer slider or switching tabs redraws from the stored record without touching the model.
"""
from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import asdict
from typing import Any, Callable, Optional

import streamlit as st

from app import background, engine, inputs, lecture_job, messages, stored, viewlink
from app.batch import build_batch, check_settings, left_out_note
from app.glossary import GLOSSARY
from app.header import header_metrics
from app.views import lecture as lecture_view
from app.result import Pending, Result
from app.state import Settings, calib_config, demo, limits, prune_config
from app.views import (TABS, ablation, channels, compare, export, history, latency, outputs, probe, replay,
                       side_by_side, unit_why, zeroshot)
from ppcore import LoadedModel, PPCoreError, session
from ppcore.config import CalibConfig
from ppcore.session import Progress


st.set_page_config(page_title="Probe Pruning Lab", layout="wide")


def _model_and_calib(s: Settings) -> tuple[LoadedModel, session.Calibration]:
    """The cached model and calibration for these settings. The demo keeps only its default calibration
    on disk (app/engine.py)."""
    return engine.for_settings(s)


def _stop_pressed() -> None:
    """The Stop button's callback: it runs first thing in the rerun the press starts, while Streamlit stops
    the old run at its next Streamlit call (the per-layer progress update)."""
    notes = st.session_state.get("_notes", {})
    if notes.get("running") or notes.get("stopped"):  # the old run may have noted its stop already
        notes.update(running=False, stopped=notes.get("stopped") or notes.get("step") or "starting", by="stop")


def run_analysis(s: Settings, upload: Optional[tuple[str, bytes]], key: str) -> None:
    """One run. The previous result stays until this one succeeds; a failure leaves one message, and a
    Stop press (or any other widget use, which makes Streamlit stop the run) leaves a note."""
    notes = st.session_state.setdefault("_notes", {})  # a plain dict: written without Streamlit calls
    t_start = time.perf_counter()
    run_id = notes["run"] = notes.get("run", 0) + 1
    notes.update(running=True, step="checking the settings")
    notes.pop("stopped", None)

    def step(v: float, text: str) -> None:  # every call is a Streamlit call: a point where Stop lands
        notes["step"] = text
        bar.progress(min(max(v, 0.0), 1.0), text=messages.clean(text))

    def preparing(v: float, text: str) -> None:  # an embedded model's first use: joined and converted once
        status.update(label="Preparing the model for its first use: this happens once and takes up to two minutes")
        step(0.05, text)

    doing = ("Running the batch through the unpruned (dense) model…" if s.method == "dense" else
             f"Pruning the batch with {s.method} at ratio {s.ratio:.2f}, and running the unpruned model on it "
             "for comparison…")
    with st.status(messages.clean(doing), expanded=True) as status:
        st.button("Stop this run", key="stop_run", icon=":material/stop_circle:", on_click=_stop_pressed,
                  help="Stop this run: the previous result stays on the page")
        bar = st.progress(0.0, text="checking the settings")
        try:
            cfg = prune_config(s)  # cheap checks first: a bad ratio fails before any model work
            calib_cfg = calib_config(s)
            check_settings(s)
            step(0.05, f"loading the model {s.model!r} (quick after its first load)")
            session.prepare(s.model, preparing)  # a first load's joining and conversion, shown in the bar
            lm = engine.get_model(s.model, s.device, s.dtype)
            cfg.check_layers(lm.adapter.dims.num_layers)
            batch = build_batch(lm.tokenizer, lm.adapter.dims.vocab, s, upload, lm.bos_id)
            step(0.1, f"measuring the calibration statistics on {session.calibration_text(calib_cfg)} (kept for "
                      "later runs)")
            _, calib = _model_and_calib(s)
            # The same settings on the same batch were maybe analysed already, by any session: then the server's
            # disk gives the result back (app/stored.py).
            akey = session.analysis_key(lm, calib, cfg, batch, ratio=s.ratio, seed=s.seed, settings=asdict(s))
            analysis, hit = stored.remembered(akey, lambda: session.analyse(
                lm, calib, cfg, batch, ratio=s.ratio, seed=s.seed, settings=asdict(s), progress=step),
                stored.writable(s))
            analysis.batch = batch  # the same token ids (the key holds them); the texts as this page built them
            analysis.protocol = messages.scrub(analysis.protocol)
            res = Result(key, s, analysis)
        except Exception as e:  # noqa: BLE001 — every failure becomes one message; the page stays usable
            notes["running"] = False
            st.session_state["error"], st.session_state["error_key"] = messages.failure(e), key
            status.update(label="The run failed (see the message above the views)", state="error", expanded=False)
            return
        except BaseException:  # Streamlit stopping the run (Stop, or a widget used mid-run): note it, let it pass
            if notes.get("run") == run_id and notes.get("running"):  # not noted yet, and no newer run
                notes.update(running=False, stopped=notes.get("step") or "starting", by="page")
            messages.release_memory()
            raise
        notes["running"] = False
        if st.session_state.get("result") is not None:
            release_all(st.session_state["result"])  # its background computations: nobody here waits for them now
        st.session_state["result"], st.session_state["error"] = res, None
        done = messages.done_text(cfg.method, cfg.ratio, tuple(batch.ids.shape), batch.mask is not None,
                                  sum(analysis.seconds.values()), stored.reused_note(hit) if hit else None,
                                  total=time.perf_counter() - t_start)
        status.update(label=messages.clean(done), state="complete", expanded=False)
    note = left_out_note(batch)
    if note:
        st.info(messages.clean(note), icon="✂️")


def _on_request(r: Result, name: str, label: str, fn: Callable[[Any, session.Calibration, Progress], Any],
                params: Callable[[], dict[str, Any]] = dict, entry: Optional[str] = None, fresh: bool = False,
                in_background: bool = False, exclusive: bool = False) -> None:
    """Run an on-request computation for the current result with the cached model, and keep it in the result's
    field `name` (under `entry` of that field's dict, when given: one ablation of several). A result this server
    already computed for the same model, calibration, batch, settings and `params` comes from its disk
    (app/stored.py) unless `fresh` asks for a new one; the status line then says when it was computed. `params()`
    gives what the computation depends on besides those (read inside, so a bad input becomes the one message).
    With `in_background`, a computation not stored yet is queued on the server's worker (app/background.py) and the
    page goes on: `_pending_panel` shows its progress and `_collect` keeps its value once done. `exclusive` (a timed
    measurement) waits until no background computation runs, so that what it stores was measured alone."""
    failure = None
    computing = kept = False
    with st.status(f"{label}…", expanded=not in_background) as status:
        bar = st.progress(0.0, text="starting")
        t0 = time.perf_counter()
        try:
            lm, calib = _model_and_calib(r.settings)
            key = session.result_key_of(name, lm, calib, r.analysis, **params(), entry=entry)
            hit = None if fresh else stored.lookup(key)
            write = stored.writable(r.settings, on_request=True)
            if hit is None and in_background:
                _submit(r, Pending(key, name, entry, label), lambda progress: fn(lm, calib, progress),
                        stored.keeper(key, write), fresh)
                st.rerun()  # from the top: the progress panel shows above the views
            if hit is None:
                if exclusive and background_busy():
                    bar.progress(0.0, text="waiting for the server's background computation to finish, so that this "
                                           "measurement runs alone")
                computing = True
                with background.COMPUTE_LOCK if exclusive else contextlib.nullcontext():
                    value, _ = stored.remembered(
                        key, lambda: fn(lm, calib, lambda v, t: bar.progress(min(max(v, 0.0), 1.0),
                                                                             text=messages.clean(t))),
                        write, fresh=True)
            _keep(r, name, entry, hit.value if hit is not None else value, hit)
            kept = True
            done = f"reused ({stored.reused_note(hit)})" if hit is not None else \
                f"done in {time.perf_counter() - t0:.1f} s"
            status.update(label=f"{label}: {done}", state="complete", expanded=False)
        except Exception as e:  # noqa: BLE001
            failure = messages.failure(e)
            status.update(label=f"{label}: failed (the message is below)", state="error", expanded=False)
        except BaseException:
            # Streamlit stopping this page's run mid-computation (another view or a setting chosen, or Stop): say so
            # on the next page (`_collect`), where the view would otherwise show its button as if never pressed.
            if computing and not kept:
                st.session_state.setdefault("_job_notes", []).append(messages.clean(
                    f"{label}: stopped before it finished, because the page changed or was stopped while it ran, so "
                    "nothing was kept. Press its button again and stay on that view until it finishes."))
            raise
    if failure is not None:  # below the collapsed box, not inside it, where nobody would see it
        st.error(failure)


def page_id() -> str:
    """This browser session's id: who waits for a background computation (app/background.py)."""
    return st.session_state.setdefault("_page_id", uuid.uuid4().hex)


def background_busy() -> bool:
    """Whether a background computation (a tab's or the lecture's preparation) runs now."""
    return background.COMPUTE_LOCK.locked()


def _submit(r: Result, p: Pending, fn: Callable[[Progress], Any], keep: Callable[[Any, float], None],
            fresh: bool) -> None:
    """Queue `fn` for `r`'s slot `p` on the server's worker, replacing what the slot waited for. Raises PPCoreError
    past MAX_PER_PAGE computations at once for this page."""
    jobs, slot = engine.get_jobs(), p.entry or p.name
    old = r.pending.get(slot)
    if old is None and len(r.pending) >= background.MAX_PER_PAGE:
        raise PPCoreError(f"this page already waits for {len(r.pending)} computations: wait for one to finish, or "
                          "cancel one at the top of the page")
    if old is not None and old.key != p.key:
        jobs.release(old.key, page_id())
    jobs.submit(p.key, p.label, fn, keep, fresh, requester=page_id())
    r.pending[slot] = p


def release_all(r: Result) -> None:
    """This page no longer waits for `r`'s background computations (a new result replaces it)."""
    for p in r.pending.values():
        engine.get_jobs().release(p.key, page_id())
    r.pending.clear()


def _keep(r: Result, name: str, entry: Optional[str], value: Any, hit: Optional[session.Stored]) -> None:
    """Keep an on-request value in the result (under `entry` of the field's dict when given), with when it was
    computed when the server's disk gave it (`hit`)."""
    r.keep(name, value if entry is None else {**(getattr(r, name) or {}), entry: value})
    r.reused[entry or name] = stored.reused_note(hit) if hit is not None else None
    r.pending.pop(entry or name, None)


def _collect(r: Result) -> None:
    """Keep the values of this result's background computations that finished; one message for each that failed."""
    for note in st.session_state.pop("_job_notes", []):
        st.info(note)
    jobs = engine.get_jobs()
    for slot, p in list(r.pending.items()):
        job = jobs.get(p.key)
        if job is None:  # forgotten by the server (many newer jobs): maybe on disk, else to be asked again
            hit = stored.lookup(p.key)
            if hit is not None:
                _keep(r, p.name, p.entry, hit.value, hit)
            else:
                r.pending.pop(slot)
                st.warning(f"{p.label}: the result is no longer on the server; press its button again.")
        elif job.done.is_set():
            if job.error is None:
                _keep(r, p.name, p.entry, job.value, None)
            else:
                r.pending.pop(slot)
                if isinstance(job.error, background.Cancelled):
                    st.info(f"{p.label}: cancelled.")
                else:
                    st.error(messages.failure(job.error) if isinstance(job.error, Exception) else
                             f"{p.label}: stopped ({type(job.error).__name__})")


@st.fragment(run_every=1.0)
def _pending_panel(r: Result) -> None:
    """Progress of this result's background computations, redrawn every second while the person browses; the
    whole page reruns once one finished, so its view shows the result."""
    jobs = engine.get_jobs()
    if any(j is None or j.done.is_set() for j in (jobs.get(p.key) for p in r.pending.values())):
        st.rerun(scope="app")
    queue = [j.key for j in jobs.running()]
    for slot, p in list(r.pending.items()):
        job = jobs.get(p.key)
        if job is None:  # forgotten meanwhile: the rerun above picks it up next time
            continue
        place = queue.index(p.key) if p.key in queue else 0
        text = job.text if place == 0 else f"queued behind {place} other computation{'s' * (place > 1)}"
        c1, c2 = st.columns([5, 1])
        c1.progress(job.fraction, text=messages.clean(f"{p.label}: {text}"))
        if c2.button("Cancel", key=f"cancel_{slot}", help="This page stops waiting for it; the server stops it at its "
                     "next step unless another page waits for the same result"):
            jobs.release(p.key, page_id())
            r.pending.pop(slot, None)
            st.session_state.setdefault("_job_notes", []).append(f"{p.label}: cancelled.")
            st.rerun(scope="app")
    st.caption("These run on the server while you browse; what you do meanwhile shares its CPU, so the times they "
               "measure are slower than on an idle machine.")


def parse_ratios(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise PPCoreError(f"ratios {text!r}: give numbers separated by commas, e.g. 0.2, 0.4") from None
    if not vals or len(vals) > limits().ratios:
        raise PPCoreError(f"give one to {limits().ratios} ratios")
    return vals


def sweep_ratios(text: Optional[str], a: session.Analysis) -> list[float]:
    """The comparison's ratios: the sweep's (`text`), or the analysis's ratio; every config they make is checked
    here, before the comparison is queued (a newcomer's 1.5 failed only after minutes of the ratios before it).
    Raises PPCoreError (a ConfigError naming the ratio and what to use)."""
    vals = parse_ratios(text) if text else [a.ratio]
    session.comparison_configs(a, vals, a.info["layers"])
    return vals


def main() -> None:
    if demo():  # an unexpected exception shows no traceback (and so no server path) to a visitor
        st.set_option("client.showErrorDetails", "none")
    st.title("Probe Pruning Lab")
    st.caption("Watch Probe Pruning decide, batch by batch, which attention heads and MLP channels of a language "
               "model to drop, and what that costs. Pick a model, a batch and a method in the sidebar, press "
               "**Run**, then explore the tabs."
               + (" **Demo mode**: the default model, small batches." if demo() else ""))
    viewlink.read_once()  # the link's tab, layer and block, before the sidebar rewrites the address
    lecturing = lecture_view.toggle()  # on top of the sidebar
    s, upload, run_clicked = inputs.sidebar()
    replay.opener()
    with st.sidebar.expander("Glossary: every term in plain words"):
        st.markdown("\n\n".join(f"**{term}**: {text}" for term, text in GLOSSARY.items()))
    for p in st.session_state.pop("_url_problems", []) + viewlink.problems_once():
        st.warning(messages.clean(p))
    if lecturing:  # lecture mode: the server's shared lecture in place of this session's run and tabs
        lecture_view.render(s, run_clicked)
        return
    replay.messages_once()
    if (s.source == "upload" and upload is None) or (s.source == "paste" and not s.text.strip()):
        for n in st.session_state.get("_url_notes", []):  # a link's file or text the recipient must supply
            st.info(messages.clean(n), icon="📎")
    key = s.key(inputs.upload_digest(upload) if upload else "")
    notes = st.session_state.setdefault("_notes", {})
    if notes.get("running") and not run_clicked:
        # A page run that starts while a run is marked running: a widget (a tab, a layer) was used mid-run and
        # Streamlit is stopping that run, whose own note can come after this page has drawn. Note it here.
        notes.update(running=False, stopped=notes.get("step") or "starting", by="page")
    if run_clicked or not st.session_state.get("_auto_run_done"):
        st.session_state["_auto_run_done"] = True  # the page opens on a result, once; then Run decides
        if run_clicked or not (s.source == "upload" and upload is None):  # a link to an upload waits for the file
            run_analysis(s, upload, key)
    elif notes.get("stopped"):
        why = " because the page changed while it ran" if notes.get("by") == "page" else ""
        st.warning(messages.clean(f"Run stopped{why} (at: {notes.pop('stopped')}). "
                                  + ("The previous result is kept. " if st.session_state.get("result") else "")
                                  + "Press **Run** to start again."))
    # The last Run's failure, while the settings (and file) it failed on are still the sidebar's: once they change,
    # its message names what is no longer there (a newcomer saw an old file's error above a fresh result).
    failed = st.session_state.get("error") if st.session_state.get("error_key") == key else None
    if failed:
        st.error(failed)  # cleaned once, when it was stored (messages.failure)
    waiting_for_file = s.source == "upload" and upload is None
    r = st.session_state.get("result")
    if r is None:
        st.info("No result yet: " + ("upload a file in the sidebar" if waiting_for_file else "fix the input above")
                + " and press **Run** in the sidebar.")
        return
    if r.key != key:
        st.info("The result below is from earlier settings: the last Run failed (the message above); fix the input "
                "and press **Run**." if failed else
                "The result below is from earlier settings: upload a file in the sidebar (.txt, .jsonl or .csv), "
                "then press **Run**." if waiting_for_file else
                "The sidebar settings differ from this result's: press **Run** to apply them.")
    # Tracked tabs: the open tab survives reruns (a button press keeps you in its view), and only the
    # open tab's content runs, so switching views is quick.
    _collect(r)  # background computations that finished since the last run of the page
    if r.pending:
        _pending_panel(r)
    try:
        replay.banner(r)
        _header(r)
        for p in viewlink.apply(r):  # the link's tab, layer and block, once a result shows how many layers
            st.warning(messages.clean(p))
        tabs = st.tabs(TABS, key="view", on_change="rerun")
        open_tab = next((label for label, t in zip(TABS, tabs) if t.open), TABS[0])
        viewlink.show_tab(open_tab)
        with tabs[TABS.index(open_tab)]:
            _view(open_tab, r)
    except Exception as e:  # noqa: BLE001 — a view that cannot draw says so; the sidebar stays usable
        st.error(messages.failure(e))
    lecture_job.preload()  # once per server, its first page drawn: a lecture prepared on disk into memory


# The views that need the model for everything they show: a replay shows this note in their place.
NEEDS_MODEL = {"Latency": "Timing dense against the pruned model",
               "Compare methods": "Comparing every method on this batch (and running an ablation)",
               "Side by side": "Running two configurations side by side on this batch",
               "Zero-shot": "Zero-shot accuracy"}


def _view(label: str, r: Result) -> None:
    a = r.analysis
    replayed = r.replayed is not None
    if replayed and label in NEEDS_MODEL:
        st.info(replay.needs_model(NEEDS_MODEL[label]))
        return

    def start_stability(n: int) -> None:
        _on_request(r, "stability", "Running consecutive batches",
                    lambda lm, c, p: session.stability(lm, c, a, r.settings.corpus, r.settings.seed, n, p),
                    lambda: {"corpus": r.settings.corpus, "seed": r.settings.seed, "batches": n})

    def need_baselines() -> None:
        if r.baselines is None:  # computed once per result, the first time a view that draws them opens
            _on_request(r, "baselines", "Running the oracle and the static baselines for agreement",
                        lambda lm, c, p: session.baselines(lm, c, a, p))

    stability = None if replayed else start_stability  # a replay has no model to run further batches with
    if label == "Probe":
        probe.render(r)
    elif label == "History":
        history.render(r, stability)
    elif label == "Pruned channels":
        if not replayed:
            need_baselines()
        elif r.baselines is None:
            st.info(replay.lacking("baselines (the oracle's and the static baselines' keep-sets): the agreement "
                                   "chart stays empty"))
        channels.render(r, stability)
    elif label == "Why this head":
        if not replayed and not probe.nothing_pruned(r):  # nothing decided: nothing to explain, no baselines
            need_baselines()
        unit_why.render(r)
    elif label == "Outputs":
        repeats = 1 if demo() else session.GENERATION_REPEATS  # a demo visitor waits for one timed run of each
        outputs.render(r, None if replayed else lambda prompt, n: _on_request(
            r, "generation", "Generating", lambda lm, c, p: session.generation(lm, c, a.cfg, prompt, n, limits().seq,
                                                                       repeats=repeats, progress=p),
            lambda: {"prompt": prompt, "new_tokens": n, "max_prompt": limits().seq, "repeats": repeats},
            exclusive=True))
    elif label == "Latency":
        latency.render(r, lambda reps, fresh=False: _on_request(
            r, "latency", "Timing dense and pruned", lambda lm, c, p: session.latency(lm, c, a, reps),
            lambda: {"repeats": reps}, fresh=fresh, exclusive=True))
    elif label == "Compare methods":
        compare.render(r, lambda ratios, reps, fresh=False: _on_request(
            r, "comparison", "Comparing methods",
            lambda lm, c, p: session.comparison(lm, c, a, sweep_ratios(ratios, a), reps, p),
            lambda: {"ratios": sweep_ratios(ratios, a), "repeats": reps}, fresh=fresh,
            in_background=True))
        ablation.render(r, lambda name: _on_request(  # every ablation run so far stays, by name
            r, "ablations", f"Running the ablation '{name}' on this batch",
            lambda lm, c, p: session.ablation(lm, c, a, name, p), entry=name, in_background=True))
    elif label == "Side by side":
        side_by_side.render(r, lambda entry, cfg_a, cfg_b: _on_request(  # every comparison run so far stays, by B
            r, "side_by_side", f"Running A and B side by side ({entry})",
            lambda lm, c, p: session.side_by_side(lm, c, a.batch, cfg_a, cfg_b, p),
            lambda: {"cfg_a": cfg_a.to_dict(), "cfg_b": cfg_b.to_dict()}, entry=entry))
    elif label == "Zero-shot":
        zeroshot.render(r, lambda task, n: _on_request(
            r, "zeroshot", f"Zero-shot {task} on {n} documents, dense and pruned",
            lambda lm, c, p: session.zeroshot(lm, c, a, task, n, p), lambda: {"task": task, "documents": n},
            in_background=True))
    else:
        export.render(r)


def _saved_calibration(protocol: Any) -> str:
    """A replayed record's calibration, as its protocol states it."""
    c = protocol.calibration
    try:
        return session.calibration_text(CalibConfig(dataset=c["dataset"], windows=c["windows"], seq_len=c["seq_len"],
                                                    batch_size=c["batch_size"]))
    except (KeyError, TypeError, ValueError, PPCoreError):
        return "none recorded"


def _header(r: Result) -> None:
    a = r.analysis
    info = a.info
    # A replay's texts come from its file: each goes through messages.clean (no link, no server path in the demo).
    txt = (lambda v: "?" if v is None else messages.clean(messages.literal(v))) if r.replayed else str
    calib = _saved_calibration(a.protocol) if r.replayed else session.calibration_text(calib_config(r.settings))
    st.markdown(f"**{txt(info['name'])}** ({txt(info['model_type'])}, {info['layers']} layers, {info['heads']} heads "
                f"over {txt(info['kv_heads'])} kv heads, MLP {info['intermediate']}) on {txt(info['device'])} / "
                f"{txt(info['dtype'])} · batch: {txt(a.batch.description)}, {tuple(a.batch.ids.shape)} · method "
                f"**{a.cfg.method}** at ratio {a.cfg.ratio:.2f}, skipped layers {list(a.cfg.skip_layers)} · "
                f"calibration: {calib}")
    calib = calib_config(r.settings)
    if calib.windows <= calib.batch_size:  # ppcore.methods.flap.check_fluctuation warns the same in the engine
        st.warning(f"This calibration runs in one batch ({calib.windows} windows, batch size {calib.batch_size}): "
                   "FLAP's fluctuation statistic skips the first calibration batch, as the official code does, so "
                   "FLAP prunes nothing here (its rows equal dense). Use more windows or a smaller calibration "
                   "batch size for FLAP.", icon="⚠️")
    summary = r.summary()
    outputs = ("ppl_dense", "ppl_pruned", "kl", "top1")
    metrics = header_metrics({**summary, **{k: 0.0 for k in outputs if summary[k] is None}}, a.cfg.method)
    if any(summary[k] is None for k in outputs):  # a replayed record without per-token losses: FLOPs only
        metrics = metrics[4:]
        st.caption(replay.lacking("per-token losses: perplexity, KL and top-1 agreement are not shown"))
    for row in (metrics[i: i + 4] for i in range(0, len(metrics), 4)):
        for col, m in zip(st.columns(4), row):
            col.metric(m.label, m.value, m.delta, delta_color="inverse" if m.delta else "normal", help=m.help)


main()
