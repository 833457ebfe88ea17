"""The app's settings: one typed record, shared through the URL (st.query_params) and the sidebar.

Every setting is declared once, with `ppcore.config.setting`: the engine's on `PruneConfig` and
`CalibConfig` (the latter under a `calib_` prefix, as the CLI's --calib-* flags), the app's own (model,
batch source, sizes, seed) on `PageSettings` below. The `Settings` record, its defaults, the URL
parameters and their parsing (`Setting.parse`) and the sidebar's widgets (app/inputs.py) all derive from
those declarations. The calibration defaults are the interactive preset `INTERACTIVE_CALIB`; every other
default is the engine's.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, make_dataclass, replace
from typing import Any, Mapping, Optional

from ppcore import ConfigError, PruneConfig
from ppcore.config import (CALIB_BATCH_SIZE, INTERACTIVE_CALIB, MAX_LAYER_INDEX, MAX_LAYER_LIST_CHARS, CalibConfig,
                           Setting, parse_layer_list, setting, settings_of)
from ppcore.record import BLOCK_NAMES
from ppcore.session import DEVICES

from .views import TABS

# Demo mode (hosted teaching): the model, device, dtype and corpora are locked, the batch is capped,
# uploads are small text files, and messages carry no server paths (app/messages.py). The environment
# is read on every script run (demo()), so a test can switch it; DEMO is its value at import.
DEMO = os.environ.get("PP_DEMO", "") == "1"
DEMO_BATCH, DEMO_SEQ, DEMO_CALIB, DEMO_NEW_TOKENS = 8, 128, INTERACTIVE_CALIB.windows, 32
SOURCES = ("examples", "paste", "upload", "corpus")
SPLITS = ("line", "paragraph")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
DEMO_CORPORA = ("wiki-vital",)  # embedded: no hub download, no file path
MAX_SKIP_INDEX = MAX_LAYER_INDEX  # skipped-layer indices: the engine's bound (ppcore.config.parse_layer_list)
MAX_SKIP_CHARS = MAX_LAYER_LIST_CHARS
MAX_SEED = 2**31 - 1
URL_TEXT_CHARS = 2000  # pasted text longer than this stays out of the URL (browsers cap URL length)
CALIB_PREFIX = "calib_"  # CalibConfig's settings in the app (and the CLI): calib_windows, calib_seq_len, ...
# URL parameters of links shared before the app used the engine's names.
ALIASES = {"skip": "skip_layers", "attn": "prune_attn", "mlp": "prune_mlp", "calib": "calib_windows",
           "calib_len": "calib_seq_len"}


def demo() -> bool:
    """Demo mode for this script run: PP_DEMO=1 now, or at import (it can be switched on, never off)."""
    return DEMO or os.environ.get("PP_DEMO", "") == "1"


@dataclass(frozen=True)
class Limits:
    """What one run may ask for. Every limit is checked on the server, whatever the widgets allow."""

    batch: int
    seq: int
    calib_windows: int
    calib_seq_len: int
    calib_batch_size: int  # windows per calibration batch (memory: min(this, windows) x seq_len tokens at once)
    new_tokens: int
    upload_mb: int  # per uploaded file
    text_chars: int  # pasted text
    rows: int = 10_000  # rows of an uploaded .csv / .jsonl that are read (the batch needs at most `batch`)
    repeats: int = 20  # timing repeats (latency, method comparison)
    ratios: int = 6  # ratios in one method comparison
    extra_batches: int = 8  # stability: batches after the current one
    zeroshot_docs: int = 500  # documents of one zero-shot task (dense and pruned each run them)
    record_mb: int = 256  # a saved run record opened for replay (checked before it is parsed)
    record_cells: int = 2**24  # a replayed record's layers x units (and x positions): the maps its views draw

    @property
    def upload_bytes(self) -> int:
        return self.upload_mb * 1024 * 1024

    @property
    def record_bytes(self) -> int:
        return self.record_mb * 1024 * 1024

    def ranges(self) -> dict[str, tuple[int, int]]:
        """The allowed range of each whole-number setting (checked by app/batch.py, shown in help texts)."""
        return {"batch_size": (1, self.batch), "seq_len": (2, self.seq), "calib_windows": (1, self.calib_windows),
                "calib_seq_len": (2, self.calib_seq_len), "calib_batch_size": (1, self.calib_batch_size),
                "seed": (0, MAX_SEED)}


LOCAL = Limits(batch=64, seq=1024, calib_windows=256, calib_seq_len=1024, calib_batch_size=256, new_tokens=256,
               upload_mb=256, text_chars=50_000_000)
DEMO_LIMITS = Limits(batch=DEMO_BATCH, seq=DEMO_SEQ, calib_windows=DEMO_CALIB, calib_seq_len=DEMO_SEQ,
                     calib_batch_size=CALIB_BATCH_SIZE, new_tokens=DEMO_NEW_TOKENS, upload_mb=1, text_chars=100_000,
                     rows=2_000, repeats=3, ratios=3, extra_batches=3, zeroshot_docs=20,
                     record_mb=16, record_cells=2**21)  # a demo run's record: about 6 MB, 30 x 1536 cells


def limits() -> Limits:
    return DEMO_LIMITS if demo() else LOCAL


@dataclass(frozen=True)
class PageSettings:
    """The app's own settings: which model, and where the batch comes from."""

    model: str = setting("default", "'default' (embedded SmolLM2-135M-Instruct), 'gemma3-270m' (embedded "
                         "Gemma-3-270M), a hub id, a local checkpoint folder or a .gguf path")
    device: str = setting("auto", "map: a model too big for one device, spread by accelerate over the GPUs, the "
                          "CPU and disk (offloaded layers are loaded one at a time)", choices=DEVICES)
    dtype: str = setting("auto", "the weights' dtype; auto: the checkpoint's, float32 on a CPU", choices=DTYPE_CHOICES)
    source: str = setting("examples", "where the batch's samples come from", choices=SOURCES)
    text: str = setting("", "the pasted text")
    split: str = setting("line", "paste or .txt: each non-empty line, or each paragraph separated by a blank line",
                         choices=SPLITS)
    column: str = setting("", "the text column of an uploaded .csv or .jsonl")
    corpus: str = setting("wiki-vital", "wiki-vital (embedded, eval split) or a path to a .txt file")
    batch_size: int = setting(8, "samples in the batch")
    seq_len: int = setting(64, "tokens per sample (texts are truncated to it)")
    seed: int = setting(0, "draws the corpus windows and the calibration windows")


