"""The one source of every engine setting: `PruneConfig` (which heads and channels a run keeps) and
`CalibConfig` (the calibration pass), with their defaults, choices, help texts and validation.

The CLI's flags and the app's widgets and URL parameters are derived from these dataclasses through
`settings_of(cls)`: each field declares its help text (and, where it has them, its choices, its CLI
flag stem and its text form) with `setting(...)`, so a setting is defined once and every front end
shows the same name, default and choices. Constructing either config validates it (ConfigError).
The defaults are the official protocol's (docs/algorithm.md).
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any, Callable, Optional

import numpy as np

from .errors import ConfigError
from .methods.registry import METHOD_CLASSES, method_class
from .ratios import (adjusted_ratio, calibration_batches, heads_pruned, mlp_kept,  # noqa: F401 (re-exported)
                     mlp_kept_for_ratio)

# The method names come from the registry (ppcore/methods/registry.py), in its order.
METHODS: tuple[str, ...] = tuple(METHOD_CLASSES)
STATIC_METHODS: frozenset[str] = frozenset(name for name, cls in METHOD_CLASSES.items() if cls.static)
FLAP_BIAS_MODES: tuple[str, ...] = ("official", "mean", "none")
# Ablation settings (docs/ablations.md): the unit score of the methods that score energies (pp, fullbatch,
# ppsp-calib), and how PP fuses the probe with its history. The first of each is the paper's.
SCORES: tuple[str, ...] = ("ppsp", "wanda-sp", "flap")
SCORED_METHODS: tuple[str, ...] = ("pp", "fullbatch", "ppsp-calib")
FUSIONS: tuple[str, ...] = ("importance", "fixed")
ABLATION_DEFAULTS: dict[str, Any] = {"score": "ppsp", "fusion": "importance", "probe_weight": 0.5, "attn_ratio": None,
                                     "mlp_ratio": None}
# PP+'s switches (docs/algorithm.md "PP+"): each 'auto' (the method's default: off for every method but pp-plus,
# PLUS_DEFAULTS for pp-plus) or a value; only pp-plus takes a value other than PP's.
PLUS_METHOD = "pp-plus"
SWITCHES: tuple[str, ...] = ("auto", "on", "off")
ALLOCATIONS: tuple[str, ...] = ("auto", "uniform", "sensitivity", "local")
PLUS_FIELDS: tuple[str, ...] = ("compensate", "error_score", "allocation", "recover")
PLUS_OFF: dict[str, str] = {"compensate": "off", "error_score": "off", "allocation": "uniform", "recover": "off"}
# pp-plus's default: recovery with the sensitivity allocation, the best of the pilots (docs/algorithm.md §10.6)
PLUS_DEFAULTS: dict[str, str] = {"compensate": "off", "error_score": "off", "allocation": "sensitivity",
                                 "recover": "on"}

# Calibration runs its dense pass in batches of this many windows. FLAP's official compensation
# divides by it (docs/algorithm.md §8.1c, `stats.BlockStats.baseline`), so it is a setting of its own, recorded in
# every protocol; 20 is the official protocol's (and keeps the official windows' numbers exact).
CALIB_BATCH_SIZE = 20
MAX_CALIB_BATCH_SIZE = 4096

# Layer lists ('0-2,5'): no supported model has more layers than this, and ranges are never
# expanded past it, so '0-100000000' is refused at the cost of parsing its digits.
MAX_LAYER_INDEX = 1023
MAX_LAYER_LIST_CHARS = 400
_LAYER_PART = re.compile(r"([0-9]+)(?:-([0-9]+))?")


@dataclass(frozen=True)
class Setting:
    """One user-facing setting of a config dataclass, as `settings_of` derives it from a field.

    `name` is the field's name (the app's URL parameter; `calib_<name>` for CalibConfig's), `flag` the
    CLI flag without dashes (booleans that default to True are switched off by `--no-<flag>`), `parse`
    turns text from the CLI or a URL into a value (raising ConfigError), `text` turns a value back into
    that text form.
    """

    name: str
    kind: type
    default: Any
    help: str
    choices: Optional[tuple[str, ...]]
    flag: str
    parse: Callable[[str], Any]
    text: Callable[[Any], str]


def setting(default: Any, help: str, *, choices: Optional[tuple[str, ...]] = None, flag: Optional[str] = None,
            parse: Optional[Callable[[str], Any]] = None, text: Optional[Callable[[Any], str]] = None) -> Any:
    """A dataclass field with its user-facing description (see `Setting`)."""
    meta = {"help": help, "choices": choices, "flag": flag, "parse": parse, "text": text}
    return field(default=default, metadata={"setting": meta})


def _parse_bool(raw: str) -> bool:
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"expected true or false (1 or 0), got {raw!r}")


def _parser_for(kind: type, choices: Optional[tuple[str, ...]]) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        if kind is bool:
            return _parse_bool(raw)
        if choices is not None and raw not in choices:
            raise ConfigError(f"expected one of {', '.join(choices)}, got {raw!r}")
        try:
            value = kind(raw.strip()) if kind in (int, float) else kind(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"expected {'a whole number' if kind is int else 'a number'}, got {raw!r}") from None
        if kind is float and not math.isfinite(value):
            raise ConfigError(f"expected a finite number, got {raw!r}")
        return value

    return parse


def settings_of(cls: type) -> tuple[Setting, ...]:
    """The settings of a config dataclass (`PruneConfig`, `CalibConfig`), in field order."""
    out = []
    for f in fields(cls):
        meta = f.metadata.get("setting")
        if meta is None:
            continue
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        kind = type(default)
        out.append(Setting(
            name=f.name, kind=kind, default=default, help=meta["help"], choices=meta["choices"],
            flag=meta["flag"] or f.name.replace("_", "-"),
            parse=meta["parse"] or _parser_for(kind, meta["choices"]),
            text=meta["text"] or ((lambda v: "1" if v else "0") if kind is bool else str),
        ))
    return tuple(out)


def format_layer_list(layers: tuple[int, ...]) -> str:
    """The inverse of `parse_layer_list`: (0, 1, 2, 5) -> '0-2,5'; () -> ''."""
    parts: list[str] = []
    for i in sorted(set(layers)):
        if parts and "-" not in parts[-1] and int(parts[-1]) == i - 1:
            parts[-1] = f"{i - 1}-{i}"
        elif parts and "-" in parts[-1] and int(parts[-1].split("-")[1]) == i - 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{i}"
        else:
            parts.append(str(i))
    return ",".join(parts)



@dataclass(frozen=True)
class PruneConfig:
    """Everything that decides which heads and channels a run keeps.

    `ratio` is the nominal fraction of heads and MLP channels removed, averaged over all decoder
    layers; pruned layers use `round(N/(N-len(skip)) * ratio, 2)` (docs/algorithm.md §6).
    """

    method: str = setting("pp", "the method that decides which heads and channels each batch keeps (pp-plus, ours, "
                          "first fits its recovery and per-block allocation on calibration windows: several minutes "
                          "on 2 CPU cores the first time, cached afterwards)", choices=METHODS)
    ratio: float = setting(0.4, "fraction of attention heads and MLP channels removed, averaged over all layers")
    token_frac: float = setting(0.5, "probe: fraction of the batch's tokens, chosen first by residual importance")
    sample_frac: float = setting(0.05, "probe: fraction of the batch's samples, chosen over the probe's tokens")
    skip_layers: tuple[int, ...] = setting(
        (0, 1, 2), "layers left unpruned: indices and ranges such as '0-2' or '0-2,5'; '' skips none",
        parse=lambda raw: parse_layer_list(raw), text=lambda v: format_layer_list(v))
    prune_attn: bool = setting(True, "prune attention heads", flag="attn")
    prune_mlp: bool = setting(True, "prune MLP channels", flag="mlp")
    ema: float = setting(0.99, "PP: momentum of the history's moving average")
    mlp_multiple: int = setting(64, "MLP kept-channel count rounded up to a multiple of this (1: no rounding)")
    use_history: bool = setting(True, "PP: fuse the probe with the calibration-initialised history", flag="history")
    flap_bias: str = setting("official", "FLAP's bias compensation: 'official' divides the calibration mean by "
                             "the calibration batch size, as the official code does; 'mean'; 'none'",
                             choices=FLAP_BIAS_MODES)
    compensate: str = setting(
        "auto", "pp-plus: add the removed heads' and channels' mean contribution to the block output as a bias "
        "('auto': off, since pp-plus recovers by default, and recover includes it)", choices=SWITCHES)
    error_score: str = setting(
        "auto", "pp-plus: score a unit by the output error its removal adds, energy (variance with compensate) "
        "times the squared weight-column norm, instead of PPsp ('auto': off)", choices=SWITCHES)
    allocation: str = setting(
        "auto", "pp-plus: per-layer and per-block ratios: 'uniform' (PP's), 'sensitivity' (each block's KL "
        "curve, pruned alone, on calibration windows, then a greedy allocation under PP's decoder FLOPs) or 'local' "
        "(exchanges from PP's allocation, measured at the operating point with the run's switches; fitted per "
        "ratio); 'auto': sensitivity for pp-plus", choices=ALLOCATIONS)
    recover: str = setting(
        "auto", "pp-plus: replace the pruned channels' contribution by its least-squares estimate from kept ones "
        "(every kept channel for attention, a fixed core of MLP channels, always kept), fitted once on calibration "
        "windows; it includes the mean, so it excludes compensate ('auto': on for pp-plus)", choices=SWITCHES)
    score: str = setting("ppsp", "the unit score of pp, fullbatch and ppsp-calib: 'ppsp' (the paper's), or Wanda-sp's "
                         "or FLAP's metric on the same activations (an ablation)", choices=SCORES)
    fusion: str = setting("importance", "PP: how the probe is fused with the history: 'importance' (the paper's, "
                          "per position and channel) or 'fixed' (probe_weight * probe + (1 - probe_weight) * history)",
                          choices=FUSIONS)
    probe_weight: float = setting(0.5, "PP with fusion 'fixed': the probe's weight X in X * P + (1 - X) * G")
    attn_ratio: Optional[float] = setting(
        None, "attention's own ratio, averaged over all layers like ratio; '' = ratio (an ablation)",
        parse=lambda raw: _parse_block_ratio("attn_ratio", raw), text=lambda v: "" if v is None else f"{v:g}")
    mlp_ratio: Optional[float] = setting(
        None, "the MLP's own ratio, averaged over all layers like ratio; '' = ratio (an ablation)",
        parse=lambda raw: _parse_block_ratio("mlp_ratio", raw), text=lambda v: "" if v is None else f"{v:g}")

    def __post_init__(self) -> None:
        object.__setattr__(self, "skip_layers", _check_skip(self.skip_layers))
        method_class(self.method)  # ConfigError for a name the registry does not hold
        for name, low, high in (("ratio", True, False), ("token_frac", False, True), ("sample_frac", False, True),
                                ("ema", True, True)):
            value = _check_fraction(name, getattr(self, name), low_inclusive=low, high_inclusive=high)
            object.__setattr__(self, name, value)  # a plain float from here on (numpy scalars included)
        _check_ablation(self)
        _check_plus(self)
        for name in ("prune_attn", "prune_mlp", "use_history"):
            object.__setattr__(self, name, _check_bool(name, getattr(self, name)))
        if (not isinstance(self.mlp_multiple, numbers.Integral) or isinstance(self.mlp_multiple, bool)
                or self.mlp_multiple < 1):
            raise ConfigError(f"mlp_multiple must be an integer >= 1, got {self.mlp_multiple!r}")
        object.__setattr__(self, "mlp_multiple", int(self.mlp_multiple))
        if not isinstance(self.flap_bias, str) or self.flap_bias not in FLAP_BIAS_MODES:
            raise ConfigError(f"flap_bias must be one of {', '.join(FLAP_BIAS_MODES)}, got {self.flap_bias!r}")
        if self.method != "dense" and not (self.prune_attn or self.prune_mlp):
            raise ConfigError("prune_attn and prune_mlp are both off: enable at least one, or use method 'dense'")
        if self.method == "dense":
            object.__setattr__(self, "ratio", 0.0)  # dense prunes nothing, whatever ratio was passed
            for name, default in ABLATION_DEFAULTS.items():  # nor do the ablation settings mean anything to it
                object.__setattr__(self, name, default)

    def check_layers(self, num_layers: int) -> None:
        """Validate the skip list against a model; raises ConfigError naming the valid range.

        Dense prunes nothing, so its skip list (the default (0, 1, 2) included) is never checked:
        a dense pass, e.g. calibration, must run on a model of any depth.
        """
        if self.method == "dense":
            return
        bad = [i for i in self.skip_layers if i >= num_layers]
        if bad:
            raise ConfigError(
                f"skip_layers {bad} out of range: this model has {num_layers} layers (indices 0-{num_layers - 1})"
            )
        if len(self.skip_layers) >= num_layers:
            if self.prunes:
                raise ConfigError(f"all {num_layers} layers are skipped: nothing left to prune")
            return
        checks = [("attn_ratio" if self.attn_ratio is not None else "ratio", self.block_ratio("attn"), self.prune_attn),
                  ("mlp_ratio" if self.mlp_ratio is not None else "ratio", self.block_ratio("mlp"), self.prune_mlp)]
        for name, ratio, on in checks:
            if not on:
                continue
            r_eff = adjusted_ratio(ratio, num_layers, len(self.skip_layers))
            if r_eff >= 1:
                # The average over all layers cannot be met: every pruned layer would lose everything.
                kept = num_layers - len(self.skip_layers)
                # the largest ratio whose per-layer share rounds below 1
                usable = math.floor(kept / num_layers * 0.995 * 100) / 100
                raise ConfigError(
                    f"{name} {ratio:g} with {len(self.skip_layers)} of {num_layers} layers skipped would remove "
                    f"{r_eff:.0%} of the units of each of the other {kept} layers, more than they have: use at most "
                    f"{usable:.2f} for {name}, or skip fewer layers")

    def as_method(self, method: str, ratio: float) -> "PruneConfig":
        """This config for another method and ratio, with the ablation settings that method does not take set back to
        their defaults (a baseline keeps its own score; only PP fuses; FLAP allocates its own block ratios): how a
        comparison runs every method beside an ablated PP. Raises ConfigError as the constructor does."""
        drop = {}
        if method not in SCORED_METHODS:
            drop["score"] = ABLATION_DEFAULTS["score"]
        if method != "pp":
            drop.update(fusion=ABLATION_DEFAULTS["fusion"], probe_weight=ABLATION_DEFAULTS["probe_weight"])
        if method == "flap":
            drop.update(attn_ratio=None, mlp_ratio=None)
        if method != self.method:  # PP+'s switches: the new method's own defaults ('auto')
            drop.update({name: "auto" for name in PLUS_FIELDS})
            if method == PLUS_METHOD:
                drop.update(attn_ratio=None, mlp_ratio=None)  # its allocation decides the blocks' ratios
        return replace(self, method=method, ratio=ratio, **drop)

    def block_ratio(self, block: str) -> float:
        """The nominal ratio of one block kind ('attn' or 'mlp'): its own (attn_ratio, mlp_ratio) where set, else
        `ratio`. Averaged over all layers like `ratio` (docs/algorithm.md §6)."""
        own = {"attn": self.attn_ratio, "mlp": self.mlp_ratio}[block]
        return self.ratio if own is None else own

    @property
    def is_static(self) -> bool:
        """The method decides once from calibration and reuses its slices (its class says so)."""
        return method_class(self.method).static

    @property
    def prunes(self) -> bool:
        """Whether this run removes anything: a method other than dense, at a ratio above 0 (the block ratios,
        where set, count too)."""
        return self.method != "dense" and max(self.block_ratio("attn") if self.prune_attn else 0.0,
                                              self.block_ratio("mlp") if self.prune_mlp else 0.0) > 0

    @property
    def needs_calibration(self) -> bool:
        """A pruning run that reads calibration statistics: the method's class decides (static methods score
        them; PP starts its history from them)."""
        return self.prunes and method_class(self.method).needs_calibration(self)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON values (what protocols record; skip_layers as a list)."""
        d = asdict(self)
        d["skip_layers"] = list(self.skip_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PruneConfig":
        """The config `to_dict()` wrote (unknown keys ignored); raises ConfigError for an invalid value."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "skip_layers" in known:
            known["skip_layers"] = tuple(known["skip_layers"])
        return cls(**known)


MAX_CALIB_WINDOWS = 100_000


@dataclass(frozen=True)
class CalibConfig:
    """The calibration pass: which windows the dense model runs to seed PP's history and to score the
    static baselines (docs/algorithm.md §7). Defaults are the official protocol's.

    The windows are drawn with the run's seed from the dataset's calibration split. `batch_size` is a
    setting of its own because FLAP's official compensation divides by it (docs/algorithm.md §8.1c).
    Raises ConfigError for a value out of range.
    """

    dataset: str = setting("wiki-vital", "corpus of the calibration windows: wiki-vital, wikitext2 or a .txt path",
                           flag="calib-dataset")
    windows: int = setting(100, "number of calibration windows", flag="calib-windows")
    seq_len: int = setting(512, "tokens per calibration window", flag="calib-seq-len")
    batch_size: int = setting(CALIB_BATCH_SIZE, "windows per batch of the calibration pass (the official "
                              "protocol's 20); FLAP's official bias compensation divides by it",
                              flag="calib-batch-size")

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset.strip():
            raise ConfigError(f"the calibration dataset must be a corpus name or a path, got {self.dataset!r}")
        for name, low, high in (("windows", 1, MAX_CALIB_WINDOWS), ("seq_len", 2, 1 << 20)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not low <= v <= high:
                raise ConfigError(f"calibration {name} must be a whole number from {low} to {high}, got {v!r}")
            object.__setattr__(self, name, int(v))
        object.__setattr__(self, "batch_size", check_calib_batch_size(self.batch_size))

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON values (what protocols record)."""
        return asdict(self)


def _check_fraction(name: str, value: Any, *, low_inclusive: bool, high_inclusive: bool) -> float:
    """`value` as a float inside the interval, or ConfigError naming the field and the value."""
    lo = "[0" if low_inclusive else "(0"
    hi = "1]" if high_inclusive else "1)"
    # Numbers only: text such as "0.3" would pass float() here and break comparisons later.
    if isinstance(value, (str, bytes, bool)) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number in {lo}, {hi}, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name} must be a number in {lo}, {hi}, got {value!r}") from None
    ok_low = v >= 0 if low_inclusive else v > 0
    ok_high = v <= 1 if high_inclusive else v < 1
    if not (ok_low and ok_high) or v != v:
        raise ConfigError(f"{name} must lie in {lo}, {hi}, got {value!r}")
    return v


