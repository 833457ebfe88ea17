"""The method registry: the one place method names are defined (`ppcore.config.METHODS` reads it).

One line per method, in the order front ends list them. Adding a method is one file in this package
and one line here (see `base`).
"""
from __future__ import annotations

from ..errors import ConfigError
from .base import Method
from .dense import Dense
from .flap import Flap
from .pp_plus import PPPlus
from .probe import PP, FullBatch
from .static import PpspCalib, WandaSp

METHOD_CLASSES: dict[str, type[Method]] = {
    "dense": Dense,
    "pp": PP,
    "fullbatch": FullBatch,
    "wanda-sp": WandaSp,
    "flap": Flap,
    "ppsp-calib": PpspCalib,
    "pp-plus": PPPlus,
}


def method_class(name: str) -> type[Method]:
    """The class registered under `name`. Raises ConfigError naming the registered methods otherwise."""
    cls = METHOD_CLASSES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(METHOD_CLASSES)}")
    return cls