@dataclass(frozen=True)
class AppSetting:
    """One app setting: `name` is its Settings attribute, URL parameter and widget key (s_<name>);
    `setting` the declaration it derives from; `group` "page", "prune" or "calib". Settings that are not
    plain numbers, flags or words (the skipped-layers list) are held as their text and parsed when the
    engine's config is built, so a bad list gives the engine's message on Run."""

    name: str
    setting: Setting
    group: str

    @property
    def as_text(self) -> bool:
        return self.setting.kind not in (bool, int, float, str)

    @property
    def default(self) -> Any:
        s = self.setting
        value = getattr(INTERACTIVE_CALIB, s.name) if self.group == "calib" else s.default
        return s.text(value) if self.as_text else value

    def engine_value(self, value: Any) -> Any:
        """The value as the engine's config takes it (raises ConfigError for bad text)."""
        return self.setting.parse(value) if self.as_text else value

    def expected(self) -> str:
        """What a URL value must be, for the message when it is not."""
        s = self.setting
        if s.choices:
            return "one of " + ", ".join(s.choices)
        return {bool: "a valid bool", int: "a valid int", float: "a finite number"}.get(s.kind, "valid text")


FIELDS: tuple[AppSetting, ...] = (
    tuple(AppSetting(s.name, s, "page") for s in settings_of(PageSettings))
    + tuple(AppSetting(s.name, s, "prune") for s in settings_of(PruneConfig))
    + tuple(AppSetting(CALIB_PREFIX + s.name, s, "calib") for s in settings_of(CalibConfig)))
BY_NAME = {f.name: f for f in FIELDS}


class _SettingsMethods:
    """Behaviour of `Settings` (its fields are derived from FIELDS below)."""

    def key(self, extra: str = "") -> str:
        """A stable hash: results are cached per key, so a rerun with the same settings is free."""
        return hashlib.sha256((json.dumps(asdict(self), sort_keys=True) + extra).encode()).hexdigest()[:16]  # type: ignore[call-overload]

    def to_query(self) -> dict[str, str]:
        """URL parameters, only those that differ from the defaults, so shared URLs stay short."""
        out = {}
        for f in FIELDS:
            v = getattr(self, f.name)
            if v != f.default:
                out[f.name] = v if f.as_text else f.setting.text(v)
        return out

    def locked(self) -> Settings:
        """Demo mode: the default model on the server's own device and dtype, the embedded corpora, and
        sizes within the caps. Applied to every run's settings (URL or widgets), so nothing bypasses it."""
        if not demo():
            return self
        lim = limits()
        s: Any = self
        return replace(s, model="default", device="auto", dtype="auto", text=s.text[: lim.text_chars],
                       **{n: v if v in DEMO_CORPORA else DEMO_CORPORA[0]
                          for n, v in (("corpus", s.corpus), ("calib_dataset", s.calib_dataset))},
                       **{n: min(getattr(s, n), hi) for n, (_, hi) in lim.ranges().items() if n != "seed"})


