"""Lecture mode (issue 14 item 1) through AppTest, on the default model with the small test settings: the server
prepares the lecture once (a progress bar meanwhile), every step draws its figure with no error, the figures' numbers
are the engine's, Previous and Next only redraw, a second session reuses the lecture from memory and, after a
restart, from the server's disk without computing anything, a failed part leaves one message on its steps only,
and the toggle and the link open and close it. The preparation runs a quick plan (a two-ratio sweep, one repeat):
the production defaults are app/lecture.py's."""
from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app import lecture, lecture_job, stored
from app.header import header_metrics
from app.lecture import STEPS, lecture_settings, step_text
from app.state import Settings, from_query
from app.views import lecture as lecture_view
from ppcore import ConfigError, PruneConfig, session
from ppcore.cache import cache_root
from ppcore.result_store import ResultStore
from tests.browser_util import LECTURE_FIGURES as FIGURES
from tests.test_app import SMALL, charts, ok, start, titles

QUICK = {lecture.SWEEP_ENV: "0.2", lecture.REPEATS_ENV: "1"}
PREPARE_S = 1500  # the whole preparation on 2 busy cores: the analysis, 4 baselines, 2 x 6 timed methods, latency


def _preparing(at: AppTest) -> list[str]:
    """The texts of the page's 'Preparing the lecture' progress bars."""
    return [p.proto.text for p in at.get("progress") if p.proto.text.startswith("Preparing the lecture")]


def open_lecture(**params: str) -> tuple[AppTest, bool]:
    """The app opened on a lecture link with the small settings, rerun until the lecture is drawn; whether the page
    showed the shared preparation's progress on the way."""
    at = start(lecture="1", **params)
    seen = bool(_preparing(at))
    deadline = time.monotonic() + PREPARE_S
    while _preparing(at):
        assert all(" so far)" in t for t in _preparing(at)), _preparing(at)  # how long the wait has lasted
        assert time.monotonic() < deadline, "the lecture was not prepared in time"
        time.sleep(3)
        at.run()
    return at, seen


@dataclass
class Prepared:
    store: ResultStore
    at: AppTest
    saw_progress: bool
    data: lecture.LectureData


def cache_with_own_results(folder: Path) -> Path:
    """A cache folder whose result store is new and empty and whose models, calibrations and the rest are this
    machine's (links to them): a server started with PPCORE_CACHE=folder finds the converted model and the cached
    calibration, and exactly the results the tests put in `folder / "results"`."""
    real = cache_root()
    folder.mkdir(parents=True, exist_ok=True)
    for p in real.iterdir():
        if p.name != "results":
            (folder / p.name).symlink_to(p)
    return folder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """One lecture prepared by the app (store switched on, in a fresh folder), shared by the tests below."""
    with pytest.MonkeyPatch.context() as mp:
        cache = cache_with_own_results(tmp_path_factory.mktemp("lecture") / "cache")
        store = ResultStore(cache / "results", max_bytes=256 << 20)
        mp.setattr(stored, "store", lambda: store)
        for k, v in QUICK.items():
            mp.setenv(k, v)
        lecture_job.forget()
        at, seen = open_lecture()
        s, _ = lecture_settings(from_query(SMALL)[0])
        job = lecture_job.job(s.key(), s)
        assert job.data is not None, job.error
        yield Prepared(store, at, seen, job.data)
        lecture_job.forget()


def _values(y) -> list[float]:
    """A Plotly trace's numbers from its JSON: a list, or a typed array (`{"dtype": "f8", "bdata": base64}`)."""
    if isinstance(y, dict):
        return np.frombuffer(base64.b64decode(y["bdata"]), dtype=np.dtype(y["dtype"])).tolist()
    return list(y)


def strips(at: AppTest) -> list[str]:
    """The HTML of the lecture's model overviews on the page (app/model_strip.py)."""
    return [e.proto.body for e in at.get("html") if 'class="pp-strip"' in e.proto.body]


def _header(at: AppTest) -> str:
    return next(h.value for h in at.header)


