"""Kind 8, the calibration batch size (issue 9): one explicit setting, default CALIB_BATCH_SIZE (20, the
official protocol's), passed to ppcore.calibrate.calibrate by every entry point (eval, bench, generate,
speed, the app) and recorded in every protocol. FLAP's official compensation divides by it, so a run
with --calib-batch-size 4 must give the FLAP statistics (and the perplexity) of calibrate(..., 4)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ppcore.calibrate
import ppcore.experiment
import ppcore.loading
from ppcore import ConfigError, DataError, PruneConfig
from ppcore.calibrate import calibrate
from ppcore.cli import main
from ppcore.config import CALIB_BATCH_SIZE, CalibConfig
from ppcore.evaluate import evaluate
from ppcore.experiment import prepare
from tests.conftest import tiny_llama

APP = str(Path(__file__).resolve().parents[1] / "app" / "main.py")


def test_calib_batch_size_default_is_the_official_protocols():
    assert CALIB_BATCH_SIZE == 20


class Spy:
    """Wraps ppcore.calibrate.calibrate: records each call's batch size and the statistics it returned."""

    def __init__(self):
        self.calls: list[tuple[int, object]] = []

    def wrap(self, real):
        def spy(lm, windows, batch_size, **kw):
            stats = real(lm, windows, batch_size, **kw)
            self.calls.append((batch_size, stats))
            return stats
        return spy


def _same_stats(a, b) -> None:
    assert a.blocks.keys() == b.blocks.keys()
    for k in a.blocks:
        for name in ("sq", "mean", "baseline", "fluc"):
            torch.testing.assert_close(getattr(a.blocks[k], name), getattr(b.blocks[k], name), rtol=0, atol=0)


@pytest.fixture
def tiny_files(tmp_path):
    g = torch.Generator().manual_seed(3)
    win, cwin = torch.randint(0, 128, (8, 16), generator=g), torch.randint(0, 128, (8, 16), generator=g)
    np.save(tmp_path / "eval.npy", win.numpy())
    np.save(tmp_path / "calib.npy", cwin.numpy())
    return win, cwin, tmp_path


def _eval(tmp: Path, out: str, *extra: str) -> dict:
    argv = ["eval", "--method", "flap", "--ratio", "0.4", "--skip-layers", "0", "--mlp-multiple", "8",
            "--batch-size", "4", "--windows-file", str(tmp / "eval.npy"),
            "--calib-windows-file", str(tmp / "calib.npy"),
            "--cache-dir", str(tmp / "cache"), "--json", str(tmp / out), "--quiet", *extra]
    assert main(argv) == 0
    return json.loads((tmp / out).read_text())


def test_calib_batch_size_eval_calibrates_with_it_and_records_it(tiny_files, monkeypatch):
    win, cwin, tmp = tiny_files
    monkeypatch.setattr(ppcore.experiment, "load_model", lambda *a, **k: tiny_llama())
    spy = Spy()
    monkeypatch.setattr(ppcore.experiment, "calibrate", spy.wrap(calibrate))
    four = _eval(tmp, "four.json", "--calib-batch-size", "4")
    default = _eval(tmp, "default.json")
    assert [bs for bs, _ in spy.calls] == [4, CALIB_BATCH_SIZE]
    assert four["protocol"]["calibration"]["batch_size"] == 4
    assert default["protocol"]["calibration"]["batch_size"] == CALIB_BATCH_SIZE
    assert four["protocol"]["data"]["batch_size"] == default["protocol"]["data"]["batch_size"] == 4

    # The statistics are calibrate(..., 4)'s, and FLAP's compensation follows them into the perplexity.
    lm = tiny_llama()
    direct4 = calibrate(lm, cwin, 4, cache=False, progress=False)
    direct20 = calibrate(lm, cwin, CALIB_BATCH_SIZE, cache=False, progress=False)
    _same_stats(spy.calls[0][1], direct4)
    _same_stats(spy.calls[1][1], direct20)
    # Two batches of 4 leave the official baseline at mean / 4; one batch of all 8 at mean / 8.
    b4, b20 = direct4.get(1, "mlp").baseline, direct20.get(1, "mlp").baseline
    torch.testing.assert_close(b4, 2 * b20)
    cfg = PruneConfig(method="flap", ratio=0.4, skip_layers=(0,), mlp_multiple=8)
    assert four["ppl"] == pytest.approx(evaluate(lm, cfg, win, 4, direct4, progress=False).ppl, rel=1e-9)
    assert default["ppl"] == pytest.approx(evaluate(lm, cfg, win, 4, direct20, progress=False).ppl, rel=1e-9)
    assert four["ppl"] != pytest.approx(default["ppl"], rel=1e-6)


