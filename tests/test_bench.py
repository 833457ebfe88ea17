"""bench interleaves methods without changing any method's numbers; its tables compute PRR right;
speed.measure reports every block; the CLI's bench and speed commands run end to end."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ppcore import PruneConfig
from ppcore.bench import bench_setup
from ppcore.bench_report import aggregate, chart_html, markdown
from ppcore.calibrate import calibrate
from ppcore.evaluate import evaluate
from ppcore.experiment import EvalSetup
from ppcore.speed import measure, per_layer_markdown, summary_markdown
from tests.conftest import tiny_llama

ROOT = Path(__file__).resolve().parents[1]


def tiny_eval_setup() -> EvalSetup:
    """An EvalSetup on a tiny Llama: 12 scored windows of 32 tokens in batches of 4, calibrated on 8."""
    lm = tiny_llama()
    g = torch.Generator().manual_seed(0)
    setup = EvalSetup(lm, torch.randint(0, 128, (12, 32), generator=g), torch.randint(0, 128, (8, 32), generator=g),
                      4, {"model": "tiny"}, progress=False)
    setup._calib = calibrate(lm, setup.calib_windows, 4, cache=False, progress=False)
    return setup


def test_interleaved_bench_equals_separate_evals():
    setup = tiny_eval_setup()
    cfgs = [PruneConfig(method="dense")] + [PruneConfig(method=m, ratio=0.5, skip_layers=(0,), mlp_multiple=8)
                                            for m in ("pp", "wanda-sp", "flap", "fullbatch")]
    rows = bench_setup(setup, cfgs, repeats=2, seed=0, progress=False)
    for cfg, row in zip(cfgs, rows):
        alone = evaluate(setup.lm, cfg, setup.windows, 4, setup._calib, progress=False)
        assert row["batch_loss"] == pytest.approx(alone.batch_loss, abs=1e-6), cfg.method
        for name in ("flops_ratio", "decoder_flops_ratio", "probe_flops_ratio", "decoder_probe_flops_ratio"):
            assert row[name] == pytest.approx(getattr(alone, name)), (cfg.method, name)
        assert len(row["batch_seconds"]) == 3 and row["seed"] == 0


def test_report_prr_and_standard_error():
    rows = [
        {"method": "dense", "ratio": 0.0, "seed": s, "ppl": 10.0, "seconds": 10.0, "flops_ratio": 1.0,
         "probe_flops_ratio": 0.0} for s in (0, 1)
    ] + [
        {"method": "pp", "ratio": 0.4, "seed": 0, "ppl": 14.0, "seconds": 8.0, "flops_ratio": 0.75,
         "probe_flops_ratio": 0.01},
        {"method": "pp", "ratio": 0.4, "seed": 1, "ppl": 16.0, "seconds": 8.0, "flops_ratio": 0.75,
         "probe_flops_ratio": 0.01},
        {"method": "fullbatch", "ratio": 0.4, "seed": 0, "ppl": 12.0, "seconds": 11.0, "flops_ratio": 1.2,
         "probe_flops_ratio": 0.5},
    ]
    agg = {a["method"]: a for a in aggregate(rows)}
    assert agg["pp"]["ppl"] == (15.0, pytest.approx(1.0))
    assert agg["pp"]["prr"][0] == pytest.approx(25.0)  # (15 - 10) / (1 - 0.8)
    assert agg["fullbatch"]["prr"] is None  # slower than dense: no runtime saved
    table = markdown(rows)
    assert "| pp | 40% | - / - | 15.00 ± 1.00 |" in table and "n/a (no time saved)" in table
    assert "plotly" in chart_html(rows, "t").lower()


def test_speed_measure_reports_every_block():
    setup = tiny_eval_setup()
    cfgs = [PruneConfig(method=m, ratio=0.5, skip_layers=(0,), mlp_multiple=8) for m in ("pp", "flap")]
    res = measure(setup.lm, cfgs, setup.windows[:4], setup._calib, repeats=2, hf=True)
    assert [r["method"] for r in res["runs"]] == ["dense", "pp", "flap"]
    pp = res["runs"][1]
    assert len(pp["blocks"]) == 2 * setup.lm.adapter.dims.num_layers
    assert all(b["full_s"] > 0 for b in pp["blocks"])
    assert any(b["probe_s"] > 0 for b in pp["blocks"] if b["pruned"])
    assert pp["flops_ratio"] < 1 and res["hf_forward_s"] > 0 and pp["head_s"] > 0 and pp["embed_s"] > 0
    assert "| pp | 50% |" in summary_markdown(res)
    # PP's per-batch slicing made the per-model transposes of the pruned layers; the summary says how large.
    assert res["model_extra_bytes"] == setup.lm.extra_weight_bytes() > 0
    assert f"per loaded model, shared by every run (transposed o_proj/down_proj for per-batch slicing): " \
           f"{res['model_extra_bytes'] / 2**20:.1f} MiB" in summary_markdown(res)
    # Achieved next to nominal: layer 0 skipped, r_eff = round(0.5 * L / (L - 1), 2) in the others.
    dims, n = setup.lm.adapter.dims, setup.lm.adapter.dims.num_layers
    r_eff = round(0.5 * n / (n - 1), 2)
    assert pp["heads_removed"] == pytest.approx((n - 1) * int(r_eff * dims.num_heads) / (n * dims.num_heads))
    table = per_layer_markdown(res, "pp").splitlines()
    assert len(table) == 4 + n and table[4].startswith("| 0 | 1.000 |")  # layer 0 skipped: dense FLOPs
    assert pp["decoder_flops_ratio"] < pp["flops_ratio"] and pp["decoder_probe_flops_ratio"] > pp["probe_flops_ratio"]


def test_cli_bench_and_speed_run(tmp_path):
    common = ["--seq-len", "32", "--batch-size", "2", "--calib-windows", "4", "--quiet", "--device", "cpu"]
    p = subprocess.run([sys.executable, "-m", "ppcore", "bench", "--methods", "pp,flap", "--ratios", "0.4",
                        "--seeds", "0", "--batches", "1", "--official", "none", "--out-dir", str(tmp_path)] + common,
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((tmp_path / "bench.json").read_text())
    assert [r["method"] for r in res["seeded"]] == ["dense", "pp", "flap"]
    assert all(math.isfinite(r["ppl"]) for r in res["seeded"])
    assert (tmp_path / "bench.html").stat().st_size > 0 and "| pp | 40% |" in (tmp_path / "bench.md").read_text()
    assert "FLOPs / dense (model) | FLOPs / dense (decoder)" in (tmp_path / "bench.md").read_text()
    assert all(r["protocol"]["calibration"]["batch_size"] == 20 for r in res["seeded"])
    pp = res["seeded"][1]
    assert pp["decoder_flops_ratio"] < pp["flops_ratio"] < 1
    p = subprocess.run([sys.executable, "-m", "ppcore", "speed", "--methods", "pp", "--repeats", "1", "--per-layer",
                        "--json", str(tmp_path / "speed.json")] + common,
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    speed = json.loads((tmp_path / "speed.json").read_text())
    assert speed["runs"][1]["method"] == "pp" and speed["calibration"]["batch_size"] == 20
    assert speed["runs"][1]["decoder_flops_ratio"] < speed["runs"][1]["flops_ratio"] < 1
    assert "pp at 40%, per layer" in p.stdout and "| removed: heads / channels |" in p.stdout


def test_bench_official_windows_only_writes_compare_rows(tmp_path, monkeypatch, capsys):
    """`bench --seeds none --official DIR` is what bench/compare.py --official was: the official windows
    only, its rows (same keys) in --official-out and the table with per-batch losses beside the official."""
    import numpy as np

    import ppcore.experiment
    from ppcore.cli import main

    g = torch.Generator().manual_seed(5)
    ref = tmp_path / "official"
    ref.mkdir()
    np.save(ref / "eval_windows.npy", torch.randint(0, 128, (40, 16), generator=g).numpy())
    np.save(ref / "calib_windows.npy", torch.randint(0, 128, (20, 16), generator=g).numpy())
    (ref / "results.json").write_text(json.dumps({"results": [
        {"method": "dense", "ratio": 0.0, "ppl": 100.0, "batch_loss": [4.6, 4.61]},
        {"method": "pp", "ratio": 0.5, "ppl": 120.0, "batch_loss": [4.8, 4.79]}]}))
    monkeypatch.setattr(ppcore.experiment, "load_model", lambda *a, **k: tiny_llama())
    out = tmp_path / "res" / "official.json"
    out.parent.mkdir()
    assert main(["bench", "--seeds", "none", "--official", str(ref), "--methods", "pp,flap", "--ratios", "0.5",
                 "--skip-layers", "0", "--mlp-multiple", "8", "--official-out", str(out),
                 "--out-dir", str(tmp_path / "res"), "--quiet", "--cache-dir", str(tmp_path / "cache")]) == 0
    rows = json.loads(out.read_text())
    assert [(r["method"], r["ratio"]) for r in rows] == [("dense", 0.0), ("pp", 0.5), ("flap", 0.5)]
    for r in rows:
        assert {"method", "ratio", "ppl", "batch_loss", "official_ppl", "official_batch_loss", "flops_ratio",
                "decoder_flops_ratio", "probe_flops_ratio", "decoder_probe_flops_ratio", "seconds",
                "protocol"} <= set(r)
        assert len(r["batch_loss"]) == 2 and r["protocol"]["front_end"] == "bench"
        assert r["protocol"]["data"]["windows_file"] == "eval_windows.npy"
        assert r["protocol"]["calibration"]["batch_size"] == 20 and r["protocol"]["data"]["batch_size"] == 20
    assert rows[1]["official_ppl"] == 120.0 and rows[1]["official_batch_loss"] == [4.8, 4.79]
    assert rows[2]["official_ppl"] is None and rows[2]["official_batch_loss"] is None
    assert all(r["protocol"]["config"]["skip_layers"] == [0] for r in rows[1:])  # --skip-layers reached every config
    # The same numbers as one evaluate() per method on those windows (what compare.py ran).
    lm = tiny_llama()
    calib = calibrate(lm, torch.from_numpy(np.load(ref / "calib_windows.npy")), 20, cache=False, progress=False)
    cfg = PruneConfig(method="pp", ratio=0.5, skip_layers=(0,), mlp_multiple=8)
    alone = evaluate(lm, cfg, torch.from_numpy(np.load(ref / "eval_windows.npy")), 20, calib, progress=False)
    assert rows[1]["batch_loss"] == pytest.approx(alone.batch_loss, abs=1e-6)
    table = (tmp_path / "res" / "official.md").read_text()
    assert "| method | ratio | ours | official | diff | our batch losses | official batch losses |" in table
    assert "4.8000, 4.7900" in table and "| flap | 50% |" in table
    assert not (tmp_path / "res" / "bench.json").exists()  # nothing seeded: the seeded files are left alone
    assert "our batch losses" in capsys.readouterr().out


def test_bench_pp_plus_switches_set_pp_plus_runs_only(tmp_path, monkeypatch):
    """`bench --methods pp,pp-plus --recover on`: the switch reaches pp-plus's runs and PP's stay PP's."""
    import numpy as np

    import ppcore.experiment
    from ppcore.cli import main

    g = torch.Generator().manual_seed(6)
    ref = tmp_path / "official"
    ref.mkdir()
    np.save(ref / "eval_windows.npy", torch.randint(0, 128, (40, 16), generator=g).numpy())
    np.save(ref / "calib_windows.npy", torch.randint(0, 128, (20, 16), generator=g).numpy())
    (ref / "results.json").write_text(json.dumps({"results": []}))
    monkeypatch.setattr(ppcore.experiment, "load_model", lambda *a, **k: tiny_llama())
    out = tmp_path / "official.json"
    assert main(["bench", "--seeds", "none", "--official", str(ref), "--methods", "pp,pp-plus", "--ratios", "0.5",
                 "--skip-layers", "0", "--mlp-multiple", "8", "--recover", "on", "--compensate", "off",
                 "--official-out", str(out), "--out-dir", str(tmp_path), "--quiet",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    cfg = {r["method"]: r["protocol"]["config"] for r in json.loads(out.read_text())}
    assert list(cfg) == ["dense", "pp", "pp-plus"]
    assert cfg["pp-plus"]["recover"] == "on" and cfg["pp"]["recover"] == "off" and cfg["dense"]["recover"] == "off"


def test_bench_writes_after_every_seed_and_resumes(tmp_path, monkeypatch):
    """A bench stopped in its second seed keeps its first in bench.json; `resume` reruns only what is missing, and
    refuses a file written for other configs."""
    import ppcore.bench as bench
    from ppcore.errors import DataError

    ran: list[int] = []

    def fake_setup(s, cfgs, repeats, seed, progress):
        if seed == 1 and not ran.count(-1):
            raise KeyboardInterrupt  # the user stops it during seed 1
        ran.append(seed)
        return [{"method": c.method, "ratio": c.ratio, "seed": seed, "ppl": 10.0 + seed} for c in cfgs]

    monkeypatch.setattr(bench, "prepare", lambda **kw: None)
    monkeypatch.setattr(bench, "bench_setup", fake_setup)
    cfgs = bench.configs(["pp"], [0.4])
    path = tmp_path / "bench.json"
    with pytest.raises(KeyboardInterrupt):
        bench.run_bench(cfgs, [0, 1], json_path=str(path), progress=False, seq_len=32)
    kept = json.loads(path.read_text())
    assert kept["seeds"] == [0] and {r["seed"] for r in kept["seeded"]} == {0} and ran == [0]
    ran.append(-1)  # seed 1 may run now
    res = bench.run_bench(cfgs, [0, 1], json_path=str(path), resume=True, progress=False, seq_len=32)
    assert ran == [0, -1, 1] and res["seeds"] == [0, 1] and len(res["seeded"]) == 4
    assert json.loads(path.read_text())["seeds"] == [0, 1]
    with pytest.raises(DataError, match="another bench"):
        bench.run_bench(bench.configs(["pp"], [0.2]), [0, 1], json_path=str(path), resume=True, progress=False,
                        seq_len=32)
    with pytest.raises(DataError, match="another bench"):
        bench.run_bench(cfgs, [0, 1], json_path=str(path), resume=True, progress=False, seq_len=64)
