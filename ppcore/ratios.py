"""How many heads and MLP channels a pruned layer keeps (docs/algorithm.md §4.2, §6), and how many
batches a calibration pass runs (§8.1c).

Pure integer arithmetic with no imports, so that `config` and the methods can both use it without
importing each other. `ppcore.config` re-exports every name here.
"""
from __future__ import annotations


def adjusted_ratio(ratio: float, num_layers: int, num_skipped: int) -> float:
    """Per-layer ratio r_eff, so that the average over all `num_layers` equals `ratio` (docs/algorithm.md §6).

    `round(num_layers / (num_layers - num_skipped) * ratio, 2)`; `ratio` itself when nothing is skipped, and when
    every layer is skipped (no layer uses it: dense, or block ratios of 0, on a 3-layer model with the default skip
    list; PruneConfig.check_layers refuses a skip list that covers every layer of a run that prunes).
    """
    if num_skipped == 0 or num_skipped >= num_layers:
        return ratio
    return round(num_layers / (num_layers - num_skipped) * ratio, 2)


def heads_pruned(r_eff: float, num_heads: int) -> int:
    """Heads removed from a pruned layer: `int(r_eff * num_heads)` (the official code's flooring), at most
    `num_heads` (docs/algorithm.md §4.2)."""
    return min(int(r_eff * num_heads), num_heads)


def mlp_kept(num_pruned: int, channels: int, multiple: int) -> int:
    """MLP channels kept when `num_pruned` of `channels` are removed, the kept count rounded UP to a multiple
    of `multiple` and capped at `channels` (docs/algorithm.md §4.2). `multiple` 1 means no rounding."""
    kept = channels - min(num_pruned, channels)
    if multiple > 1:
        kept = -(-kept // multiple) * multiple
    return min(kept, channels)


def mlp_kept_for_ratio(r_eff: float, channels: int, multiple: int) -> int:
    """MLP channels kept at per-layer ratio `r_eff`: `mlp_kept(int(r_eff * channels), channels, multiple)`
    (docs/algorithm.md §4.2)."""
    return mlp_kept(int(r_eff * channels), channels, multiple)


def achieved_ratios(units: dict[str, int]) -> dict[str, float | None]:
    """The ratio a run achieved, next to the nominal one: `heads_removed` and `channels_removed`, the fractions
    of all decoder layers' query heads and MLP channels its blocks did not keep (skipped layers count as kept),
    from unit counts {"attn", "attn_kept", "mlp", "mlp_kept"} summed over blocks and batches (None without
    counts). With few heads the floor in `heads_pruned` makes them differ: 4 heads at r_eff 0.24 lose none."""
    def removed(name: str) -> float | None:
        total = int(units.get(name, 0))
        return 1.0 - int(units.get(f"{name}_kept", 0)) / total if total else None

    return {"heads_removed": removed("attn"), "channels_removed": removed("mlp")}


def calibration_batches(windows: int, batch_size: int) -> tuple[int, int]:
    """(number of calibration batches, size of the last one) for `windows` windows in batches of `batch_size`:
    the last batch is smaller when the windows do not fill it, and FLAP's official compensation sees that."""
    n = -(-windows // batch_size)
    return n, windows - (n - 1) * batch_size
