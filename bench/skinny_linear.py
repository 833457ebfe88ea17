"""F.linear against the "skinny" orientation (w @ x^T)^T on the default model's weight shapes, for few to many rows.

Usage: python -m bench.skinny_linear [--repeats N]

Prints, per weight shape and row count, the median milliseconds of each and whether the results are
bit-identical. The weights are random with the default model's shapes (SmolLM2-135M: hidden 576, 9
heads of 64 over 3 key/value heads, MLP 1536, vocabulary 49152); 40 distinct copies are cycled so
that, as in a walk, a weight is not in cache when it is used.

Why it is here: from 2026-11-30 to 2026-12-02 the engine ran products over at most 4 rows (a decode step of a
small batch) in the skinny orientation, measured then 1.1x to 3.6x faster at 2 and 4 rows; on 2026-12-02 the same
script on the same kind of machine gave 0.4x to 0.8x, i.e. it depends on the CPU under the (virtual) machine and
MKL's choice of kernel for it. The engine now always uses F.linear (HF's own product, its bits); rerun this before
bringing an orientation trick back.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


SHAPES = {"q/o (576 x 576)": (576, 576), "k/v (192 x 576)": (192, 576), "gate/up (1536 x 576)": (1536, 576),
          "down (576 x 1536)": (576, 1536)}
ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 512)


def skinny(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (rows, K) @ w (N, K)^T computed as (w @ x^T)^T, made contiguous: F.linear's product to float rounding."""
    return torch.mm(w, x.t()).t().contiguous()


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
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| weight | rows | F.linear ms | skinny ms | speed-up | bit-identical |\n|---|---|---|---|---|---|")
    with torch.inference_mode():
        for name, (n, k) in SHAPES.items():
            weights = [torch.randn(n, k, generator=g) for _ in range(40)]
            for rows in ROWS:
                x = torch.randn(rows, k, generator=g)
                ref, ours = _median_ms(F.linear, weights, x, a.repeats), _median_ms(skinny, weights, x, a.repeats)
                same = torch.equal(F.linear(x, weights[0]), skinny(x, weights[0]))
                print(f"| {name} | {rows} | {ref:.3f} | {ours:.3f} | {ref / ours:.2f}x | {'yes' if same else 'no'} |")


if __name__ == "__main__":
    main()
