"""ppcore: Probe Pruning (Le et al., ICLR 2025) on Hugging Face causal LMs, without touching the model."""

__version__ = "0.6.0"  # the one place the version lives (pyproject.toml reads it)

from .config import METHODS, PruneConfig
from .errors import ConfigError, DataError, ModelLoadError, NonFiniteError, PPCoreError, UnsupportedModelError
from .loading import LoadedModel, Placement, load_model
from .fitting import build_pruner
from .methods import Pruner
from .record import BatchRecord, RunRecord
from .stats import CalibStats
from .walk import logits, token_nll, walk

__all__ = [
    "__version__",
    "METHODS", "PruneConfig", "ConfigError", "DataError", "ModelLoadError", "NonFiniteError", "PPCoreError",
    "UnsupportedModelError", "LoadedModel", "Placement", "load_model", "Pruner", "build_pruner", "BatchRecord",
    "RunRecord", "CalibStats", "logits", "token_nll", "walk",
]
