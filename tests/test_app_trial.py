"""What the classroom trial found (issue 13, items 5 and 6), each checked where it lives.

Speed said honestly: the sentence that says whether pruning beat dense and why not (app/header.py), and
generation timed after a warm-up with dense and pruned alternating (ppcore.session.generation). Then the
page: a link carries pasted text only when its sender ticks the box, an upload link says what to do, demo
mode says what it changed, a paste longer than the batch says what was left out, the comparison table
prints no "None", the first model conversion shows in the progress bar, the status lines are plain
words, and the server's defaults (.streamlit/config.toml). Page tests that need no model make the run
fail at once (a ratio of 1.5 from the link) so they cost no model work.
"""
from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

import ppcore.session as session
from app import messages
from app.batch import LeftOut, TextBatch, build_batch, left_out_note
from app.header import NA, header_metrics, predicted_ratio, speed_note, text_table
from app.state import Settings, demo_changes, limits, link_notes
from app.views.compare import shown_table, speed_notes
from app.views.latency import SUMMARY_FORMATS, latency_note, summary_table
from app.views.outputs import generation_times
from ppcore import ConfigError, ModelLoadError, Pruner, PruneConfig
from ppcore.config import CalibConfig
from ppcore.generate import generate
from ppcore.session import BlockTiming, CompareRow, Latency, Timing
from tests.test_app import finish, ok, tab
from tests.test_app import start as app_start

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(batch_size="2", seq_len="16", calib_windows="8", calib_seq_len="64")  # as tests/test_app_hardening.py
NO_RUN = dict(ratio="1.5")  # the run stops at the settings check: the page draws, no model work
SECRET = "My private notes about the exam.\nThe second line of them."


def start(**params: str) -> AppTest:
    return app_start(SMALL, **params)


# --- item 5: whether pruning ran faster than dense, said from the measurements -------------------------------

def timing(method: str, seconds: float, dense_s: float, flops: float, probe: float, probe_decide_s: float = 0.0,
           ratio: float = 0.4) -> Timing:
    return Timing(method, ratio, seconds, seconds / dense_s,
                  {"flops_ratio": flops, "decoder_flops_ratio": flops - 0.05, "probe_flops_ratio": probe,
                   "decoder_probe_flops_ratio": probe * 1.2}, probe_decide_s)


DENSE = timing("dense", 1.0, 1.0, 1.0, 0.0, ratio=0.0)


def blocks(full_s: float, dense_full_s: float, flops_ratio: float) -> list[BlockTiming]:
    """Two pruned blocks and a skipped one (FLOPs ratio 1: left out of the full-inference figure)."""
    return [BlockTiming(3, "attn", 0.01, 0.0, full_s, dense_full_s, flops_ratio),
            BlockTiming(3, "mlp", 0.01, 0.0, full_s, dense_full_s, flops_ratio),
            BlockTiming(0, "mlp", 0.0, 0.0, 5.0, 1.0, 1.0)]


def test_speed_note_when_pruning_is_as_fast_as_its_flops_predict():
    pp = timing("pp", 0.75, 1.0, 0.72, 0.012, probe_decide_s=0.01)
    assert predicted_ratio(pp.flops) == pytest.approx(0.732)
    note = speed_note(DENSE, pp, "cpu", (20, 512))
    assert note.startswith("On this batch (20 x 512 tokens) pp at ratio 0.40 took 0.75x dense's time (0.750 s "
                           "against 1.000 s; its FLOPs predict 0.73x): it ran faster than dense, saving 25% of the "
                           "time.")
    assert note.endswith("That is about what its FLOPs predict.") and "Where the time went" not in note


