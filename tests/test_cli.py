"""The CLI: a real small eval with --json/--record, and one-line exit-2 errors for bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ppcore.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_eval_writes_json_and_record(tmp_path):
    out, rec = tmp_path / "out.json", tmp_path / "rec.json"
    cmd = [sys.executable, "-m", "ppcore", "eval", "--model", "default", "--method", "pp", "--ratio", "0.4",
           "--seq-len", "64", "--batch-size", "4", "--batches", "2", "--calib-windows", "8", "--seed", "0",
           "--device", "cpu", "--json", str(out), "--record", str(rec), "--quiet"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().startswith("pp ratio=0.4 ppl=")
    res = json.loads(out.read_text())
    for key in ("method", "ratio", "ppl", "tokens", "seconds", "flops_ratio", "decoder_flops_ratio",
                "probe_flops_ratio", "decoder_probe_flops_ratio", "flops", "protocol"):
        assert key in res
    assert res["tokens"] == 2 * 4 * 63
    assert 0.5 < res["flops_ratio"] < 1.0 and 0.0 < res["probe_flops_ratio"] < 0.1
    # The LM head is never pruned: without it (the paper's count) the pruned share is smaller, the probe's larger.
    assert res["decoder_flops_ratio"] < res["flops_ratio"]
    assert res["decoder_probe_flops_ratio"] > res["probe_flops_ratio"]
    proto = res["protocol"]
    assert proto["seed"] == 0 and proto["data"]["dataset"] == "wiki-vital" and proto["config"]["method"] == "pp"
    assert proto["model"]["fingerprint"] and proto["calibration"]["windows"] == 8
    assert proto["calibration"]["batch_size"] == 20  # the default, not the eval batch size (4)
    record = json.loads(rec.read_text())
    assert [b["phase"] for b in record["batches"]] == ["warmup", "scored", "scored"]
    b = record["batches"][1]
    assert np.asarray(b["input_ids"]).shape == (4, 64)
    assert len(b["layers"]) == 30
    assert b["layers"][0]["attn"]["probe_tokens"] == [] and len(b["layers"][0]["mlp"]["kept"]) == 1536
    assert len(b["layers"][5]["attn"]["kept"]) == 6 and len(b["layers"][5]["mlp"]["kept"]) == 896
    assert len(b["layers"][5]["attn"]["probe_tokens"]) == 32 and b["layers"][5]["attn"]["probe_samples"]


@pytest.mark.parametrize("argv", [
    ["eval", "--ratio", "1.5"],
    ["eval", "--ratio", "abc"],
    ["eval", "--method", "magic"],
    ["eval", "--token-frac", "0"],
    ["eval", "--skip-layers", "x-y"],
    ["eval", "--skip-layers", "none"],
    ["eval", "--skip-layers", "3-1"],
    ["eval", "--calib-batch-size", "0"],
    ["eval", "--model", "/nonexistent/model"],
    ["eval", "--model", "not a model!"],
    ["eval", "--windows", "/nonexistent/windows.npy"],
    ["eval", "--dataset", "nosuchcorpus"],
    ["eval", "--skip-layers", "99", "--windows", "/nonexistent.npy"],
    ["eval", "--json", "/nonexistent/dir/out.json"],
    ["info", "--device", "tpu"],
])
def test_bad_arguments_exit_2_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as e:
        sys.exit(main(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err


def test_generate_prints_dense_and_pruned(tmp_path):
    out = tmp_path / "gen.json"
    cmd = [sys.executable, "-m", "ppcore", "generate", "--prompt", "The capital of France is", "--method", "pp",
           "--ratio", "0.4", "--max-new-tokens", "4", "--calib-windows", "4", "--calib-seq-len", "32", "--quiet",
           "--device", "cpu", "--json", str(out)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "== dense:" in p.stdout and "== pp 0.4:" in p.stdout
    gen = json.loads(out.read_text())
    runs = gen["runs"]
    assert gen["calibration"]["batch_size"] == 20 and gen["calibration"]["windows"] == 4
    assert [r["method"] for r in runs] == ["dense", "pp"]
    assert all(1 <= len(r["tokens"][0]) <= 4 and r["decode_tokens_per_s"] > 0 for r in runs)
