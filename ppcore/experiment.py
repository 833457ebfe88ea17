"""Everything an evaluation needs before the first batch: model, windows, calibration, protocol."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from torch import Tensor

from .calibrate import calibrate
from .config import CALIB_BATCH_SIZE, PruneConfig, calibration_batches, check_calib_batch_size
from .data import corpus_text, load_windows, sample_windows, tokenize_text, windows_hash
from .errors import DataError
from .evaluate import EvalResult, environment, evaluate
from .loading import LoadedModel, Placement, load_model
from .stats import CalibStats


@dataclass
class EvalSetup:
    """A loaded model, its eval and calibration windows and the protocol that describes them.

    `batch_size` batches the scored windows; `calib_batch_size` batches the calibration pass (its own
    setting: FLAP's official compensation divides by it).
    """

    lm: LoadedModel
    windows: Tensor  # (batches * batch_size, seq_len)
    calib_windows: Tensor
    batch_size: int
    protocol: dict[str, Any]
    cache_dir: Optional[str] = None
    progress: bool = True
    calib_batch_size: int = CALIB_BATCH_SIZE
    _calib: Optional[CalibStats] = field(default=None, repr=False)

    def calibration(self) -> CalibStats:
        """Calibration statistics, computed once (and cached on disk) on first use."""
        if self._calib is None:
            self._calib = calibrate(self.lm, self.calib_windows, self.calib_batch_size, cache_dir=self.cache_dir,
                                    progress=self.progress)
        return self._calib

    def run(self, cfg: PruneConfig, level: str = "none") -> EvalResult:
        proto = dict(self.protocol, config=cfg.to_dict())
        return evaluate(self.lm, cfg, self.windows, self.batch_size,
                        self.calibration() if cfg.needs_calibration else None,
                        level=level, protocol=proto, progress=self.progress)


def calibration_windows(lm: LoadedModel, dataset: str, count: int, seq_len: int, seed: int,
                        cache_dir: Optional[str] = None) -> tuple[Tensor, dict[str, Any]]:
    """Seeded windows from a corpus's calibration split, and their description for the protocol."""
    ids = tokenize_text(lm.tokenizer, corpus_text(dataset, "calibration", cache_dir), cache_dir)
    return sample_windows(ids, count, seq_len, seed), {"dataset": dataset, "split": "calibration",
                                                       "corpus_tokens": int(ids.numel())}


def prepare(
    model: str = "default",
    device: str = "auto",
    dtype: str = "auto",
    dataset: str = "wiki-vital",
    seq_len: int = 512,
    batch_size: int = 20,
    batches: int = 10,
    calib_seqs: int = 100,
    seed: int = 0,
    windows_file: Optional[str] = None,
    calib_windows_file: Optional[str] = None,
    calib_dataset: str = "wiki-vital",
    cache_dir: Optional[str] = None,
    progress: bool = True,
    placement: Optional[Placement] = None,
    calib_batch_size: int = CALIB_BATCH_SIZE,
) -> EvalSetup:
    """Load the model, draw (or read) the eval and calibration windows, and describe it all in a protocol.

    Calibration itself runs on first use (`EvalSetup.calibration`), in batches of `calib_batch_size`
    windows, whatever the eval batch size.
    """
    calib_batch_size = check_calib_batch_size(calib_batch_size)
    for name, v, lo in (("seq_len", seq_len, 2), ("batch_size", batch_size, 1), ("batches", batches, 1),
                        ("calib_seqs", calib_seqs, 1)):
        if v < lo:
            raise DataError(f"{name} must be at least {lo}, got {v}")
    # Cheap checks first, so a typo fails in a second, not after loading the model.
    for f in (windows_file, calib_windows_file):
        if f and not Path(f).expanduser().is_file():
            raise DataError(f"windows file not found: {f}")
    for name, given in (("dataset", dataset), ("calib-dataset", calib_dataset)):
        if given not in ("wiki-vital", "wikitext2") and not given.lower().endswith(".txt"):
            raise DataError(f"unknown {name} {given!r}: use wiki-vital, wikitext2 or a path to a .txt file")
        if given.lower().endswith(".txt") and not Path(given).expanduser().is_file():
            raise DataError(f"text file not found: {given}")
    lm = load_model(model, device=device, dtype=dtype, cache_dir=cache_dir, placement=placement)
    vocab = lm.adapter.dims.vocab
    if windows_file:
        windows = load_windows(windows_file, vocab)
        if windows.shape[0] < batch_size:
            raise DataError(f"{Path(windows_file).name} has {windows.shape[0]} windows, fewer than one batch of {batch_size}")
        windows = windows[: (windows.shape[0] // batch_size) * batch_size]
        data = {"windows_file": Path(windows_file).name}
    else:
        ids = tokenize_text(lm.tokenizer, corpus_text(dataset, "eval", cache_dir), cache_dir)
        windows = sample_windows(ids, batches * batch_size, seq_len, seed)
        data = {"dataset": dataset, "split": "eval", "corpus_tokens": int(ids.numel())}
    if calib_windows_file:
        calib_windows = load_windows(calib_windows_file, vocab)
        calib = {"windows_file": Path(calib_windows_file).name}
    else:
        calib_windows, calib = calibration_windows(lm, calib_dataset, calib_seqs, int(windows.shape[1]), seed,
                                                   cache_dir)
    data.update(windows=int(windows.shape[0]), seq_len=int(windows.shape[1]), batch_size=batch_size,
                batches=int(windows.shape[0] // batch_size), windows_sha256_16=windows_hash(windows))
    n_batches, last = calibration_batches(int(calib_windows.shape[0]), calib_batch_size)
    calib.update(windows=int(calib_windows.shape[0]), seq_len=int(calib_windows.shape[1]), batch_size=calib_batch_size,
                 batches=n_batches, last_batch_size=last, windows_sha256_16=windows_hash(calib_windows))
    protocol = {
        "model": {"name": lm.name, "fingerprint": lm.fingerprint, "family": lm.adapter.family,
                  "model_type": lm.model.config.model_type},
        "data": data,
        "calibration": calib,
        "seed": seed,
        "warmup": "first batch run once before scoring: unscored, untimed, no history update",
        "ppl": "exp(mean over scored batches of each batch's mean token cross-entropy)",
        "device": str(lm.device),
        "dtype": str(lm.dtype).replace("torch.", ""),
        "environment": environment(),
    }
    return EvalSetup(lm, windows, calib_windows, batch_size, protocol, cache_dir, progress, calib_batch_size)