def test_speed_note_when_pruning_is_slower_says_why_from_the_numbers():
    pp = timing("pp", 1.12, 1.0, 0.82, 0.012, probe_decide_s=0.168)  # 15 % of its time probing and deciding
    note = speed_note(DENSE, pp, "cpu", (8, 56), blocks(0.45, 0.5, 0.75))
    assert "took 1.12x dense's time" in note and "its FLOPs predict 0.83x" in note
    assert "it was slower than dense, by 12%." in note
    assert "probing and deciding took 15% of its time, though the probe is 1.20% of dense's FLOPs" in note
    assert "full inference on the kept weights took 0.90x dense's time for 0.75x its FLOPs" in note
    assert "At 448 tokens per batch on a CPU" in note and "outweigh the arithmetic saved" in note
    assert "a GPU with large batches" in note
    # Only what the numbers show: full inference at its FLOPs share and no probing time name neither.
    quiet = speed_note(DENSE, timing("wanda-sp", 1.1, 1.0, 0.8, 0.0), "cpu", (8, 56), blocks(0.4, 0.5, 0.8))
    assert "Where the time went" not in quiet and "outweigh the arithmetic saved" in quiet
    assert "probing" not in quiet and "running Python for every layer and multiplying smaller" in quiet  # static
    # Faster than dense but short of the FLOPs: the costs ate part of the saving.
    part = speed_note(DENSE, timing("pp", 0.91, 1.0, 0.73, 0.01, probe_decide_s=0.11), "cpu", (8, 64))
    assert "it ran faster than dense, saving 9% of the time" in part and "eat part of the arithmetic saved" in part
    # A large batch slower than its FLOPs: the page does not blame fixed costs it expects to be small.
    big = speed_note(DENSE, timing("pp", 0.9, 1.0, 0.73, 0.01), "cpu", (20, 512))
    assert "should be small next to the arithmetic" in big and "more repeats" in big
    gpu = speed_note(DENSE, timing("pp", 1.2, 1.0, 0.73, 0.01), "cuda:0", (2, 16))
    assert "on cuda:0" in gpu and "launching kernels" in gpu and "a GPU with large batches" not in gpu
    # The advice stays within what the app runs (found by a newcomer: "larger batches" at the largest batch size).
    at_max = speed_note(DENSE, pp, "cpu", (64, 56), largest=(64, 1024))
    assert "Larger batches" not in at_max and "Longer sequences (up to 1024 tokens here)" in at_max
    both = speed_note(DENSE, pp, "cpu", (8, 128), largest=(8, 128))
    assert "Larger" not in both and "Longer" not in both and "the largest batch the app runs here" in both
    assert "Larger batches (up to 64 samples here)" in speed_note(DENSE, pp, "cpu", (4, 1024), largest=(64, 1024))


def test_speed_note_when_flops_predict_no_saving():
    full = timing("fullbatch", 1.2, 1.0, 0.73, 0.5, probe_decide_s=0.4)  # the probe is the whole batch
    note = speed_note(DENSE, full, "cpu", (8, 64))
    assert "its FLOPs predict 1.23x" in note and "it was slower than dense, by 20%" in note
    assert "That is what its FLOPs predict: they are more than dense's" in note and "adds 50.00% of" in note
    even = speed_note(DENSE, timing("pp", 1.0, 1.0, 0.97, 0.02, probe_decide_s=0.1), "cpu", (8, 64))
    assert "Its FLOPs predict no saving either" in even  # 0.99x predicted, about dense's time measured
    quick = speed_note(DENSE, timing("pp", 0.9, 1.0, 0.97, 0.02, probe_decide_s=0.1), "cpu", (8, 64))
    assert "Its FLOPs predict no saving:" in quick and "either" not in quick  # faster than they predict
    assert speed_note(DENSE, full, "cpu", (8, 64), short=True).endswith("it was slower than dense, by 20%.")
    same = speed_note(DENSE, timing("pp", 1.01, 1.0, 0.9, 0.01), "cpu", (8, 64), short=True)
    assert same.endswith("it took about as long as dense: pruning saved no time.")


def test_speed_note_does_not_call_a_time_far_below_the_flops_about_what_they_predict():
    """A newcomer saw "That is about what its FLOPs predict." beside 0.61x measured for 0.76x predicted, and at ratio 0
    an explanation about the arithmetic saved when nothing was pruned."""
    fast = speed_note(DENSE, timing("pp", 0.61, 1.0, 0.733, 0.029, probe_decide_s=0.1), "cpu", (8, 64))
    assert "its FLOPs predict 0.76x" in fast and "about what its FLOPs predict" not in fast
    assert "faster than its FLOPs predict" in fast and "Measure again" in fast
    near = speed_note(DENSE, timing("pp", 0.70, 1.0, 0.733, 0.029, probe_decide_s=0.1), "cpu", (8, 64))
    assert near.endswith("That is about what its FLOPs predict.")  # within 10 % below: the arithmetic holds
    for seconds in (0.9, 1.0, 1.2):  # ratio 0: nothing pruned, whatever the clock said
        zero = speed_note(DENSE, timing("pp", seconds, 1.0, 1.0, 0.0, ratio=0.0), "cpu", (8, 64), blocks(1, 1, 1))
        assert "It pruned nothing at this ratio" in zero
        assert "arithmetic saved" not in zero and "odd-shaped" not in zero and "probing" not in zero