def _parse_block_ratio(name: str, raw: str) -> Optional[float]:
    """A block ratio's text: '' (or 'none') for None, else a number in [0, 1). Raises ConfigError."""
    text = str(raw).strip()
    if text.lower() in ("", "none"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name}: expected a number in [0, 1) or '' (the same as ratio), got {raw!r}") from None
    return _check_fraction(name, value, low_inclusive=True, high_inclusive=False)


def _check_ablation(cfg: "PruneConfig") -> None:
    """The ablation settings (docs/ablations.md): valid values, and only where they mean something. Sets the block
    ratios to plain floats. Raises ConfigError naming the setting."""
    if cfg.score not in SCORES:
        raise ConfigError(f"score must be one of {', '.join(SCORES)}, got {cfg.score!r}")
    if cfg.score != "ppsp" and cfg.method not in SCORED_METHODS + ("dense",):
        raise ConfigError(f"score {cfg.score!r} applies to {', '.join(SCORED_METHODS)}: method {cfg.method!r} scores "
                          "with its own metric")
    if cfg.fusion not in FUSIONS:
        raise ConfigError(f"fusion must be one of {', '.join(FUSIONS)}, got {cfg.fusion!r}")
    object.__setattr__(cfg, "probe_weight", _check_fraction("probe_weight", cfg.probe_weight, low_inclusive=True,
                                                            high_inclusive=True))
    if cfg.fusion != "importance" and (cfg.method not in ("pp", "dense") or not cfg.use_history):
        raise ConfigError(f"fusion {cfg.fusion!r} fuses the probe with PP's history: it applies to method pp with "
                          "use_history on")
    if cfg.probe_weight != ABLATION_DEFAULTS["probe_weight"] and cfg.fusion != "fixed" and cfg.method != "dense":
        raise ConfigError("probe_weight is the weight of fixed fusion: set fusion to 'fixed', or leave it at 0.5")
    for name in ("attn_ratio", "mlp_ratio"):
        value = getattr(cfg, name)
        if value is not None:
            object.__setattr__(cfg, name, _check_fraction(name, value, low_inclusive=True, high_inclusive=False))
    if (cfg.attn_ratio is not None or cfg.mlp_ratio is not None) and cfg.method == "flap":
        raise ConfigError("FLAP allocates its own ratio to every block: attn_ratio and mlp_ratio apply to the other "
                          "methods")


