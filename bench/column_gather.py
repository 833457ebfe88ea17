"""Gathering a weight's kept columns (o_proj, down_proj: PP slices them every batch): index_select along the columns
against torch.gather with the index broadcast over rows, into a reused buffer as `ppcore.slices` does.

Usage: python -m bench.column_gather [--repeats N]

Prints the median milliseconds of each per weight shape (the default model's, at its 40 % keep counts) and whether
the two copies are equal. 30 distinct random weights are cycled so that, as in a walk, a weight is not in cache.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

SHAPES = {"o_proj (576 x 576), 384 kept": (576, 576, 384), "down_proj (576 x 1536), 896 kept": (576, 1536, 896)}


def _median_ms(fn, weights, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for w in weights:
            fn(w)
        times.append((time.perf_counter() - t0) / len(weights) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| weight | index_select ms | gather ms | speed-up | equal |\n|---|---|---|---|---|")
    with torch.inference_mode():
        for name, (rows, cols, kept) in SHAPES.items():
            weights = [torch.randn(rows, cols, generator=g) for _ in range(30)]
            idx = torch.randperm(cols, generator=g)[:kept].sort().values
            buf = torch.empty(rows, kept)
            wide = idx.expand(rows, -1)
            sel = _median_ms(lambda w: torch.index_select(w, 1, idx, out=buf), weights, a.repeats)
            gat = _median_ms(lambda w: torch.gather(w, 1, wide, out=buf), weights, a.repeats)
            same = torch.equal(weights[0].index_select(1, idx), torch.gather(weights[0], 1, wide))
            print(f"| {name} | {sel:.3f} | {gat:.3f} | {sel / gat:.2f}x | {'yes' if same else 'no'} |")


if __name__ == "__main__":
    main()
