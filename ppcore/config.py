"""The one typed configuration of a pruning run, validated up front."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .errors import ConfigError

METHODS: tuple[str, ...] = ("dense", "pp", "fullbatch", "wanda-sp", "flap", "ppsp-calib")
STATIC_METHODS: frozenset[str] = frozenset({"wanda-sp", "flap", "ppsp-calib"})
FLAP_BIAS_MODES: tuple[str, ...] = ("official", "mean", "none")


@dataclass(frozen=True)
class PruneConfig:
    """Everything that decides which heads and channels a run keeps.

    `ratio` is the nominal fraction of heads and MLP channels removed, averaged over all decoder
    layers; pruned layers use `round(N/(N-len(skip)) * ratio, 2)` (spec section 6).
    """

    method: str = "pp"
    ratio: float = 0.4
    token_frac: float = 0.5  # probe: fraction of tokens, selected first
    sample_frac: float = 0.05  # probe: fraction of samples, selected over the chosen tokens
    skip_layers: tuple[int, ...] = (0, 1, 2)
    prune_attn: bool = True
    prune_mlp: bool = True
    ema: float = 0.99  # history momentum (PP only)
    mlp_multiple: int = 64  # MLP kept count rounded up to a multiple of this (1 = no rounding)
    use_history: bool = True  # PP: fuse the probe with calibration-initialised history
    flap_bias: str = "official"  # official: calib mean / calib batch size (spec 8.1c); mean; none

    def __post_init__(self) -> None:
        object.__setattr__(self, "skip_layers", tuple(sorted({int(i) for i in self.skip_layers})))
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        _check_fraction("ratio", self.ratio, low_inclusive=True, high_inclusive=False)
        _check_fraction("token_frac", self.token_frac, low_inclusive=False, high_inclusive=True)
        _check_fraction("sample_frac", self.sample_frac, low_inclusive=False, high_inclusive=True)
        _check_fraction("ema", self.ema, low_inclusive=True, high_inclusive=True)
        if any(i < 0 for i in self.skip_layers):
            raise ConfigError(f"skip_layers must be layer indices >= 0, got {list(self.skip_layers)}")
        if not isinstance(self.mlp_multiple, int) or self.mlp_multiple < 1:
            raise ConfigError(f"mlp_multiple must be an integer >= 1, got {self.mlp_multiple!r}")
        if self.flap_bias not in FLAP_BIAS_MODES:
            raise ConfigError(f"flap_bias must be one of {', '.join(FLAP_BIAS_MODES)}, got {self.flap_bias!r}")
        if self.method != "dense" and not (self.prune_attn or self.prune_mlp):
            raise ConfigError("prune_attn and prune_mlp are both off: enable at least one, or use method 'dense'")
        if self.method == "dense":
            object.__setattr__(self, "ratio", 0.0)  # dense prunes nothing, whatever ratio was passed

    def check_layers(self, num_layers: int) -> None:
        """Validate the skip list against a model; raises ConfigError naming the valid range."""
        bad = [i for i in self.skip_layers if i >= num_layers]
        if bad:
            raise ConfigError(
                f"skip_layers {bad} out of range: this model has {num_layers} layers (indices 0-{num_layers - 1})"
            )
        if self.method != "dense" and len(self.skip_layers) >= num_layers and self.ratio > 0:
            raise ConfigError(f"all {num_layers} layers are skipped: nothing left to prune")

    @property
    def is_static(self) -> bool:
        return self.method in STATIC_METHODS

    @property
    def prunes(self) -> bool:
        return self.method != "dense" and self.ratio > 0

    @property
    def needs_calibration(self) -> bool:
        """Static methods score calibration statistics; PP starts its history from them."""
        return self.prunes and (self.is_static or (self.method == "pp" and self.use_history))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["skip_layers"] = list(self.skip_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PruneConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "skip_layers" in known:
            known["skip_layers"] = tuple(known["skip_layers"])
        return cls(**known)


def _check_fraction(name: str, value: float, *, low_inclusive: bool, high_inclusive: bool) -> None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    ok_low = v >= 0 if low_inclusive else v > 0
    ok_high = v <= 1 if high_inclusive else v < 1
    if not (ok_low and ok_high) or v != v:
        lo = "[0" if low_inclusive else "(0"
        hi = "1]" if high_inclusive else "1)"
        raise ConfigError(f"{name} must lie in {lo}, {hi}, got {value!r}")


def adjusted_ratio(ratio: float, num_layers: int, num_skipped: int) -> float:
    """Per-layer ratio so that the average over all layers equals `ratio` (spec 6)."""
    if num_skipped == 0:
        return ratio
    return round(num_layers / (num_layers - num_skipped) * ratio, 2)


def heads_pruned(r_eff: float, num_heads: int) -> int:
    """Heads removed in a pruned layer: int() flooring, as the official code does."""
    return min(int(r_eff * num_heads), num_heads)


def mlp_kept(num_pruned: int, channels: int, multiple: int) -> int:
    """MLP channels kept when `num_pruned` are removed, the kept count rounded UP to `multiple`."""
    kept = channels - min(num_pruned, channels)
    if multiple > 1:
        kept = -(-kept // multiple) * multiple
    return min(kept, channels)


def mlp_kept_for_ratio(r_eff: float, channels: int, multiple: int) -> int:
    return mlp_kept(int(r_eff * channels), channels, multiple)