def _check_plus(cfg: "PruneConfig") -> None:
    """PP+'s switches: 'auto' becomes the method's default (PLUS_DEFAULTS for pp-plus, PP's behaviour, PLUS_OFF, for
    every other method); a value other than PP's is only valid for pp-plus; a fitted allocation decides the blocks'
    ratios itself, so it cannot be combined with attn_ratio or mlp_ratio. Raises ConfigError naming the setting."""
    for name, choices in (("compensate", SWITCHES), ("error_score", SWITCHES), ("allocation", ALLOCATIONS),
                          ("recover", SWITCHES)):
        value = getattr(cfg, name)
        if not isinstance(value, str) or value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        if value == "auto":
            value = PLUS_DEFAULTS[name] if cfg.method == PLUS_METHOD else PLUS_OFF[name]
        if value != PLUS_OFF[name] and cfg.method not in (PLUS_METHOD, "dense"):
            raise ConfigError(f"{name} {value!r} is a switch of method {PLUS_METHOD!r} (PP+): method {cfg.method!r} "
                              f"takes only {PLUS_OFF[name]!r} or 'auto'")
        object.__setattr__(cfg, name, PLUS_OFF[name] if cfg.method == "dense" else value)
    if cfg.recover == "on" and cfg.compensate == "on":
        raise ConfigError("compensate and recover are both on, but recover already adds the pruned channels' mean (its "
                          "intercept): keep one, e.g. --recover off for the mean compensation alone")
    if cfg.allocation != "uniform" and (cfg.attn_ratio is not None or cfg.mlp_ratio is not None):
        raise ConfigError(f"allocation {cfg.allocation!r} chooses every block's ratio from the nominal ratio: leave "
                          "attn_ratio and mlp_ratio unset, or use allocation 'uniform'")


