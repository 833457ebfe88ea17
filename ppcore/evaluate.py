"""Perplexity of one method on token windows, under the official evaluation protocol (docs/algorithm.md §9)."""
from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional, Union

from torch import Tensor

from .config import PruneConfig
from .errors import DataError
from .loading import LoadedModel
from .protocol import Protocol, build_protocol, describe_windows
from .record import BatchRecord
from .scoring import score, scored_runs
from .stats import CalibStats


@dataclass
class EvalResult:
    """One method's perplexity on the scored batches, its cost, and the protocol that produced it.

    The four FLOPs figures are `ppcore.flops.flops_ratios` over the scored batches: `flops_ratio` and
    `probe_flops_ratio` over the whole model's dense FLOPs (LM head included), `decoder_flops_ratio` and
    `decoder_probe_flops_ratio` over the decoder layers' only (the paper's definition, docs/algorithm.md
    §9.4; None when the counts carry no `head`). Losses are in nats, times in seconds.
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
    heads_removed: Optional[float]  # achieved: fraction of all query heads not kept (ppcore.ratios.achieved_ratios)
    channels_removed: Optional[float]  # achieved: fraction of all MLP channels not kept
    batch_loss: list[float]
    protocol: Protocol
    batch_seconds: list[float] = field(default_factory=list)
    flops: dict[str, int] = field(default_factory=dict)  # summed over the scored batches: dense, pruned, probe, head
    units: dict[str, int] = field(default_factory=dict)  # heads and MLP channels, all and kept, summed over batches
    records: list[BatchRecord] = field(default_factory=list)
    fitted: Optional[dict[str, Any]] = None  # what the method fitted on calibration data, and on what (PP+)

    def summary(self) -> dict[str, Any]:
        """Everything but the records, as plain JSON-ready values (what `eval --json` writes)."""
        d = asdict(self)
        d.pop("records")
        if d["fitted"] is None:
            d.pop("fitted")  # only a method that fitted something says what
        d["protocol"] = self.protocol.to_dict()
        return d

    def line(self) -> str:
        """The one summary line `eval` prints."""
        def f(v: Optional[float]) -> str:
            return "n/a" if v is None else f"{v:.4f}"

        return (f"{self.method} ratio={self.ratio:g} ppl={self.ppl:.3f} tokens={self.tokens} "
                f"seconds={self.seconds:.2f} flops_ratio={f(self.flops_ratio)} "
                f"decoder_flops_ratio={f(self.decoder_flops_ratio)} probe_flops_ratio={f(self.probe_flops_ratio)} "
                f"decoder_probe_flops_ratio={f(self.decoder_probe_flops_ratio)} heads_removed={f(self.heads_removed)} "
                f"channels_removed={f(self.channels_removed)}")


def check_windows(windows: Any, batch_size: Any) -> None:
    """Raise DataError unless `windows` is a (N, L) tensor holding at least one full batch of
    `batch_size` (an integer >= 1) windows of at least 2 tokens."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise DataError(f"batch size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(windows, Tensor) or windows.dim() != 2 or windows.shape[0] < batch_size:
        raise DataError(f"need at least one full batch of {batch_size} windows, got "
                        f"{tuple(windows.shape) if isinstance(windows, Tensor) else type(windows).__name__}")
    if windows.shape[1] < 2:
        # One token has nothing to predict: the mean loss would be 0/0 and the perplexity NaN.
        raise DataError(f"windows of {windows.shape[1]} token(s) have no next token to score; "
                        "perplexity needs windows of at least 2 tokens")


def evaluate(lm: LoadedModel, cfg: PruneConfig, windows: Tensor, batch_size: int,
             calib: Optional[CalibStats] = None, *, warmup: bool = True, level: str = "none",
             protocol: Union[Protocol, Mapping[str, Any], None] = None, progress: bool = True) -> EvalResult:
    """Score `windows` (N, L token ids) in N // batch_size batches; perplexity = exp(mean of batch mean losses).

    With `warmup`, the first batch runs once before scoring: unscored, untimed, no history update (then
    it is scored again, as the official code does; docs/algorithm.md §9.4). `level` ("none", "summary",
    "full") sets the batch records kept. `protocol` defaults to one describing `lm` and the windows.
    Raises DataError for windows that hold no full batch or windows shorter than 2 tokens.
    """
    check_windows(windows, batch_size)
    if protocol is None:
        protocol = build_protocol("eval", lm, describe_windows({}, windows, batch_size), config=cfg.to_dict())
    run = scored_runs(lm, [cfg], calib, progress)[0]
    score(lm, [run], windows, batch_size, warmup=warmup, level=level, progress=progress,
          desc=f"{cfg.method} {cfg.ratio:g}")
    return EvalResult(**run.figures(), protocol=Protocol.from_dict(protocol), records=run.records)
