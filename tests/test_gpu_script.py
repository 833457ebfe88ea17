"""bench/gpu.sh, the one script a lent GPU machine runs, checked here on the CPU at toy sizes (SMOKE=1), so that a
session that draws a GPU spends its minutes measuring, not mending the script (issue 11)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEED_STEPS = ("speed_default_8x64", "speed_default_20x512", "speed_gemma3", "speed_llama7b")


def _run(out: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), str(out)], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "DEVICE": "cpu", "SMOKE": "1", "PY": sys.executable, **env})


def test_gpu_script_runs_every_step_at_toy_sizes(tmp_path):
    res = _run(tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "all steps passed" in res.stderr
    machine = (tmp_path / "machine.txt").read_text()
    assert "torch" in machine and "transformers" in machine
    for step in SPEED_STEPS:
        assert f"[{step}: exit 0 after" in (tmp_path / f"{step}.txt").read_text()
    speed = json.loads((tmp_path / "speed_default_8x64.json").read_text())
    assert [r["method"] for r in speed["runs"]] == ["dense", "pp", "wanda-sp", "flap"]
    assert speed["generation"] and all(r["seconds"] > 0 for r in speed["runs"])
    gemma = json.loads((tmp_path / "speed_gemma3.json").read_text())
    assert gemma["runs"][1]["flops_ratio"] < 1
    # The real default model loads here, so its checks ran, and offloading changed no number.
    plain = json.loads((tmp_path / "eval_pp.json").read_text())
    offloaded = json.loads((tmp_path / "eval_pp_offloaded.json").read_text())
    assert plain["method"] == offloaded["method"] == "pp" and plain["ppl"] == offloaded["ppl"]
    assert (tmp_path / "generate.json").exists() and not (tmp_path / "skipped.txt").exists()


def test_gpu_script_reports_every_failed_step_and_exits_1(tmp_path):
    res = _run(tmp_path, PY="false")  # every python step fails at once
    assert res.returncode == 1
    failed = res.stderr.strip().splitlines()[-1]
    assert failed.startswith("FAILED: ") and all(step in failed for step in SPEED_STEPS)
    assert (tmp_path / "skipped.txt").exists()  # `info` failed too: the real-model checks said why they did not run