@pytest.mark.parametrize("value", ["0", "-3", "100000"])
def test_calib_batch_size_out_of_range_exits_2(value, capsys, monkeypatch):
    monkeypatch.setattr(ppcore.experiment, "load_model", lambda *a, **k: pytest.fail("no model work"))
    monkeypatch.setattr(ppcore.loading, "load_model", lambda *a, **k: pytest.fail("no model work"))
    for cmd in (["eval"], ["bench"], ["generate", "--prompt", "x"], ["speed"]):
        assert main(cmd + ["--calib-batch-size", value]) == 2
        err = capsys.readouterr().err
        assert "calibration batch size must be a whole number" in err and err.count("\n") == 1


def test_calib_batch_size_prepare_checks_it():
    # prepare takes the calibration as a CalibConfig, which refuses the size before anything loads.
    with pytest.raises(ConfigError):
        prepare(calib=CalibConfig(batch_size=0))


def test_calib_batch_size_speed_calibrates_with_it_and_records_it(tmp_path, monkeypatch):
    monkeypatch.setattr(ppcore.loading, "load_model", lambda *a, **k: tiny_llama())
    spy = Spy()
    monkeypatch.setattr(ppcore.calibrate, "calibrate", spy.wrap(calibrate))
    common = ["speed", "--methods", "flap", "--ratio", "0.2", "--batch-size", "2", "--seq-len", "16",
              "--repeats", "1", "--calib-windows", "8", "--no-hf", "--quiet", "--cache-dir", str(tmp_path)]
    assert main(common + ["--calib-batch-size", "4", "--json", str(tmp_path / "four.json")]) == 0
    assert main(common + ["--json", str(tmp_path / "default.json")]) == 0
    four, default = (json.loads((tmp_path / f).read_text()) for f in ("four.json", "default.json"))
    assert [bs for bs, _ in spy.calls] == [4, CALIB_BATCH_SIZE]
    assert four["calibration"]["batch_size"] == 4 and default["calibration"]["batch_size"] == CALIB_BATCH_SIZE
    assert four["calibration"]["windows"] == 8 and four["calibration"]["seq_len"] == 16
    # speed's calibration windows are its own random tokens: the same ones, re-batched.
    g = torch.Generator().manual_seed(0)
    torch.randint(0, 128, (2, 16), generator=g)
    cwin = torch.randint(0, 128, (8, 16), generator=g)
    _same_stats(spy.calls[0][1], calibrate(tiny_llama(), cwin, 4, cache=False, progress=False))


def test_calib_batch_size_generate_calibrates_with_it_and_records_it(default_lm, tmp_path, monkeypatch):
    monkeypatch.setattr(ppcore.loading, "load_model", lambda *a, **k: default_lm)
    spy = Spy()
    monkeypatch.setattr(ppcore.calibrate, "calibrate", spy.wrap(calibrate))
    common = ["generate", "--prompt", "The capital of France is", "--method", "flap", "--ratio", "0.4",
              "--max-new-tokens", "1", "--calib-windows", "4", "--calib-seq-len", "16", "--quiet"]
    assert main(common + ["--calib-batch-size", "2", "--json", str(tmp_path / "two.json")]) == 0
    assert main(common + ["--json", str(tmp_path / "default.json")]) == 0
    two, default = (json.loads((tmp_path / f).read_text()) for f in ("two.json", "default.json"))
    assert [bs for bs, _ in spy.calls] == [2, CALIB_BATCH_SIZE]
    assert two["calibration"]["batch_size"] == 2 and default["calibration"]["batch_size"] == CALIB_BATCH_SIZE
    assert two["calibration"]["windows"] == 4 and two["calibration"]["seq_len"] == 16
    assert spy.calls[0][1].batch_size == 2
    # dense needs no calibration, and says so
    assert main(["generate", "--prompt", "Hi", "--method", "dense", "--max-new-tokens", "1", "--quiet",
                 "--json", str(tmp_path / "dense.json")]) == 0
    assert json.loads((tmp_path / "dense.json").read_text())["calibration"] is None


