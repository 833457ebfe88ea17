"""Reproduce the official code's table on its own windows (shared/reference/official_cpu_run).

    python bench/official_table.py [--ref ../shared/reference/official_cpu_run] [--out bench/results/official.json]

One process, one loaded model, one calibration; every method and ratio of the official table,
each with the official protocol (warm-up on rows 0-19, then 3 scored batches of 20).
Prints a Markdown table: our perplexity beside the official one, and the relative difference.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ppcore import PruneConfig  # noqa: E402
from ppcore.setup import prepare  # noqa: E402

DEFAULT_REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "official_cpu_run"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", default=str(DEFAULT_REF))
    ap.add_argument("--out", default="bench/results/official.json")
    ap.add_argument("--methods", default="dense,pp,fullbatch,wanda-sp,flap")
    ap.add_argument("--ratios", default="0.2,0.4")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    ref = Path(a.ref)
    official = json.loads((ref / "results.json").read_text())["results"]
    setup = prepare(windows_file=str(ref / "eval_windows.npy"), calib_windows_file=str(ref / "calib_windows.npy"),
                    batch_size=20, device=a.device, dtype="float32")
    rows = []
    for method in a.methods.split(","):
        ratios = [0.0] if method == "dense" else [float(r) for r in a.ratios.split(",")]
        for ratio in ratios:
            res = setup.run(PruneConfig(method=method, ratio=ratio))
            off = next((o for o in official if o["method"] == method and abs(o["ratio"] - ratio) < 1e-9), None)
            row = res.summary()
            row["official_ppl"] = off["ppl"] if off else None
            row["official_batch_loss"] = off["batch_loss"] if off else None
            rows.append(row)
            print(res.line(), f"official={row['official_ppl']}", file=sys.stderr, flush=True)
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps(rows, indent=1))
    print("| method | ratio | ours | official | diff | our batch losses | official batch losses |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        off = r["official_ppl"]
        diff = f"{100 * (r['ppl'] / off - 1):+.2f} %" if off else "-"
        ours_l = ", ".join(f"{x:.4f}" for x in r["batch_loss"])
        off_l = ", ".join(f"{x:.4f}" for x in r["official_batch_loss"]) if off else "-"
        print(f"| {r['method']} | {r['ratio']:.0%} | {r['ppl']:.2f} | {off if off else '-'} | {diff} | {ours_l} | {off_l} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