def test_every_method_has_its_own_colour():
    """ppsp-calib had none and drew in Wanda-sp's orange (a newcomer's compare chart)."""
    from app.charts import METHOD_COLORS
    from ppcore.config import METHODS

    assert set(METHOD_COLORS) == set(METHODS) and len(set(METHOD_COLORS.values())) == len(METHODS)


def test_a_sweep_ratio_the_model_cannot_take_is_refused_before_anything_is_queued():
    """A newcomer's sweep "0.2, 1.5" ran four minutes before saying 1.5 was out of range; 0.95 likewise."""
    from app.main import sweep_ratios

    a = type("A", (), dict(cfg=PruneConfig(method="pp", ratio=0.4), ratio=0.4, info={"layers": 30}))()
    assert sweep_ratios("0.2, 0.6", a) == [0.2, 0.6] and sweep_ratios(None, a) == [0.4]
    with pytest.raises(ConfigError, match="must lie in"):
        sweep_ratios("0.2, 1.5", a)
    with pytest.raises(ConfigError, match="use at most 0.89"):
        sweep_ratios("0, 0.95", a)


def test_latency_and_compare_carry_the_same_note():
    pp = timing("pp", 1.12, 1.0, 0.82, 0.012, probe_decide_s=0.168)
    lat = Latency("cpu", 2, (8, 56), 3, [DENSE, pp], blocks(0.45, 0.5, 0.75))
    assert latency_note(lat) == speed_note(DENSE, pp, "cpu", (8, 56), lat.blocks)
    assert latency_note(Latency("cpu", 2, (8, 56), 3, [DENSE], [])) is None  # dense alone: nothing to compare
    rows = [CompareRow(pp, 12.0, 1.5, None), CompareRow(timing("pp", 0.9, 1.0, 0.6, 0.01, ratio=0.6), 14.0, 3.5, 35.0),
            CompareRow(timing("flap", 0.8, 1.0, 0.7, 0.0), 13.0, 2.5, 12.5), CompareRow(DENSE, 10.5, 0.0, None)]
    notes = speed_notes(rows, "pp", "cpu", (8, 56))
    assert notes[0] == speed_note(DENSE, pp, "cpu", (8, 56))  # the full sentence at the first ratio
    assert len(notes) == 2 and notes[1].startswith("On this batch (8 x 56 tokens) pp at ratio 0.60 took 0.90x")
    assert speed_notes(rows, "dense", "cpu", (8, 56))[0] == notes[0]  # a dense analysis: PP's note
    assert speed_notes(rows[2:], "pp", "cpu", (8, 56)) == []


# --- item 6: the comparison and latency tables print no "None" -----------------------------------------------

def test_comparison_table_prints_no_none_and_formats_like_the_header():
    pp = timing("pp", 1.12, 1.0, 0.733, 0.0116)
    old = Timing("wanda-sp", 0.4, 0.9, 0.9, {"flops_ratio": 0.75, "decoder_flops_ratio": None,
                                             "probe_flops_ratio": 0.0, "decoder_probe_flops_ratio": None})
    rows = [CompareRow(pp, 12.346, 1.8, None), CompareRow(old, 11.0, 0.5, 5.0), CompareRow(DENSE, 10.5, 0.0, None)]
    df = pd.DataFrame([r.row() for r in rows])
    assert df["prr"].isna().sum() == 2 and df["decoder_flops_ratio"].isna().sum() == 1
    shown = shown_table(df)
    cells = [str(v) for v in shown.to_numpy().ravel()]
    assert not [c for c in cells if c in ("None", "nan", "NaN", "<NA>")], cells
    assert all(isinstance(v, str) for v in cells)
    first = shown.iloc[0]
    header = {m.label: m.value for m in header_metrics({"ppl_dense": 10.5, "ppl_pruned": 12.346, "kl": 0.1,
                                                        "top1": 0.9, **pp.flops}, "pp")}
    assert first["flops_ratio"] == header["FLOPs / dense (whole model)"] == "0.733"
    assert first["probe_flops_ratio"] == header["Probe FLOPs / dense (whole model)"] == "1.16%"
    assert first["decoder_probe_flops_ratio"] == header["Probe FLOPs / dense (decoder layers)"]
    assert (first["ratio"], first["ppl"], first["ppl_increase"], first["prr"]) == ("0.40", "12.35", "+1.80", NA)
    assert shown.iloc[1]["decoder_flops_ratio"] == NA and shown.iloc[1]["prr"] == "5.00"
    # A column that is None in every row (no method saved time) stays NA, not "None".
    all_none = text_table(pd.DataFrame({"method": ["dense", "pp"], "prr": [None, None]}), {"prr": ".2f"})
    assert list(all_none["prr"]) == [NA, NA]
    # The latency summary: its shares as percentages, no raw floats.
    lat = Latency("cpu", 2, (8, 56), 3, [DENSE, pp], [])
    lat_shown = text_table(summary_table(lat), SUMMARY_FORMATS)
    assert lat_shown.iloc[1]["probe FLOPs / dense (whole model)"] == "1.16%"
    assert lat_shown.iloc[1]["probe + decide share of its time"] == "0.0%"
    assert lat_shown.iloc[1]["time / dense"] == "1.120"


