"""One session's result: the analysed batch, and what was computed for it on request. No streamlit here."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Optional

from ppcore.record import BatchRecord, RunRecord
from ppcore.session import AblationResult, Analysis, CompareRow, GenerationPair, Latency, Stability

if TYPE_CHECKING:
    from ppcore.lmeval.run import TaskComparison

from .state import Settings


@dataclass
class Result:
    """Lives in st.session_state: the views redraw from it without the model.

    `analysis` is what a Run computes (ppcore.session.analyse); each other field stays None until its
    view asks for it, and is then filled by the ppcore.session function of the same name.
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

    def keep(self, name: str, value: Any) -> None:
        """Store an on-request computation under its field name (ValueError for any other name)."""
        if name not in ON_REQUEST:
            raise ValueError(f"{name!r} is not an on-request field of Result; use one of {', '.join(ON_REQUEST)}")
        setattr(self, name, value)

    def summary(self) -> dict[str, Optional[float]]:
        """The header's numbers (ppcore.session.Analysis.summary)."""
        return self.analysis.summary()

    def run_record(self) -> RunRecord:
        """The run record: the chosen method, dense, and the baselines once computed."""
        return self.analysis.run_record(self.baselines)


ON_REQUEST = tuple(f.name for f in fields(Result) if f.name not in ("key", "settings", "analysis"))