def test_walks_every_step_and_draws_the_engines_numbers(prepared):
    at, d = prepared.at, prepared.data
    ok(at)
    assert prepared.saw_progress  # the first session watched the shared preparation
    r = d.result
    a = r.analysis
    assert a.batch.ids.shape == (4, 48) and a.cfg.method == "pp" and d.sweep == (0.2, 0.4)
    assert not d.errors and set(d.when) == set(lecture.PARTS)
    assert len(prepared.store.entries()) == 4  # analysis, baselines, comparison, latency: kept on disk
    n = len(a.main.layers)
    assert d.layer == lecture.middle_layer(r) and 3 <= d.layer < n
    for k, step in enumerate(STEPS, start=1):
        ok(at)
        assert _header(at) == f"{k}. {step.title}"
        if step.layered:  # the layer steps open on the middle pruned layer
            assert at.session_state["lecture_layer"] == d.layer
        assert at.query_params["step"] == [str(k)] or at.query_params["step"] == str(k)
        t = titles(at)
        assert any(FIGURES[step.slug] in x for x in t + strips(at)), (step.slug, t)
        words = [m.value for m in at.markdown]
        assert step_text(step, a.cfg) in words and not any(re.search(r"\{[a-z_]+\}", w) for w in words), step.slug
        # The overview on layer steps (outlining the layer) and on the first step (the whole model).
        assert any("Where in the model" in x for x in strips(at)) == (step.layered or step.slug == "model")
        if step.slug == "outputs":
            want = [m.value for m in header_metrics(a.summary(), "pp")[:4]]
            assert [m.value for m in at.metric][:4] == want
            diff = (a.nll_pruned - a.nll_dense) * a.nll_mask  # the words' sentence, from the engine's numbers
            b = int(diff.sum(1).argmax())
            d_b = diff[b, : a.batch.lengths[b] - 1]
            said = f"its loss rose on **{int((d_b > 0).sum())} of {len(d_b)}** words, by more than 1 nat"
            assert any(said in w and f"on **{int((d_b > 1).sum())}**." in w for w in words), words
        if step.slug == "compare":
            rows = {row.timing.method: row for row in r.comparison if row.timing.ratio in (0.0, 0.4)}
            table = at.dataframe[0].value
            assert set(table["method"]) == {"dense", "pp", "fullbatch", "wanda-sp", "flap", "ppsp-calib"}
            for _, row in table.iterrows():
                assert row["ppl"] == f"{rows[row['method']].ppl:.2f}"
            # The engine again, another path: the comparison's dense and pp equal the analysis's perplexities.
            summary = a.summary()
            assert rows["dense"].ppl == pytest.approx(summary["ppl_dense"], rel=1e-5)
            assert rows["pp"].ppl == pytest.approx(summary["ppl_pruned"], rel=1e-4)
            assert any("Measured on a CPU" in w.value for w in at.warning)
            assert any("computed on" in c.value for c in at.caption)  # when it was measured
        if step.slug == "sweep":
            fig = next(c for c in charts(at) if "pruning ratio" in c["layout"]["title"]["text"])
            lines = {tr["name"]: _values(tr["y"]) for tr in fig["data"]}
            assert set(lines) == {"pp", "wanda-sp", "flap", "fullbatch", "ppsp-calib"}
            for m, got in lines.items():
                want = [row.ppl for row in sorted(r.comparison, key=lambda x: x.timing.ratio)
                        if row.timing.method == m]
                assert got == pytest.approx(want), m
        if k < len(STEPS):  # the next step's figures were built while this one showed: Next only draws them
            nxt = STEPS[k]
            for build, layered in lecture_view.FIGURES[nxt.slug]:
                assert (build.__name__, d.layer if layered else -1) in d.figures, (nxt.slug, build.__name__)
            at.button(key="lecture_next").click().run()
    assert at.button(key="lecture_next").disabled
    built = dict(d.figures)
    # Previous walks back; nothing was recomputed: the same shared object is drawn.
    for k in range(len(STEPS) - 1, 0, -1):
        at.button(key="lecture_prev").click().run()
        ok(at)
        assert _header(at).startswith(f"{k}. ")
    assert at.button(key="lecture_prev").disabled
    assert d.figures == built and all(d.figures[k] is v for k, v in built.items())  # drawn again, not built again
    s, _ = lecture_settings(from_query(SMALL)[0])
    assert lecture_job.job(s.key(), s).data is d