# --- item 5: generation after a warm-up, dense and pruned alternating ---------------------------------------

def test_generation_warms_up_alternates_and_writes_what_one_greedy_run_writes(default_lm, monkeypatch):
    lm = default_lm
    calib = session.calibration(lm, CalibConfig(windows=4, seq_len=32, batch_size=2), 0, cache=False)
    cfg = PruneConfig(ratio=0.4)
    prompt = "The capital of France is"
    ids = lm.with_bos(lm.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    plain = {}  # the old behaviour: one greedy run of each, a fresh Pruner, history updated
    for c in (PruneConfig(method="dense"), cfg):
        g = generate(lm.adapter, Pruner(lm.adapter, c, calib.stats), [ids], 5, pad_id=lm.tokenizer.pad_token_id or 0,
                     eos_id=lm.tokenizer.eos_token_id)
        plain[c.method] = g.tokens[0]
    calls: list[tuple[str, int, bool, int]] = []
    real = session.generate

    def spy(adapter, pruner, prompts, n, **kw):
        calls.append((pruner.cfg.method, n, kw.get("update_history", True), id(pruner)))
        return real(adapter, pruner, prompts, n, **kw)

    monkeypatch.setattr(session, "generate", spy)
    seen: list[tuple[float, str]] = []
    g = session.generation(lm, calib, cfg, prompt, 5, progress=lambda v, t: seen.append((v, t)))
    # One untimed 2-token warm-up of each, then two timed runs of each, the order alternating.
    assert [(m, n) for m, n, _, _ in calls] == [("dense", 2), ("pp", 2), ("dense", 5), ("pp", 5), ("pp", 5),
                                                ("dense", 5)]
    assert not any(update for _, _, update, _ in calls)  # PP's history is never moved
    assert len({p for m, _, _, p in calls if m == "pp"}) == 1  # one Pruner: the warm-up warms what is timed
    assert g.repeats == 2 and g.prompt == prompt
    assert g.dense.text == lm.tokenizer.decode(plain["dense"], skip_special_tokens=True)
    assert g.pruned.text == lm.tokenizer.decode(plain["pp"], skip_special_tokens=True)
    assert g.pruned.tokens == len(plain["pp"]) and g.pruned.prefill_s > 0 and g.dense.decode_s > 0
    assert seen[0] == (0.0, "warming up dense") and seen[-1] == (1.0, "done")
    assert [v for v, _ in seen] == sorted(v for v, _ in seen)
    # Dense alone runs once per round, and the page's caption says how the times were taken.
    calls.clear()
    d = session.generation(lm, None, PruneConfig(method="dense"), prompt, 3, repeats=1)
    assert [m for m, *_ in calls] == ["dense", "dense"] and d.dense is d.pruned
    caption = generation_times(g, "pp")
    assert "median of 2 runs each after a warm-up, dense and pp alternating" in caption
    assert f"{g.pruned.prefill_s / g.dense.prefill_s:.2f}x dense's time" in caption
    assert "one run each after a warm-up" in generation_times(d, "dense")
    # One new token: it comes out of reading the prompt, so there is no writing time to set against dense's.
    one = dataclasses.replace(g, dense=dataclasses.replace(g.dense, tokens=1, decode_s=1e-5),
                              pruned=dataclasses.replace(g.pruned, tokens=1, decode_s=1.2e-5))
    assert "there is no writing time to compare" in generation_times(one, "pp")
    assert "Writing the new tokens" not in generation_times(one, "pp")


# --- item 6: the link carries pasted text only when its sender chooses ----------------------------------------

def _query(at: AppTest) -> dict:
    return dict(at.query_params)


def test_pasted_text_stays_out_of_the_link_unless_shared(local_mode):
    at = start(**NO_RUN)
    at.radio(key="s_source").set_value("paste").run()
    at.text_area(key="s_text").set_value(SECRET).run()
    assert at.checkbox(key="share_text").value is False  # off until the user ticks it
    assert _query(at)["source"] == "paste" and "text" not in _query(at)
    assert any("Your pasted text is not in it" in c.value for c in at.sidebar.caption)
    at.checkbox(key="share_text").check().run()
    assert _query(at)["text"] == SECRET
    assert any("It holds your pasted text too" in c.value for c in at.sidebar.caption)
    # Switching to an upload drops the text from the link, and the box is off again on return.
    at.radio(key="s_source").set_value("upload").run()
    assert _query(at)["source"] == "upload" and "text" not in _query(at)
    assert any("A file cannot travel in a link" in c.value for c in at.sidebar.caption)
    at.radio(key="s_source").set_value("examples").run()
    assert "text" not in _query(at)
    at.radio(key="s_source").set_value("paste").run()
    assert at.text_area(key="s_text").value == SECRET and "text" not in _query(at)


def test_a_shared_paste_stays_shared_and_an_upload_link_says_what_to_do(local_mode):
    shared = start(source="paste", text=SECRET, **NO_RUN)
    assert shared.checkbox(key="share_text").value is True  # the sender chose to share it
    assert _query(shared)["text"] == SECRET and not [i for i in shared.info if "link" in i.value]
    shared.checkbox(key="share_text").uncheck().run()
    assert "text" not in _query(shared)

    up = start(source="upload", **NO_RUN)
    notes = [i.value for i in up.info if "uploaded file" in i.value]
    assert len(notes) == 1 and "upload it under **Batch** in the sidebar" in notes[0], notes
    up.get("file_uploader")[0].set_value(("mine.txt", b"First line here.\nSecond line.\n", "text/plain"))
    up.run()
    assert not [i for i in up.info if "uploaded file" in i.value]  # the file is there: the note goes

    kept = start(source="paste", **NO_RUN)  # a paste link whose sender kept the text back
    assert any("kept out of the link" in i.value for i in kept.info)
    assert link_notes(Settings(source="examples"), {}) == []


# --- item 6: demo mode says what it changed -----------------------------------------------------------------

def test_demo_mode_names_each_setting_it_changed(demo_mode):
    at = start(model="org/big-model", batch_size="64", seq_len="4096", **NO_RUN)
    assert not at.exception
    shown = [w.value for w in at.warning if w.value.startswith("Demo mode")]
    lim = limits()
    assert any("model 'org/big-model'" in w and "using 'default'" in w for w in shown), shown
    assert any("batch size '64'" in w and f"using {lim.batch}" in w for w in shown), shown
    assert any("sequence length '4096'" in w and f"using {lim.seq}" in w for w in shown), shown
    assert len(shown) == 3  # nothing else was changed
    s = Settings(text="x" * (lim.text_chars + 5), calib_dataset="/etc/hosts.txt")
    changes = demo_changes(s, s.locked())
    assert any(f"keeps the first {lim.text_chars:,}" in c for c in changes)
    assert any("calibration dataset '/etc/hosts.txt'" in c and "'wiki-vital'" in c for c in changes)
    assert demo_changes(Settings(), Settings().locked()) == []  # the defaults fit the demo


# --- item 6: what a long paste left out ----------------------------------------------------------------------

def test_batch_says_what_it_left_out(local_mode, default_lm):
    tok, vocab = default_lm.tokenizer, default_lm.adapter.dims.vocab
    long = "The quick brown fox jumps over the lazy dog while the band plays on. " * 3
    lines = [long, "A short line.", long, "Another short one.", "Five.", "Six lines in all."]
    s = Settings(source="paste", text="\n".join(lines), batch_size=3, seq_len=8)
    b = build_batch(tok, vocab, s)
    assert isinstance(b, TextBatch) and b.ids.shape[0] == 3
    lost = sum(len(tok(t, add_special_tokens=False)["input_ids"]) - 8 for t in (long.strip(), long.strip()))
    assert b.left_out == LeftOut(3, 3, False, 2, lost, 3, 8, "your pasted text")
    note = left_out_note(b)
    assert "first 3 samples of your pasted text (batch size 3): 3 more samples were left out" in note
    assert (f"2 samples of the batch were longer than 8 tokens (the sequence length) and cut there ({lost:,} "
            "tokens left out)") in note
    assert "Raise the batch size and the sequence length" in note
    assert b.description.endswith(f"(3 more samples and {lost:,} tokens past 8 left out)")
    # Everything fits: no note. Examples and corpus windows are not the user's text: no accounting.
    fits = build_batch(tok, vocab, Settings(source="paste", text="One line.\nTwo lines.", batch_size=4, seq_len=32))
    assert left_out_note(fits) is None and "left out" not in fits.description
    assert left_out_note(build_batch(tok, vocab, Settings(batch_size=2, seq_len=8))) is None
    # An upload's rows past the read limit are counted as "at least"; a long sample's lost tokens are not counted.
    rows = b"text\n" + b"\n".join(b"row %d here" % i for i in range(limits().rows + 50)) + b"\n"
    up = build_batch(tok, vocab, Settings(source="upload", batch_size=2, seq_len=16), ("rows.csv", rows))
    assert up.left_out.more == limits().rows - 2 and up.left_out.more_is_floor
    assert "at least" in left_out_note(up) and "of rows.csv" in left_out_note(up)
    huge = build_batch(tok, vocab, Settings(source="paste", text="word " * 30_000, batch_size=2, seq_len=8))
    assert huge.left_out.cut == 1 and huge.left_out.cut_tokens is None
    assert "the rest of each left out" in left_out_note(huge)
    # The samples' tokens are the text's own: the accounting changes no id.
    short, first = (tok(t, add_special_tokens=False)["input_ids"] for t in ("A short line.", long.strip()))
    assert b.ids[1, : len(short)].tolist() == short and b.ids[0].tolist() == first[:8]


# --- the page: the left-out note, plain status lines, the speed note in Latency and Compare ------------------------

@pytest.fixture(scope="module")
def paste_page():
    """One page on a pasted text longer than the batch (2 samples of 16 tokens), then Latency and Compare."""
    import os

    if os.environ.get("PP_DEMO") == "1":
        pytest.skip("demo mode")
    at = start(source="paste", text="\n".join(["A first line that runs on well past sixteen tokens, about the "
                                               "weather and the trains and the sea."] + ["Short one."] * 4))
    return at


def test_page_says_what_the_paste_left_out_and_reports_in_plain_words(paste_page):
    at = paste_page
    ok(at)
    r = at.session_state["result"]
    assert r.analysis.batch.ids.shape == (2, 16)
    notes = [i.value for i in at.info if "left out" in i.value]
    assert len(notes) == 1 and "3 more samples were left out" in notes[0] and "cut there" in notes[0], notes
    done = [s.label for s in at.status if s.label.startswith("Done")]
    assert len(done) == 1 and done[0].startswith("Done: pruned 2 samples of up to 16 tokens with pp at ratio 0.40, "
                                                 "and ran the unpruned model on them for comparison, in "), done
    assert "walks" not in done[0]
    tab(at, "Outputs")
    ok(at)
    assert any("3 more samples were left out" in i.value for i in at.info)
    assert any("font-size:1.3rem" in m.value and "rgba(214,39,40" in m.value for m in at.markdown)


def test_latency_and_compare_views_say_whether_pp_beat_dense(paste_page):
    at = tab(paste_page, "Latency")
    assert any("Press **Measure latency**" in i.value and "ran faster than dense" in i.value for i in at.info)
    at.number_input(key="lat_reps").set_value(1)
    at.button(key="lat_go").click().run()
    ok(at)
    r = at.session_state["result"]
    note = latency_note(r.latency)
    assert note and any(i.value == note for i in at.info)
    assert any(s.label.startswith("Timing dense and pruned: done in ") for s in at.status)
    at = tab(at, "Compare methods")
    at.number_input(key="cmp_reps").set_value(1)
    at.button(key="cmp_go").click().run()
    finish(at)
    ok(at)
    assert any(i.value.startswith("On this batch (2 x 16 tokens) pp at ratio 0.40 took") for i in at.info)
    assert any("Measured on a CPU" in w.value for w in at.warning)
    table = at.dataframe[0].value
    assert not table.isin(["None", "nan"]).any().any() and table.notna().all().all()
    assert set(table["method"]) == set(session.COMPARED_METHODS)  # pp-plus only when it is the analysed method


# --- item 6: the first conversion in the progress bar, the server's defaults -------------------------------------

def test_first_conversion_shows_in_the_progress_bar(local_mode, monkeypatch):
    said = "converting SmolLM2-135M-Instruct.Q4_1.gguf to float32 safetensors, once (20-100 s on 2 CPU cores)"

    def first_use(spec, progress=None):
        progress(0.0, said)
        raise ModelLoadError("stop here: no model work in this test")

    monkeypatch.setattr(session, "prepare", first_use)
    at = start()
    assert [p.text for p in at.get("progress")] == [said]  # the bar shows the conversion while it runs
    assert at.status[0].label == "The run failed (see the message above the views)"
    assert len(at.error) == 1 and "Stop here" in at.error[0].value


def test_status_lines_in_plain_words():
    assert messages.done_text("pp", 0.2, (8, 56), True, 28.71) == (
        "Done: pruned 8 samples of up to 56 tokens with pp at ratio 0.20, and ran the unpruned model on them for "
        "comparison, in 28.7 s")
    assert messages.done_text("dense", 0.0, (1, 64), False, 3.0) == (
        "Done: ran 1 sample of 64 tokens through the unpruned (dense) model in 3.0 s")
    assert messages.done_text("pp", 0.0, (8, 56), True, 2.0) == (
        "Done: ran 8 samples of up to 56 tokens through pp at ratio 0 (nothing pruned) and through the unpruned "
        "model in 2.0 s")
    # A first load's wait is said beside the runs' own time; a short extra wait is not.
    assert messages.done_text("pp", 0.4, (8, 64), False, 1.9, total=45.2).endswith(
        "for comparison, in 45.2 s (1.9 s of it the two runs; the rest loading, calibrating and analysing)")
    assert messages.done_text("pp", 0.4, (8, 64), False, 1.9, total=2.3).endswith("for comparison, in 1.9 s")
    reused = "computed on 2026-12-01 11:08 UTC in 39.0 s, kept on this server"
    assert messages.done_text("pp", 0.4, (8, 56), True, 0.1, reused) == (
        "Shown again: pruned 8 samples of up to 56 tokens with pp at ratio 0.40, and ran the unpruned model on them "
        f"for comparison ({reused})")


def test_server_defaults_are_local_and_quiet():
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "127.0.0.1"
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["client"]["toolbarMode"] == "viewer"  # hides Deploy, Rerun and Clear cache
    assert "--server.address 0.0.0.0" in (ROOT / "Procfile").read_text()  # hosting passes its own address


def test_an_upload_link_waits_for_the_file_instead_of_failing(local_mode):
    """Opened without its file, an upload link runs nothing on its own: no error, the note and the 'no result'
    line; the file uploaded and Run pressed, the run works."""
    at = start(source="upload")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "result" not in at.session_state or at.session_state["result"] is None
    assert any("No result yet" in i.value for i in at.info)
    at.get("file_uploader")[0].set_value(("mine.txt", b"First line here.\nSecond line of text.\n", "text/plain"))
    at.button(key="run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.session_state["result"].analysis.batch.ids.shape[0] == 2


def test_a_recipient_who_edits_a_shared_text_does_not_share_their_own(local_mode):
    at = start(source="paste", text=SECRET, **NO_RUN)
    assert at.checkbox(key="share_text").value is True and _query(at)["text"] == SECRET
    at.text_area(key="s_text").set_value("My own private notes, not for the link.").run()
    assert at.checkbox(key="share_text").value is False and "text" not in _query(at)
    at.checkbox(key="share_text").check().run()  # ticking it again shares it, on purpose
    assert _query(at)["text"] == "My own private notes, not for the link."