Settings = make_dataclass("Settings", [(f.name, type(f.default), field(default=f.default)) for f in FIELDS],
                          bases=(_SettingsMethods,), frozen=True)
Settings.__doc__ = "Everything a run depends on, apart from an uploaded file's bytes: one field per app setting."


def _short(raw: str, n: int = 40) -> str:
    return raw if len(raw) <= n else raw[:n] + "…"


def _readable(name: str) -> str:
    """A setting's name as a sentence says it: seq_len -> 'sequence length', calib_seq_len -> 'calibration length'."""
    words = {"seq_len": "sequence length", "calib_seq_len": "calibration length"}
    return words.get(name) or name.replace(CALIB_PREFIX, "calibration ", 1).replace("_", " ")


def demo_changes(asked: Settings, used: Settings, source: str = "link") -> list[str]:
    """Demo mode's changes to the settings a link (or a saved run record: `source`) asked for (`used` =
    `asked.locked()`), one warning each, naming the setting, what was asked and what the demo uses instead."""
    out = []
    for f in FIELDS:
        a, u = getattr(asked, f.name), getattr(used, f.name)
        if a == u:
            continue
        if f.name == "text":
            out.append(f"Demo mode: the {source}'s pasted text has {len(a):,} characters; the demo keeps the first "
                       f"{len(u):,}")
        else:
            out.append(f"Demo mode: the {source} asks for {_readable(f.name)} {_short(str(a))!r}, which the demo "
                       f"does not allow; using {u!r}")
    return out


def link_notes(asked: Settings, params: Mapping[str, Any]) -> list[str]:
    """What a link's recipient must do that the link cannot do for them: upload the sender's file, or paste the
    sender's text when they kept it out of the link."""
    if asked.source == "upload":
        return ["This link was made with an uploaded file, and a link cannot carry a file: upload it under "
                "**Batch** in the sidebar and press **Run**, or pick another source."]
    if asked.source == "paste" and not asked.text and "text" not in params:
        return ["This link was made with pasted text that its sender kept out of the link: paste your own text "
                "under **Batch** in the sidebar and press **Run**, or pick another source."]
    return []


def from_query(params: Mapping[str, Any], what: str = "URL parameter") -> tuple[Settings, list[str]]:
    """Settings from URL parameters (the old names in ALIASES too; the new name wins); a value that does
    not parse (`Setting.parse`) is reported (as a `what`) and left at its default. Unknown parameters are
    ignored."""
    given = {ALIASES.get(k, k): k for k in params if k in ALIASES and ALIASES[k] not in params}
    given.update({k: k for k in params if k in BY_NAME})
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name, param in given.items():
        f, raw = BY_NAME[name], params[param]
        raw = str(raw[-1] if isinstance(raw, list) and raw else raw)
        try:
            values[name] = raw if f.as_text else f.setting.parse(raw)
        except ConfigError:
            problems.append(f"{what} {param}={_short(raw)!r} is not {f.expected()}; using {f.default!r}")
    return Settings(**values), problems


