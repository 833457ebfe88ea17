"""PP+ against PP on the default protocol: the pass rule's table from a `bench` run of dense, pp and pp-plus.

    python -m ppcore bench --methods dense,pp,pp-plus --ratios 0.4 --seeds S --official none \\
        --out-dir bench/results/pp_plus/default/seedS          (one process per seed: each writes its rows)
    PYTHONPATH=. .venv/bin/python bench/pp_plus_default.py [BENCH_JSON ...]

(default: every bench.json under bench/results/pp_plus/default/, their rows merged).

Per ratio: perplexity mean and standard error over seeds for dense, PP and PP+; the paired difference PP - PP+
(mean and standard error over seeds: the improvement is significant when larger than twice its SE, as
../shared/BENCHMARKS.md asks); the fraction of PP's degradation removed, (ppl_PP - ppl) / (ppl_PP - ppl_dense),
from the seed means (dense's over the same seeds); the decoder FLOPs ratios; and PP+'s time over PP's, the median
over every scored batch of
the two runs' per-batch seconds, measured interleaved in that one process (one run, not the noise rule's three).
Writes bench/results/pp_plus/default/default.md and prints it.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

DEFAULT = Path(__file__).resolve().parent / "results" / "pp_plus" / "default"


def mean_se(xs: list[float]) -> tuple[float, float]:
    m = statistics.fmean(xs)
    return m, (statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else float("nan"))


def table(rows: list[dict]) -> str:
    by: dict = {}
    for r in rows:
        by.setdefault((r["method"], r["ratio"]), {})[r["seed"]] = r
    all_seeds = sorted(by[("dense", 0.0)])
    dm, dse = mean_se([by[("dense", 0.0)][s]["ppl"] for s in all_seeds])
    out = [f"Seeds {', '.join(map(str, all_seeds))}; dense {dm:.2f} ± {dse:.2f}.", "",
           "| ratio | seeds | PP | PP+ | PP - PP+ (paired) | > 2 SE | removed of PP's degradation "
           "| decoder FLOPs PP / PP+ | decoder probe FLOPs PP / PP+ | PP+ time / PP's (median per batch) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for ratio in sorted({r for m, r in by if m == "pp"}, reverse=True):
        pp, plus = by[("pp", ratio)], by[("pp-plus", ratio)]
        seeds = sorted(set(pp) & set(plus) & set(all_seeds))  # a ratio may have been run on fewer seeds
        dense = [by[("dense", 0.0)][s]["ppl"] for s in seeds]
        dm = statistics.fmean(dense)
        a = [pp[s]["ppl"] for s in seeds]
        b = [plus[s]["ppl"] for s in seeds]
        diff = [x - y for x, y in zip(a, b)]
        (am, ase), (bm, bse), (fm, fse) = mean_se(a), mean_se(b), mean_se(diff)
        removed = (am - bm) / (am - dm)
        per_seed = [(x - y) / (x - d) for x, y, d in zip(a, b, dense)]
        times = [t2 / t1 for s in seeds for t1, t2 in zip(pp[s]["batch_seconds"], plus[s]["batch_seconds"])]
        def avg(key: str) -> list[float]:
            return [statistics.fmean(by[(m, ratio)][s][key] for s in seeds) for m in ("pp", "pp-plus")]

        f, pf = avg("decoder_flops_ratio"), avg("decoder_probe_flops_ratio")
        seeds_text = ", ".join(f"{x:.1%}" for x in per_seed)
        out.append(f"| {ratio:g} | {', '.join(map(str, seeds))} "
                   f"| {am:.2f} ± {ase:.2f} | {bm:.2f} ± {bse:.2f} | {fm:.2f} ± {fse:.2f} | "
                   f"{'yes' if fm > 2 * fse else 'no'} | {removed:.1%} (per seed {seeds_text}) | "
                   f"{f[0]:.4f} / {f[1]:.4f} ({f[1] / f[0] - 1:+.2%}) | {pf[0]:.4f} / {pf[1]:.4f} | "
                   f"{statistics.median(times):.3f} |")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted(DEFAULT.glob("**/bench.json"))
    rows = [r for p in paths for r in json.loads(p.read_text())["seeded"]]
    text = table(rows)
    (DEFAULT / "default.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
