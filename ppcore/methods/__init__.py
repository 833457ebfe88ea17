"""Pruning methods: which heads and channels the full inference keeps, per layer and block.

One small class per method behind a registry (`registry.METHOD_CLASSES`, the one source of the method
names): `dense` keeps everything; `pp` probes every batch and fuses the probe with its history;
`fullbatch` probes with the whole batch (an oracle); `wanda-sp`, `flap` and `ppsp-calib` decide once from
calibration statistics and reuse their slices. `Pruner` is the per-run object the walk uses; it builds
the config's method and delegates to it. `base` says how to add a method.
"""
from __future__ import annotations

from .base import Decision, Energies, Method
from .pruner import Pruner
from .registry import METHOD_CLASSES, method_class

__all__ = ["Decision", "Energies", "METHOD_CLASSES", "Method", "Pruner", "method_class"]