def test_a_layer_step_follows_the_layer(prepared):
    at = prepared.at
    assert not at.slider  # the first step shows the whole model: no layer selector
    at.button(key="lecture_next").click().run()
    at.slider(key="lecture_layer").set_value(10).run()
    ok(at)
    assert at.query_params["layer"] in ("10", ["10"])
    strip = next(x for x in strips(at) if "Where in the model" in x)
    assert "layer 10 outlined" in strip and 'title="layer 10" style="grid-row: 1 / span 2; grid-column: 12;' in strip
    at.slider(key="lecture_layer").set_value(1).run()  # a skipped layer says so, the page goes on
    ok(at)
    at.button(key="lecture_next").click().run()
    ok(at)
    assert any("runs whole" in i.value for i in at.info)


def test_second_session_and_a_restart_compute_nothing(prepared, monkeypatch):
    for k, v in QUICK.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(stored, "store", lambda: prepared.store)
    calls: list[str] = []
    for name in ("analyse", "baselines", "comparison", "latency"):
        real = getattr(session, name)
        monkeypatch.setattr(session, name, lambda *a, _n=name, _f=real, **k: calls.append(_n) or _f(*a, **k))
    other, seen = open_lecture(step="8")
    ok(other)
    assert not seen and calls == [] and _header(other).startswith("8. ")  # from memory, at once
    lecture_job.forget()  # as after a restart: the memory is empty, the disk is not
    again, _ = open_lecture(step="10")
    ok(again)
    assert calls == []
    s, _ = lecture_settings(from_query(SMALL)[0])
    d = lecture_job.job(s.key(), s).data
    assert d is not prepared.data and all("kept on this server" in d.when[p] for p in lecture.PARTS)
    assert d.result.latency.runs[0].seconds == prepared.data.result.latency.runs[0].seconds
    assert any("kept on this server" in c.value for c in again.caption)


def test_a_failed_part_says_so_on_its_steps_only(prepared):
    s, _ = lecture_settings(replace(from_query(SMALL)[0], seed=7))
    job = lecture_job.job(s.key(), s)  # another lecture whose comparison failed
    job.data = replace(prepared.data, errors={"comparison": "boom"})
    at = start(lecture="1", seed="7", step="8")
    assert [e.value for e in at.error] == ["This step cannot be drawn: the comparison of every method over the ratio "
                                           "sweep failed: boom"]
    at.button(key="lecture_next").click().run()  # the sweep needs it too
    assert len(at.error) == 1
    at.button(key="lecture_next").click().run()  # the latency does not
    ok(at)
    assert _header(at).startswith("10. ")


def test_toggle_and_link(prepared):
    at = start(lecture="1", step="99")
    assert any("step='99'" in w.value for w in at.warning)
    assert _header(at).startswith("1. ")
    at.toggle(key="lecture_on").set_value(False).run()  # off: the tabs, and the link forgets the lecture
    ok(at)
    assert "lecture" not in at.query_params and at.session_state["result"] is not None
    at.toggle(key="lecture_on").set_value(True).run()
    ok(at)
    assert _header(at).startswith("1. ")


def test_settings_and_plan(monkeypatch):
    for name in QUICK:
        monkeypatch.delenv(name, raising=False)
    pp = Settings()
    assert lecture_settings(pp) == (pp, [])
    s, notes = lecture_settings(replace(pp, method="wanda-sp", ratio=0.0, source="upload"))
    assert (s.method, s.ratio, s.source) == ("pp", pp.ratio, "examples") and len(notes) == 3
    assert lecture.step_number("3") == 3 and lecture.step_number("0") == 1 and lecture.step_number("x", 2) == 2
    assert lecture.plan(replace(pp, ratio=0.45)) == ((0.2, 0.4, 0.45, 0.6), 2, 3)
    monkeypatch.setenv(lecture.SWEEP_ENV, "0.5")
    monkeypatch.setenv(lecture.REPEATS_ENV, "1")
    assert lecture.plan(pp) == ((0.4, 0.5), 1, 1)
    monkeypatch.setenv(lecture.SWEEP_ENV, "1.5")
    with pytest.raises(ConfigError):
        lecture.plan(pp)