def test_calib_batch_size_bench_calibrates_with_it_and_records_it(default_lm, tmp_path, monkeypatch):
    monkeypatch.setattr(ppcore.experiment, "load_model", lambda *a, **k: default_lm)
    spy = Spy()
    monkeypatch.setattr(ppcore.experiment, "calibrate", spy.wrap(calibrate))
    assert main(["bench", "--methods", "flap", "--ratios", "0.4", "--seeds", "0", "--seq-len", "16",
                 "--batch-size", "2", "--batches", "1", "--calib-windows", "4", "--calib-batch-size", "3",
                 "--official", "none", "--out-dir", str(tmp_path), "--quiet"]) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["seeded"]
    assert [bs for bs, _ in spy.calls] == [3]
    assert [r["protocol"]["calibration"]["batch_size"] for r in rows] == [3, 3]


# --- the app ---------------------------------------------------------------------------------------------

def test_calib_batch_size_app_setting_is_capped_and_checked(monkeypatch):
    from app.batch import check_settings
    from app.state import DEMO_LIMITS, LOCAL, Settings, from_query

    assert Settings().calib_batch_size == CALIB_BATCH_SIZE
    s, problems = from_query({"calib_batch_size": "4"})
    assert s.calib_batch_size == 4 and problems == [] and s.to_query() == {"calib_batch_size": "4"}
    s, problems = from_query({"calib_batch_size": "many"})
    assert s.calib_batch_size == CALIB_BATCH_SIZE and len(problems) == 1
    monkeypatch.delenv("PP_DEMO", raising=False)
    for bad in (0, LOCAL.calib_batch_size + 1):
        with pytest.raises(DataError, match="calibration batch size"):
            check_settings(Settings(calib_batch_size=bad))
    monkeypatch.setenv("PP_DEMO", "1")
    assert Settings(calib_batch_size=10_000).locked().calib_batch_size == DEMO_LIMITS.calib_batch_size
    with pytest.raises(DataError, match="calibration batch size"):
        check_settings(Settings(calib_batch_size=DEMO_LIMITS.calib_batch_size + 1))


def test_calib_batch_size_app_url_and_sidebar(monkeypatch):
    from streamlit.testing.v1 import AppTest

    import app.engine as engine
    import ppcore.session as session
    from app.state import demo

    monkeypatch.delenv("PP_DEMO", raising=False)
    if demo():
        pytest.skip("PP_DEMO=1 was set when the app was imported")
    spy = Spy()
    monkeypatch.setattr(session, "calibrate", spy.wrap(calibrate))
    # 6 windows: a calibration no other test asks for, so st.cache_resource cannot answer it.
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params.update(dict(batch_size="2", seq_len="16", calib_windows="6", calib_seq_len="32",
                                calib_batch_size="4"))
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    r = at.session_state["result"]
    assert r.settings.calib_batch_size == 4 and r.analysis.protocol["calibration"]["batch_size"] == 4
    assert [bs for bs, _ in spy.calls] == [4]
    assert at.number_input(key="s_calib_batch_size").value == 4
    assert json.loads(json.dumps(r.run_record().to_dict()))["protocol"]["calibration"]["batch_size"] == 4

    at.number_input(key="s_calib_batch_size").set_value(CALIB_BATCH_SIZE)
    at.button(key="run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    r = at.session_state["result"]
    assert r.analysis.protocol["calibration"]["batch_size"] == CALIB_BATCH_SIZE
    assert [bs for bs, _ in spy.calls] == [4, CALIB_BATCH_SIZE]
    assert ("calibration: 6 windows of 32 tokens from wiki-vital, in 1 batch of 6 (batch size 20)"
            in " ".join(m.value for m in at.markdown))
    _same_stats(spy.calls[0][1], calibrate(engine.get_model("default", "auto", "auto"),
                                           ppcore.experiment.calibration_windows(
                                               engine.get_model("default", "auto", "auto"), "wiki-vital", 6, 32, 0)[0],
                                           4, cache=False, progress=False))


def test_calib_batch_size_partial_batches_are_stated():
    """Fewer windows than the batch size (the app's 16 at 20) run as one smaller batch: said, not hidden."""
    from ppcore.config import calibration_batches, describe_calibration_batches

    assert calibration_batches(100, 20) == (5, 20) and describe_calibration_batches(100, 20) == "5 batches of 20"
    assert calibration_batches(16, 20) == (1, 16)
    assert describe_calibration_batches(16, 20) == "1 batch of 16 (batch size 20)"
    assert calibration_batches(30, 20) == (2, 10)
    assert describe_calibration_batches(30, 20) == "2 batches: 1 of 20 and 1 of 10"
