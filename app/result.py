"""One session's result: the analysed batch, and what was computed for it on request; or a saved run replayed.
No streamlit here."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Optional

from ppcore import DataError, session
from ppcore.record import BatchRecord, RunRecord
from ppcore.session import (AblationResult, Analysis, CompareRow, GenerationPair, Latency, Replayed, SideBySide,
                            Stability)

if TYPE_CHECKING:
    from ppcore.lmeval.run import TaskComparison

from .state import Settings, demo, demo_changes, from_record, limits


@dataclass(frozen=True)
class Pending:
    """An on-request computation running in the background (app/background.py) for a Result: the job's key, the
    Result field it fills (`entry`: under that name of the field's dict), and its label for the page."""

    key: str
    name: str
    entry: Optional[str]
    label: str


@dataclass
class Result:
    """Lives in st.session_state: the views redraw from it without the model.

    `analysis` is what a Run computes (ppcore.session.analyse), or what a saved run record replays
    (ppcore.session.replay: `replayed` is then set); each other field stays None until its view asks for it,
    and is then filled by the ppcore.session function of the same name (a replay fills `baselines` from its record).
    """

    key: str
    settings: Settings
    analysis: Analysis
    baselines: Optional[dict[str, BatchRecord]] = None
    stability: Optional[Stability] = None
    generation: Optional[GenerationPair] = None
    latency: Optional[Latency] = None
    comparison: Optional[list[CompareRow]] = None
    zeroshot: Optional["TaskComparison"] = None
    ablations: Optional[dict[str, AblationResult]] = None  # by ablation name (ppcore.session.ablation)
    side_by_side: Optional[dict[str, SideBySide]] = None  # by configuration B's label (ppcore.session.side_by_side)
    # Per on-request field (or ablation name): when the shown value was computed, if this server's disk gave it
    # (app/stored.py reused_note), else None.
    reused: dict[str, Optional[str]] = field(default_factory=dict)
    pending: dict[str, Pending] = field(default_factory=dict)  # by field (or entry) name: still computing

    def keep(self, name: str, value: Any) -> None:
        """Store an on-request computation under its field name (ValueError for any other name)."""
        if name not in ON_REQUEST:
            raise ValueError(f"{name!r} is not an on-request field of Result; use one of {', '.join(ON_REQUEST)}")
        setattr(self, name, value)

    @property
    def replayed(self) -> Optional[Replayed]:
        """Where a replayed result came from and what its record lacks; None for a result a Run computed."""
        return self.analysis.replayed

    def summary(self) -> dict[str, Optional[float]]:
        """The header's numbers (ppcore.session.Analysis.summary)."""
        return self.analysis.summary()

    def run_record(self) -> RunRecord:
        """The run record the Export tab writes (ppcore.session.export_record): the chosen method, dense, and the
        baselines once computed, with what a replay needs; a replay's record as it was read."""
        return session.export_record(self.analysis, self.baselines)


ON_REQUEST = tuple(f.name for f in fields(Result) if f.name not in ("key", "settings", "analysis", "reused",
                                                                             "pending"))


def replayed_result(data: bytes, name: str) -> tuple[Result, list[str]]:
    """A saved run record's bytes as a Result (ppcore.session.open_record), with the settings it was made with (the
    demo's lock applied), and the warnings to show: settings that did not parse, and what demo mode changed. Refuses
    a file over `limits().record_mb` before parsing it. Raises DataError (RecordError) with one clear message."""
    lim = limits()
    if len(data) > lim.record_bytes:
        raise DataError(f"{name} is {len(data) / 2**20:.1f} MB, over the {lim.record_mb} MB limit for run records")
    a = session.open_record(data, name, session.RecordLimits(max_bytes=lim.record_bytes, cells=lim.record_cells))
    s, problems = from_record(a.protocol)
    if demo():
        locked = s.locked()
        problems += demo_changes(s, locked, "record")
        s = locked
    replayed = a.replayed
    assert replayed is not None
    return Result(s.key(), s, a, baselines=dict(replayed.baselines) or None), problems