def test_demo_lectures_on_the_defaults(demo_mode):
    s, notes = lecture_settings(replace(Settings(), ratio=0.3))
    assert s == Settings().locked() and notes
    assert lecture_settings(Settings().locked()) == (Settings().locked(), [])
    assert stored.writable(s)  # the demo's one lecture may be kept on disk; nothing a visitor chose is


def test_prepare_script_reads_the_lecture_back(prepared, monkeypatch, capsys):
    from urllib.parse import urlencode

    from app import lecture_prepare

    for k, v in QUICK.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(stored, "store", lambda: prepared.store)
    assert lecture_prepare.main(["--query", urlencode(SMALL)]) == 0
    out = capsys.readouterr().out
    assert out.count("kept on this server") == len(lecture.PARTS) and "100.0%" in out
    monkeypatch.setattr(stored, "store", lambda: None)  # the store off: nothing would reach the server
    assert lecture_prepare.main([]) == 2


def test_a_preload_reads_a_stored_lecture_and_computes_nothing(prepared, tmp_path, monkeypatch):
    """What the server does after its first page (lecture_job.preload): a lecture wholly on disk comes back into
    memory without a page asking; one that is not there is left alone (nothing computed, nothing stored), until a
    page asks for it."""
    s, _ = lecture_settings(from_query(SMALL)[0])
    for k, v in QUICK.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(stored, "store", lambda: prepared.store)
    before = len(prepared.store.entries())
    lecture_job.forget()  # as after a restart
    job = lecture_job.job(s.key(), s)
    job.start(stored_only=True)
    assert job.wait(300) and job.error is None
    assert job.data is not None and job.data.result.analysis.cfg == prepared.data.result.analysis.cfg
    assert len(prepared.store.entries()) == before
    empty = ResultStore(tmp_path / "results", max_bytes=1 << 20)
    monkeypatch.setattr(stored, "store", lambda: empty)
    lecture_job.forget()
    job = lecture_job.job(s.key(), s)
    job.start(stored_only=True)
    assert job.wait(300)
    assert job.data is None and job.error is None and not job.running and empty.entries() == []
    lecture_job.forget()
    monkeypatch.setattr(stored, "store", lambda: None)  # the store off: a preload does not even load a model
    lecture_job.preload.clear()
    assert lecture_job.preload() is None
    lecture_job.preload.clear()


def test_step_words_follow_the_config():
    """The steps' plain words say what the lecture's config does, not the paper's defaults."""
    by = {st_.slug: st_ for st_ in STEPS}
    default, other = PruneConfig(), PruneConfig(token_frac=0.3, sample_frac=0.2, fusion="fixed", probe_weight=0.3,
                                                score="flap")
    assert "loudest half of the positions" in step_text(by["importance"], default)
    assert "loudest 30% of the positions" in step_text(by["importance"], other)
    assert "5% of the batch's samples" in step_text(by["samples"], default)
    assert "nominally 6.0%" in step_text(by["samples"], other)
    assert "trusting whichever is larger" in step_text(by["history"], default)
    assert "0.3·P + 0.7·G" in step_text(by["history"], other)
    assert "without history" in step_text(by["history"], PruneConfig(use_history=False))
    assert "PPsp score" in step_text(by["kept"], default) and "FLAP's" in step_text(by["kept"], other)
    assert all("{" not in step_text(st_, default) for st_ in STEPS)
    assert "layers 0-2 are left whole" in step_text(by["model"], default)
    assert "no layer is left whole" in step_text(by["model"], PruneConfig(skip_layers=()))
    assert "layer 5 is left whole" in step_text(by["model"], PruneConfig(skip_layers=(5,)))
    assert "layers 0, 3 are left whole" in step_text(by["model"], PruneConfig(skip_layers=(3, 0)))


