"""Architecture adapters: where each model family keeps its norms, projections, biases and positions.

One file per family behind the documented base class (`base.Adapter`; its module docstring is the guide
to adding a family), and the registry below: one `register` line per family. `support` decides whether
a model is supported (`check_supported`, `check_layout`, `make_adapter`).
"""
from __future__ import annotations

from .base import ACTIVATIONS, Adapter, LayerWeights, ModelDims, Rotaries, execution_device
from .gemma3 import Gemma3Adapter
from .llama import LlamaAdapter
from .opt import OPTAdapter
from .support import FAMILIES, check_layout, check_supported, make_adapter, register, supported_types

# The family registry (model_type -> adapter class): one line per family.
register(LlamaAdapter)  # llama, mistral, qwen2
register(OPTAdapter)  # pre-LN OPT
register(Gemma3Adapter)  # gemma3_text

SUPPORTED = supported_types()  # the model types, in registration order

__all__ = [
    "ACTIVATIONS", "Adapter", "FAMILIES", "Gemma3Adapter", "LayerWeights", "LlamaAdapter", "ModelDims", "OPTAdapter",
    "Rotaries", "SUPPORTED",
    "check_layout", "check_supported", "execution_device", "make_adapter", "register", "supported_types",
]