def _check_bool(name: str, value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):  # numpy booleans too
        return bool(value)
    raise ConfigError(f"{name} must be True or False, got {value!r}")


def _check_skip(skip: Any) -> tuple[int, ...]:
    """Sorted, de-duplicated layer indices >= 0; no range check here (see check_layers)."""
    if isinstance(skip, (str, bytes)) or not hasattr(skip, "__iter__"):
        raise ConfigError(f"skip_layers must be a list of layer indices, got {skip!r}")
    if hasattr(skip, "__len__") and len(skip) > 100_000:  # no model has that many layers; don't iterate it
        raise ConfigError(f"skip_layers holds {len(skip)} entries; give the indices of the layers to skip")
    out: set[int] = set()
    for i in skip:
        integral = isinstance(i, numbers.Integral) or (isinstance(i, numbers.Real) and float(i).is_integer())
        if isinstance(i, bool) or not integral:
            raise ConfigError(f"skip_layers must hold whole layer indices, got {i!r} in {skip!r}")
        out.add(int(i))
    bad = sorted(i for i in out if i < 0)
    if bad:
        raise ConfigError(f"skip_layers must be layer indices >= 0, got {bad}")
    return tuple(sorted(out))


def _quote(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[:n] + "…")


def parse_layer_list(text: str) -> tuple[int, ...]:
    """Layer indices from text: '0-2' -> (0, 1, 2); '0,1,2', '0-2,5' and ' 0 - 2 , 5 ' work too.

    The empty string (or only spaces) is the empty list: no layers. Returns the indices sorted and
    de-duplicated. Raises ConfigError for anything else: words (including 'none'), negative numbers,
    a range that runs backwards ('3-1'), a half range ('1-'), an index above MAX_LAYER_INDEX (checked
    before any range is expanded), or text longer than MAX_LAYER_LIST_CHARS. Whether the indices
    exist in a given model is PruneConfig.check_layers's job.
    """
    if not isinstance(text, str):
        raise ConfigError(f"a layer list must be text such as '0-2,5', got {type(text).__name__}")
    if len(text) > MAX_LAYER_LIST_CHARS:
        raise ConfigError(f"layer list of {len(text)} characters is too long (at most {MAX_LAYER_LIST_CHARS}); "
                          "use ranges like '0-2,5'")
    compact = "".join(text.split())
    out: set[int] = set()
    for part in compact.split(",") if compact else []:
        if not part:
            continue  # '0,,2' and a trailing comma are harmless
        m = _LAYER_PART.fullmatch(part)
        if m is None:
            raise ConfigError(f"layer list {_quote(text)}: {_quote(part)} is not a layer index or range; "
                              "use indices and ranges like '0-2,5' (an empty list '' skips no layers)")
        lo = int(m.group(1))
        hi = lo if m.group(2) is None else int(m.group(2))
        if max(lo, hi) > MAX_LAYER_INDEX:
            raise ConfigError(f"layer list {_quote(text)}: index {max(lo, hi)} is above {MAX_LAYER_INDEX}; "
                              "no supported model has that many layers")
        if hi < lo:
            raise ConfigError(f"layer list {_quote(text)}: range {_quote(part)} runs backwards; "
                              f"write it low to high, like '{hi}-{lo}'")
        out.update(range(lo, hi + 1))
    return tuple(sorted(out))


