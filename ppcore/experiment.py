"""Everything an evaluation needs before the first batch: model, windows, calibration, protocol."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from torch import Tensor

from .calibrate import calibrate
from .config import CALIB_BATCH_SIZE, CalibConfig, PruneConfig
from .data import corpus_text, load_windows, sample_windows, tokenize_text
from .errors import DataError
from .evaluate import EvalResult, evaluate
from .loading import LoadedModel, Placement, load_model
from .protocol import Protocol, build_protocol, describe_calibration, describe_windows
from .stats import CalibStats


@dataclass
class EvalSetup:
    """A loaded model, its eval and calibration windows and the protocol that describes them.

    `windows` (batches * batch_size, seq_len) and `calib_windows` (windows, calib seq_len) are token ids.
    `batch_size` batches the scored windows; `calib_batch_size` batches the calibration pass (its own
    setting: FLAP's official compensation divides by it, docs/algorithm.md §8.1c). A dict `protocol` is
    converted with `Protocol.from_dict`.
    """

    lm: LoadedModel
    windows: Tensor
    calib_windows: Tensor
    batch_size: int
    protocol: Protocol
    cache_dir: Optional[str] = None
    progress: bool = True
    calib_batch_size: int = CALIB_BATCH_SIZE
    _calib: Optional[CalibStats] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.protocol = Protocol.from_dict(self.protocol)

    def calibration(self) -> CalibStats:
        """Calibration statistics, computed once (and cached on disk) on first use."""
        if self._calib is None:
            self._calib = calibrate(self.lm, self.calib_windows, self.calib_batch_size, cache_dir=self.cache_dir,
                                    progress=self.progress)
        return self._calib

    def run(self, cfg: PruneConfig, level: str = "none") -> EvalResult:
        """`evaluate` of `cfg` on these windows (the protocol gains the config); `level` as in `walk`."""
        return evaluate(self.lm, cfg, self.windows, self.batch_size,
                        self.calibration() if cfg.needs_calibration else None,
                        level=level, protocol=self.protocol.replace(config=cfg.to_dict()), progress=self.progress)


def calibration_windows(lm: LoadedModel, dataset: str, count: int, seq_len: int, seed: int,
                        cache_dir: Optional[str] = None) -> tuple[Tensor, dict[str, Any]]:
    """`count` seeded windows of `seq_len` tokens, (count, seq_len), from a corpus's calibration split,
    and their source for the protocol (dataset, split, corpus_tokens). Raises DataError for an unusable
    corpus or a corpus shorter than one window."""
    ids = tokenize_text(lm.tokenizer, corpus_text(dataset, "calibration", cache_dir), cache_dir)
    return sample_windows(ids, count, seq_len, seed, lm.bos_id), {"dataset": dataset, "split": "calibration",
                                                       "corpus_tokens": int(ids.numel())}


def check_corpus(flag: str, name: str) -> None:
    """Raise DataError unless `name` is wiki-vital, wikitext2 or an existing .txt file (`flag` names the setting)."""
    if name not in ("wiki-vital", "wikitext2") and not name.lower().endswith(".txt"):
        raise DataError(f"unknown {flag} {name!r}: use wiki-vital, wikitext2 or a path to a .txt file")
    if name.lower().endswith(".txt") and not Path(name).expanduser().is_file():
        raise DataError(f"text file not found: {name}")


def prepare(
    model: str = "default",
    device: str = "auto",
    dtype: str = "auto",
    dataset: str = "wiki-vital",
    seq_len: int = 512,
    batch_size: int = 20,
    batches: int = 10,
    seed: int = 0,
    windows_file: Optional[str] = None,
    calib_windows_file: Optional[str] = None,
    cache_dir: Optional[str] = None,
    progress: bool = True,
    placement: Optional[Placement] = None,
    calib: Optional[CalibConfig] = None,
    calib_len_follows: bool = False,
    front_end: str = "eval",
) -> EvalSetup:
    """Load the model, draw (or read) the eval and calibration windows, and describe it all in a protocol.

    Scored: `batches` batches of `batch_size` windows of `seq_len` tokens drawn with `seed` from
    `dataset`'s eval split, or the full batches of `windows_file` (.npy). Calibration: `calib` (None: the
    CalibConfig defaults), drawn with `seed` from its dataset's calibration split, or the windows of
    `calib_windows_file`; with `calib_len_follows` (or no `calib`) the calibration windows are as long
    as the scored ones, whatever `calib.seq_len` says (the official protocol has both at 512).
    Calibration itself runs on first use (`EvalSetup.calibration`), in batches of `calib.batch_size`.
    `front_end` names the command in the protocol. Raises DataError (bad sizes, files, corpora; checked
    before the model loads) and ModelLoadError.
    """
    for name, v, lo in (("seq_len", seq_len, 2), ("batch_size", batch_size, 1), ("batches", batches, 1)):
        if v < lo:
            raise DataError(f"{name} must be at least {lo}, got {v}")
    # Cheap checks first, so a typo fails in a second, not after loading the model.
    for f in (windows_file, calib_windows_file):
        if f and not Path(f).expanduser().is_file():
            raise DataError(f"windows file not found: {f}")
    check_corpus("dataset", dataset)
    check_corpus("calib-dataset", (calib or CalibConfig()).dataset)
    lm = load_model(model, device=device, dtype=dtype, cache_dir=cache_dir, placement=placement)
    vocab = lm.adapter.dims.vocab
    if windows_file:
        windows = load_windows(windows_file, vocab)
        if windows.shape[0] < batch_size:
            raise DataError(f"{Path(windows_file).name} has {windows.shape[0]} windows, "
                            f"fewer than one batch of {batch_size}")
        windows = windows[: (windows.shape[0] // batch_size) * batch_size]
        source: dict[str, Any] = {"windows_file": Path(windows_file).name}
        if lm.bos_id is not None and not bool((windows[:, 0] == lm.bos_id).all()):
            # Scored as given (the user's windows), but such a model is far off without it (algorithm.md §9.1).
            warnings.warn(f"{Path(windows_file).name}: some windows do not start with {lm.name}'s <bos> token "
                          f"(id {lm.bos_id}), which this model was trained with on every sequence; its losses "
                          "will be much higher than on windows that do", stacklevel=2)
    else:
        ids = tokenize_text(lm.tokenizer, corpus_text(dataset, "eval", cache_dir), cache_dir)
        windows = sample_windows(ids, batches * batch_size, seq_len, seed, lm.bos_id)
        source = {"dataset": dataset, "split": "eval", "corpus_tokens": int(ids.numel()),
                  **({"bos": lm.bos_id} if lm.bos_id is not None else {})}
    if calib is None or calib_len_follows:
        calib = replace(calib or CalibConfig(), seq_len=int(windows.shape[1]))
    if calib_windows_file:
        calib_windows = load_windows(calib_windows_file, vocab)
        calib_section = describe_calibration({"windows_file": Path(calib_windows_file).name}, calib_windows,
                                             calib.batch_size)
    else:
        calib_windows, calib_source = calibration_windows(lm, calib.dataset, calib.windows, calib.seq_len, seed,
                                                          cache_dir)
        calib_section = describe_calibration(calib_source, calib_windows, calib.batch_size, seed)
    protocol = build_protocol(front_end, lm, describe_windows(source, windows, batch_size),
                              calibration=calib_section, seed=seed)
    return EvalSetup(lm, windows, calib_windows, batch_size, protocol, cache_dir, progress, calib.batch_size)
