"""The one exception family a ppcore user sees: every message names what was asked and what to do."""
from __future__ import annotations


class PPCoreError(Exception):
    """Base class of every error ppcore raises on purpose."""


class ModelLoadError(PPCoreError):
    """A model could not be found, read or converted."""


class UnsupportedModelError(PPCoreError):
    """The model loaded but its architecture is not one the walker supports."""


class ConfigError(PPCoreError, ValueError):
    """A pruning or evaluation setting is out of range or inconsistent."""


class DataError(PPCoreError, ValueError):
    """A batch, corpus or window file is unusable."""


class NonFiniteError(PPCoreError):
    """Activations, statistics or losses became infinite or NaN (usually fp16's range was exceeded)."""
