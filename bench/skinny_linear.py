"""F.linear against ppcore.linear.linear on the default model's weight shapes, for few to many rows.

Usage: python -m bench.skinny_linear [--repeats N]

Prints, per weight shape and row count, the median milliseconds of each and whether the results are
bit-identical. The weights are random with the default model's shapes (SmolLM2-135M: hidden 576, 9
heads of 64 over 3 key/value heads, MLP 1536, vocabulary 49152); 40 distinct copies are cycled so
that, as in a walk, a weight is not in cache when it is used.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ppcore.linear import SKINNY_ROWS, linear

SHAPES = {"q/o (576 x 576)": (576, 576), "k/v (192 x 576)": (192, 576), "gate/up (1536 x 576)": (1536, 576),
          "down (576 x 1536)": (576, 1536)}
ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 512)


def _median_ms(fn, weights, x, repeats: int) -> float:
    for w in weights[:4]:
        fn(x, w)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for w in weights:
            fn(x, w)
        times.append((time.perf_counter() - t0) / len(weights) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; skinny path for <= {SKINNY_ROWS} rows")
    print("| weight | rows | F.linear ms | linear ms | speed-up | bit-identical |\n|---|---|---|---|---|---|")
    with torch.inference_mode():
        for name, (n, k) in SHAPES.items():
            weights = [torch.randn(n, k, generator=g) for _ in range(40)]
            for rows in ROWS:
                x = torch.randn(rows, k, generator=g)
                ref, ours = _median_ms(F.linear, weights, x, a.repeats), _median_ms(linear, weights, x, a.repeats)
                same = torch.equal(F.linear(x, weights[0]), linear(x, weights[0]))
                print(f"| {name} | {rows} | {ref:.3f} | {ours:.3f} | {ref / ours:.2f}x | {'yes' if same else 'no'} |")


if __name__ == "__main__":
    main()
