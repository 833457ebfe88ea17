"""Perplexity evaluation of one method on token windows, with the official warm-up protocol."""
from __future__ import annotations

import math
import numbers
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import __version__
from .config import PruneConfig
from .errors import DataError
from .flops import add_flops, flops_ratios
from .loading import LoadedModel
from .methods import Pruner
from .record import BatchRecord
from .stats import CalibStats
from .walk import token_nll, walk


@dataclass
class EvalResult:
    """One method's perplexity on the scored batches, its cost, and the protocol that produced it.

    The four FLOPs figures follow `../shared/BENCHMARKS.md` (`ppcore.flops.flops_ratios` over the
    scored batches): `flops_ratio` and `probe_flops_ratio` over the whole model's dense FLOPs (LM head
    included), `decoder_flops_ratio` and `decoder_probe_flops_ratio` over the decoder layers' only
    (the paper's definition; None when the counts carry no `head`).
    """

    method: str
    ratio: float
    ppl: float
    tokens: int
    seconds: float  # wall time of the scored batches (walk + LM head + loss)
    flops_ratio: float  # pruned over dense, whole model incl. LM head, scored batches
    probe_flops_ratio: float  # probe over dense, whole model
    decoder_flops_ratio: Optional[float]  # pruned over dense, decoder layers only (the paper's)
    decoder_probe_flops_ratio: Optional[float]  # probe over dense, decoder layers only
    batch_loss: list[float]
    protocol: dict[str, Any]
    batch_seconds: list[float] = field(default_factory=list)
    flops: dict[str, int] = field(default_factory=dict)  # summed over the scored batches: dense, pruned, probe, head
    records: list[BatchRecord] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Everything but the records, as plain JSON-ready values (what `eval --json` writes)."""
        d = asdict(self)
        d.pop("records")
        return d

    def line(self) -> str:
        """The one summary line `eval` prints."""
        def f(v: Optional[float]) -> str:
            return "n/a" if v is None else f"{v:.4f}"

        return (f"{self.method} ratio={self.ratio:g} ppl={self.ppl:.3f} tokens={self.tokens} "
                f"seconds={self.seconds:.2f} flops_ratio={f(self.flops_ratio)} "
                f"decoder_flops_ratio={f(self.decoder_flops_ratio)} probe_flops_ratio={f(self.probe_flops_ratio)} "
                f"decoder_probe_flops_ratio={f(self.decoder_probe_flops_ratio)}")


def environment() -> dict[str, Any]:
    import transformers

    return {
        "ppcore": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
        "transformers": transformers.__version__, "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def evaluate(
    lm: LoadedModel,
    cfg: PruneConfig,
    windows: Tensor,
    batch_size: int,
    calib: Optional[CalibStats] = None,
    *,
    warmup: bool = True,
    level: str = "none",
    protocol: Optional[dict[str, Any]] = None,
    progress: bool = True,
) -> EvalResult:
    """Score `windows` in batches of `batch_size`; perplexity = exp(mean of batch mean losses).

    With `warmup`, the first batch runs once before scoring: unscored, untimed, no history update
    (then it is scored again, as the official code does).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise DataError(f"batch size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(windows, Tensor) or windows.dim() != 2 or windows.shape[0] < batch_size:
        raise DataError(f"need at least one full batch of {batch_size} windows, got "
                        f"{tuple(windows.shape) if isinstance(windows, Tensor) else type(windows).__name__}")
    if windows.shape[1] < 2:
        # One token has nothing to predict: the mean loss would be 0/0 and the perplexity NaN.
        raise DataError(f"windows of {windows.shape[1]} token(s) have no next token to score; "
                        "perplexity needs windows of at least 2 tokens")
    n_batches = windows.shape[0] // batch_size
    pruner = Pruner(lm.adapter, cfg, calib)
    records: list[BatchRecord] = []
    cuda = lm.device.type == "cuda"
    if warmup:
        res = walk(lm.adapter, pruner, windows[:batch_size], update_history=False, level=level,
                   timing=level != "none", phase="warmup", index=0)
        token_nll(lm.adapter, res.hidden, windows[:batch_size], res.valid)
        if res.record is not None:
            records.append(res.record)
    losses: list[float] = []
    secs: list[float] = []
    tokens = 0
    flops: dict[str, int] = {}  # summed by key over the scored batches (dense, pruned, probe, head)
    for b in tqdm(range(n_batches), desc=f"{cfg.method} {cfg.ratio:g}", unit="batch", disable=not progress):
        ids = windows[b * batch_size:(b + 1) * batch_size]
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = walk(lm.adapter, pruner, ids, update_history=True, level=level, timing=level != "none",
                   phase="scored", index=b)
        if cuda and res.record is not None:
            torch.cuda.synchronize()
        t_head = time.perf_counter()
        nll, mask = token_nll(lm.adapter, res.hidden, ids, res.valid)
        loss = float(nll.double().sum() / mask.double().sum())
        if cuda:
            torch.cuda.synchronize()
        t_end = time.perf_counter()
        secs.append(t_end - t0)
        losses.append(loss)
        tokens += int(mask.sum())
        add_flops(flops, res.flops)
        if res.record is not None:
            res.record.loss, res.record.tokens = loss, int(mask.sum())
            # The unpruned tail (LM head and loss) and the whole batch, beside embed_s and layers_s.
            res.record.times.update(head_s=t_end - t_head, total_s=t_end - t0)
            records.append(res.record)
    ppl = math.exp(sum(losses) / len(losses))
    return EvalResult(
        method=cfg.method, ratio=cfg.ratio, ppl=ppl, tokens=tokens, seconds=sum(secs), **flops_ratios(flops),
        batch_loss=losses, protocol=dict(protocol or {}), batch_seconds=secs, flops=flops, records=records,
    )