def check_calib_batch_size(value: Any) -> int:
    """The calibration batch size as an int in [1, MAX_CALIB_BATCH_SIZE], or ConfigError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= MAX_CALIB_BATCH_SIZE:
        raise ConfigError(f"calibration batch size must be a whole number from 1 to {MAX_CALIB_BATCH_SIZE}, "
                          f"got {value!r}")
    return int(value)


def describe_calibration_batches(windows: int, batch_size: int) -> str:
    """'5 batches of 20', '1 batch of 16 (batch size 20)', '2 batches: 20 and 10' (for protocols and pages)."""
    n, last = calibration_batches(windows, batch_size)
    if n == 1:
        return f"1 batch of {last}" + (f" (batch size {batch_size})" if last != batch_size else "")
    if last == batch_size:
        return f"{n} batches of {batch_size}"
    return f"{n} batches: {n - 1} of {batch_size} and 1 of {last}"


# The app's interactive default: 40 windows of 128 tokens calibrate in seconds on two CPU cores, where
# the official 100 x 512 take minutes; the app says which one a result used. 40 makes two batches of the
# official 20: FLAP's fluctuation statistic needs at least two (its update skips the first batch, as the
# official code's does). Everything else is the engine's default.
INTERACTIVE_CALIB = CalibConfig(windows=40, seq_len=128)
