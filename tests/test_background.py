"""Background computations (app/background.py): one worker, shared jobs by key, cancel at the next progress point,
errors kept for the page; and in the app, a comparison that goes on while the person opens another tab."""
from __future__ import annotations

import threading

from app.background import Cancelled, Jobs
from tests.test_app import SMALL


def test_jobs_share_by_key_run_in_order_and_keep_errors():
    jobs = Jobs()
    gate = threading.Event()
    order: list[str] = []
    kept: list[tuple[object, float]] = []

    def slow(progress):
        progress(0.5, "half")
        gate.wait(10)
        order.append("a")
        return 1

    a = jobs.submit("a", "A", slow, lambda v, s: kept.append((v, s)))
    assert jobs.submit("a", "A again", lambda p: 99) is a  # the same key: the same job
    b = jobs.submit("b", "B", lambda p: order.append("b") or 2)
    assert not b.done.wait(0.2)  # one worker: B waits for A
    assert [j.key for j in jobs.running()] == ["a", "b"]
    gate.set()
    assert jobs.wait(10) and order == ["a", "b"] and (a.value, b.value) == (1, 2)
    assert kept and kept[0][0] == 1 and kept[0][1] >= 0
    assert jobs.submit("a", "A", lambda p: 3) is a  # finished and right: kept
    fresh = jobs.submit("a", "A", lambda p: 3, fresh=True)  # a new measurement
    assert fresh is not a and jobs.wait(10) and fresh.value == 3
    bad = jobs.submit("c", "C", lambda p: 1 / 0)
    assert jobs.wait(10) and isinstance(bad.error, ZeroDivisionError) and bad.value is None
    again = jobs.submit("c", "C", lambda p: 4)  # a failed job is started again
    assert again is not bad and jobs.wait(10) and again.value == 4


def test_cancel_stops_at_the_next_progress_point():
    jobs = Jobs()
    started, steps = threading.Event(), []

    def layers(progress):
        for i in range(1000):
            progress(i / 1000, f"layer {i}")
            steps.append(i)
            started.set()
            threading.Event().wait(0.01)
        return "all"

    job = jobs.submit("k", "K", layers)
    assert started.wait(10)
    job.cancel = True
    assert jobs.wait(10) and isinstance(job.error, Cancelled) and len(steps) < 1000


def test_a_job_nobody_waits_for_is_cancelled():
    jobs = Jobs()
    gate = threading.Event()
    jobs.submit("first", "first", lambda p: gate.wait(10), requester="a")  # keeps the worker busy
    job = jobs.submit("k", "K", lambda p: "value", requester="a")
    assert jobs.submit("k", "K", lambda p: "value", requester="b") is job  # shared
    jobs.release("k", "a")
    assert not job.cancel  # page b still waits for it
    jobs.release("k", "b")
    assert job.cancel
    again = jobs.submit("k", "K", lambda p: "value", requester="c")  # asked anew: a new job, not the cancelled one
    assert again is not job
    gate.set()
    assert jobs.wait(10) and isinstance(job.error, Cancelled) and again.value == "value"


def test_finished_jobs_are_forgotten_past_the_bound(monkeypatch):
    import app.background as bg

    monkeypatch.setattr(bg, "KEEP_FINISHED", 2)
    jobs = Jobs()
    for k in "abcd":
        jobs.submit(k, k, lambda p, k=k: k)
        assert jobs.wait(10)
    assert jobs.get("a") is None and jobs.get("d") is not None


# A smaller batch than the other AppTests' (2 x 24 tokens, not 4 x 48): the comparison times every method at two
# ratios (18 walks per ratio), which is what these tests exercise, not the numbers of a larger batch.
TINY_BATCH = dict(SMALL, batch_size="2", seq_len="24")


def test_a_comparison_goes_on_while_another_tab_is_open():
    from tests.test_app import finish, ok, start, tab, titles

    at = tab(start(TINY_BATCH), "Compare methods")
    r = at.session_state["result"]
    at.number_input(key="cmp_reps").set_value(1)
    at.checkbox(key="cmp_sweep").check().run()  # a ratio sweep: the perplexity-ratio curve too
    at.text_input(key="cmp_ratios").set_value("0.2, 0.4")
    at.button(key="cmp_go").click().run()
    ok(at)
    assert "comparison" in r.pending and r.comparison is None
    assert any(p.proto.text.startswith("Comparing methods") for p in at.get("progress"))  # the panel, on top
    tab(at, "Probe")  # browsing on: the comparison is not stopped
    ok(at)
    finish(at)
    ok(at)
    assert not r.pending and r.comparison is not None
    assert {row.timing.method for row in r.comparison} >= {"dense", "pp", "wanda-sp", "flap"}
    assert {row.timing.ratio for row in r.comparison if row.timing.method != "dense"} == {0.2, 0.4}
    tab(at, "Compare methods")
    ok(at)
    assert len(at.dataframe) == 1
    assert "Perplexity against the pruning ratio, per method" in titles(at)


def test_cancel_from_the_page():
    from tests.test_app import finish, ok, start, tab

    at = tab(start(TINY_BATCH), "Compare methods")
    r = at.session_state["result"]
    at.number_input(key="cmp_reps").set_value(3)  # not the comparison another test ran: the server keeps those
    at.button(key="cmp_go").click().run()
    at.button(key="cancel_comparison").click().run()
    ok(at)
    assert not r.pending and any("cancelled" in i.value for i in at.info)
    finish(at)
    ok(at)
    assert not r.pending and r.comparison is None