def _as_text(f: AppSetting, value: Any) -> Optional[str]:
    """A saved setting's value as URL text (None: not a value this setting can hold, reported by from_query)."""
    if isinstance(value, str):
        return value
    if f.setting.kind is bool and isinstance(value, bool):
        return f.setting.text(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None if value is None else repr(value)


def from_record(protocol: Any) -> tuple[Settings, list[str]]:
    """The settings of a saved run record (`ppcore.protocol.Protocol`): the app's own, saved in `settings`, or for a
    record of another front end (`eval --record`) those its protocol states: the config, the model, the scored
    windows and the calibration. Parsed as a link's are (`from_query`): a value that does not parse is reported and
    left at its default."""
    saved = protocol.settings if protocol.front_end == "app" and isinstance(protocol.settings, dict) else None
    params: dict[str, str] = {}
    if saved is not None:
        for name, value in saved.items():
            if name in BY_NAME:
                text = _as_text(BY_NAME[name], value)
                if text is not None:
                    params[name] = text
        return from_query(params, "The record's setting")
    config = protocol.config if isinstance(protocol.config, dict) else {}
    for f in FIELDS:
        if f.group == "prune" and f.name in config:
            value = config[f.name]
            try:
                params[f.name] = f.setting.text(tuple(value) if isinstance(value, list) else value)
            except (TypeError, ValueError):
                pass
    model, data = protocol.model, protocol.data
    calib = protocol.calibration if isinstance(protocol.calibration, dict) else {}
    named = {"model": model.get("name"), "source": "corpus" if data.get("dataset") else None,
             "corpus": data.get("dataset"), "batch_size": data.get("batch_size"), "seq_len": data.get("seq_len"),
             "seed": protocol.seed, **{CALIB_PREFIX + k: calib.get(k) for k in ("dataset", "windows", "seq_len",
                                                                              "batch_size")}}
    for name, value in named.items():
        text = None if value is None else _as_text(BY_NAME[name], value)
        if text is not None:
            params[name] = text
    return from_query(params, "The record's setting")


# --- the open view in the URL: tab, layer, block -------------------------------------------------------------------

VIEW_PARAMS = ("tab", "layer", "block")  # beside the settings in the URL; not settings: the page's place
TAB_SLUGS = dict(zip(TABS, ("probe", "history", "channels", "why", "outputs", "latency", "compare", "sidebyside",
                            "zeroshot", "export"), strict=True))  # one short name per tab, in TABS' order


@dataclass(frozen=True)
class ViewLink:
    """Where a link opens the page: a tab (its TABS label), and in a view with a layer slider its layer and block
    ("attn" or "mlp"); None: the view's own default."""

    tab: Optional[str] = None
    layer: Optional[int] = None
    block: Optional[str] = None

    def to_query(self) -> dict[str, str]:
        """URL parameters: tab by its short name (TAB_SLUGS), layer and block where set."""
        out = {} if self.tab is None else {"tab": TAB_SLUGS[self.tab]}
        if self.layer is not None:
            out["layer"] = str(self.layer)
        if self.block is not None:
            out["block"] = self.block
        return out


def _squash(text: str) -> str:
    return "".join(c for c in text.lower() if c.isalnum())


def view_from_query(params: Mapping[str, Any]) -> tuple[ViewLink, list[str]]:
    """The view a link opens: `tab` (a TAB_SLUGS short name or a tab's label, any case), `layer` (0 or more; its
    range is checked once the result's model is known) and `block` (attn or mlp). A value that does not parse is
    reported, one line each, and left to the view's default; other parameters are ignored."""
    def raw(name: str) -> Optional[str]:
        v = params.get(name)
        v = v[-1] if isinstance(v, list) and v else v
        return None if v is None else str(v)

    problems: list[str] = []
    tab = layer = block = None
    if raw("tab") is not None:
        names = {_squash(label): label for label in TABS} | {_squash(slug): label for label, slug in TAB_SLUGS.items()}
        tab = names.get(_squash(raw("tab") or ""))
        if tab is None:
            problems.append(f"URL parameter tab={_short(raw('tab') or '')!r} is not one of "
                            f"{', '.join(TAB_SLUGS.values())}; opening {TABS[0]}")
    if raw("layer") is not None:
        text = (raw("layer") or "").strip()
        if text.isascii() and text.isdigit() and int(text) <= MAX_SKIP_INDEX:
            layer = int(text)
        else:
            problems.append(f"URL parameter layer={_short(raw('layer') or '')!r} is not a layer number (0 to "
                            f"{MAX_SKIP_INDEX}); using the view's first pruned layer")
    if raw("block") is not None:
        block = (raw("block") or "").strip().lower()
        if block not in BLOCK_NAMES:
            problems.append(f"URL parameter block={_short(raw('block') or '')!r} is not one of "
                            f"{', '.join(BLOCK_NAMES)}; using {BLOCK_NAMES[0]}")
            block = None
    return ViewLink(tab, layer, block), problems


def parse_skip(text: str) -> tuple[int, ...]:
    """The skipped-layers setting as indices: the engine's one parser, `ppcore.config.parse_layer_list`
    ('0-2,5' -> (0, 1, 2, 5); empty -> none; anything else, reversed or huge ranges included, a ConfigError)."""
    return parse_layer_list(text)


def _engine_values(s: Settings, group: str) -> dict[str, Any]:
    return {f.setting.name: f.engine_value(getattr(s, f.name)) for f in FIELDS if f.group == group}


def prune_config(s: Settings, method: str | None = None, ratio: float | None = None) -> PruneConfig:
    """The engine's config for these settings (raises ConfigError with the engine's message)."""
    values = _engine_values(s, "prune")
    return PruneConfig(**{**values, "method": method or values["method"],
                          "ratio": values["ratio"] if ratio is None else ratio})


def calib_config(s: Settings) -> CalibConfig:
    """The calibration these settings ask for (raises ConfigError with the engine's message)."""
    return CalibConfig(**_engine_values(s, "calib"))
