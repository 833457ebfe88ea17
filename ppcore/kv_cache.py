"""Generation's key/value cache, allocated once for the whole continuation (docs/algorithm.md §5).

Each layer gets one (B, heads, capacity, d) buffer for keys and one for values, the prompt's first; a
decode step writes one column per layer and attends to a view of the filled part, so no step copies
what earlier steps stored (a concatenation per step and layer would copy O(n²) in all). Beside them,
each cached key's token position and whether it is a real token, which the decode masks read.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .slices import KV


class KVCache:
    """Preallocated keys and values of every layer, filled up to `length` columns: a `ppcore.slices.KVStore`.

    `prompt_kv[i]`: layer i's prompt keys and values (B, heads_i, P, d), on that layer's device; `key_valid`
    (B, P) bool and `key_pos` (B, P) long: realness and token position of each prompt key; `capacity` >= P:
    the most columns the continuation will hold. Raises ValueError for a capacity below the prompt's length.
    """

    def __init__(self, prompt_kv: list[KV], key_valid: Tensor, key_pos: Tensor, capacity: int) -> None:
        B, P = key_valid.shape
        if capacity < P:
            raise ValueError(f"cache capacity {capacity} is below the prompt's {P} columns")
        self.length = P
        self.k: list[Tensor] = []
        self.v: list[Tensor] = []
        for k, v in prompt_kv:
            for src, out in ((k, self.k), (v, self.v)):
                buf = src.new_empty(src.shape[0], src.shape[1], capacity, src.shape[3])
                buf[:, :, :P] = src
                out.append(buf)
        self._valid = torch.zeros(B, capacity, dtype=torch.bool, device=key_valid.device)
        self._valid[:, :P] = key_valid
        self._pos = torch.zeros(B, capacity, dtype=torch.long, device=key_pos.device)
        self._pos[:, :P] = key_pos

    @property
    def capacity(self) -> int:
        """Columns allocated per layer."""
        return self._valid.shape[1]

    def add_key(self, pos: Tensor) -> None:
        """Announce the next column: one real key per row at token positions `pos` (B, 1). Layers then fill it
        with `extend`; `commit` makes it part of the cache. Raises IndexError when the cache is full."""
        t = self.length
        if t >= self.capacity:
            raise IndexError(f"the key/value cache holds {self.capacity} columns and is full")
        self._pos[:, t:t + 1] = pos
        self._valid[:, t] = True

    @property
    def key_valid(self) -> Tensor:
        """(B, length + 1) bool: realness of every key the current step's query sees (its own included)."""
        return self._valid[:, :self.length + 1]

    @property
    def key_pos(self) -> Tensor:
        """(B, length + 1) long: token position of every key the current step's query sees."""
        return self._pos[:, :self.length + 1]

    def extend(self, layer: int, k: Tensor, v: Tensor) -> KV:
        """Write the step's keys and values (B, heads, 1, d) of `layer` at column `length`; return views of
        the filled columns (B, heads, length + 1, d). No copy of earlier columns, no host-device sync."""
        t = self.length
        kb, vb = self.k[layer], self.v[layer]
        kb[:, :, t:t + k.shape[2]] = k
        vb[:, :, t:t + v.shape[2]] = v
        return kb[:, :, :t + k.shape[2]], vb[:, :, :t + v.shape[2]]

    def commit(self) -> None:
        """The step's column is written in every layer: it is now part of the cache."""
        self.length += 1
