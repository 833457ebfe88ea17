"""The app's hold on the engine: the model and its calibration, loaded once and shared (st.cache_resource).

The model is loaded once per (model, device, dtype) and shared by every session: the engine reads its
weights and never writes them, so sharing is safe. Every computation goes through `ppcore.session`,
which builds its own Pruner per run.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import streamlit as st

from ppcore import LoadedModel

from .background import Jobs
from ppcore.session import Calibration, calibration, open_model

from .state import Settings, calib_config, demo

if TYPE_CHECKING:
    from ppcore.config import CalibConfig


@st.cache_resource(show_spinner=False, max_entries=2)
def get_model(spec: str, device: str, dtype: str) -> LoadedModel:
    """`ppcore.session.open_model`, once per (spec, device, dtype); device 'map' spreads it with accelerate."""
    return open_model(spec, device, dtype)


@st.cache_resource(show_spinner=False, max_entries=8)
def get_calibration(_lm: LoadedModel, fingerprint: str, device: str, dtype: str, config: CalibConfig, seed: int,
                    disk: bool = True) -> Calibration:
    """`ppcore.session.calibration` of the model (keyed by its fingerprint, device and dtype) as `config`
    says: its windows drawn with `seed`, run in batches of `config.batch_size` (FLAP's official
    compensation divides by it); with `disk`, also cached on disk by the engine, so restarts are warm too.

    The demo keeps only its default calibration on disk: each other setting would write another file of
    tens of MB, and visitors choose the settings (SECURITY.md, resource exhaustion)."""
    return calibration(_lm, config, seed, cache=disk)


def for_settings(s: Settings) -> tuple[LoadedModel, Calibration]:
    """The cached model and calibration for the app's settings `s`. The demo keeps only its default calibration
    on disk (`get_calibration`)."""
    lm = get_model(s.model, s.device, s.dtype)
    config = calib_config(s)
    default = Settings()
    disk = not demo() or (config == calib_config(default) and s.seed == default.seed)
    calib = get_calibration(lm, lm.fingerprint, str(lm.device), str(lm.dtype), config, s.seed, disk)
    return lm, calib


@st.cache_resource(show_spinner=False)
def get_jobs() -> Jobs:
    """The server's one queue of background computations (app/background.py), shared by every session."""
    return Jobs()