def test_the_model_overview_colours_each_block_by_its_kept_share():
    """app/model_strip.py against its written-out rule: a block's colour blends EMPTY (0 % kept) to KEPT (100 %)
    linearly, a block run whole is grey and says so, the selected layer is outlined; bad input raises."""
    from app.charts import KEPT, PRUNED
    from app.model_strip import CELL_CLASS, EMPTY, model_strip_html

    kept = np.array([[np.nan, 0.0, 1.0, 0.5], [np.nan, 1.0, 0.25, 0.5]])
    body = model_strip_html(kept, 2, "Where in the model: 4 decoder layers, layer 2 outlined")

    def cell(layer: int, block: str, what: str, colour: str) -> bool:
        label = f"layer {layer}, {block}: {what}"
        return (f'title="{label}"' in body and
                f'aria-label="{label}" role="img" style="grid-row: {1 + (block == "MLP")}; grid-column: '
                f'{layer + 2}; height: 32px; background: {colour}"' in body)

    assert body.count(f'class="{CELL_CLASS}"') == 8
    assert cell(0, "attention", "run whole", PRUNED) and cell(0, "MLP", "run whole", PRUNED)
    assert cell(1, "attention", "0% kept", EMPTY) and cell(2, "attention", "100% kept", KEPT)
    # Halfway between #f0f0f0 and #1f77b4 per channel: (240+31)/2, (240+119)/2, (240+180)/2, rounded half to even.
    assert cell(3, "MLP", "50% kept", "#88b4d2")
    assert "1 skipped" in body and 'title="layer 2" style="grid-row: 1 / span 2; grid-column: 4;' in body
    assert "outline" not in model_strip_html(kept, None, "t")
    from app.model_strip import TITLE_CLASS
    from tests.browser_util import FIGURE_TITLE

    assert f".{TITLE_CLASS}" in FIGURE_TITLE  # the browser tests look for the overview's title by this class
    assert "&lt;b&gt;" in model_strip_html(kept, None, "<b>")  # the title is text, never markup
    with pytest.raises(ValueError, match="shape"):
        model_strip_html(np.zeros((3, 4)), None, "t")
    with pytest.raises(ValueError, match="outside"):
        model_strip_html(kept, 4, "t")


def test_the_batch_table_shows_text_as_typed():
    from app.views.lecture import batch_table

    body = batch_table(["plain", "<img src=x onerror=alert(1)> [a link](http://example.com) **bold**"])
    assert "<img" not in body and "&lt;img src=x onerror=alert(1)&gt;" in body
    assert "[a link](http://example.com) **bold**" in body  # no Markdown either: st.html shows it as typed
    assert body.count("<tr>") == 3 and "<td>1</td>" in body


def test_lecture_in_a_real_browser(prepared):
    """Every lecture step in headless chromium, forward then one back, with no error element, on a server that reads
    the lecture the fixture prepared from its disk (the same store, settings and plan): the page opens it without
    preparing anything, and the store holds no new entry after the walk. (The preparation's progress bar is
    checked through AppTest above.)"""
    pytest.importorskip("playwright", reason="playwright is not installed (requirements-dev.txt)")
    from urllib.parse import urlencode

    from tests.browser_util import browser_page, chromium_path, lecture_next, lecture_step, streamlit_server

    if chromium_path() is None:
        pytest.skip("chromium not found at /usr/bin/chromium (make test installs it with apt-get)")
    before = sorted(p.name for p, _, _ in prepared.store.entries())
    env = {**QUICK, "PPCORE_CACHE": str(prepared.store.root.parent), "PPCORE_RESULT_CACHE_MB": "256"}
    with streamlit_server(env) as url, browser_page(height=1400) as page:
        page.goto(url + "/?lecture=1&" + urlencode(SMALL))
        lecture_step(page, 1, timeout_ms=300_000)
        assert page.get_by_text("Preparing the lecture").count() == 0
        for k in range(1, len(STEPS)):
            lecture_next(page, k)
            assert f"step={k + 1}" in page.url
        page.get_by_role("button", name="◀ Previous").click()
        lecture_step(page, len(STEPS) - 1, timeout_ms=30_000)
    assert sorted(p.name for p, _, _ in prepared.store.entries()) == before


def test_a_waiting_page_says_how_long_the_preparation_has_run():
    """A newcomer waited about 30 minutes on a loaded machine with no sign of time passing."""
    job = lecture_job.LectureJob(Settings())
    assert job.elapsed is None  # not started
    job.started = time.perf_counter() - 185
    assert 184 < job.elapsed < 190 and lecture_view._minutes(job.elapsed).startswith("3 min 0")
    assert lecture_view._minutes(42.7) == "42 s" and lecture_view._minutes(60) == "1 min 00 s"
    job.data = object()  # done: nothing to say
    assert job.elapsed is None
