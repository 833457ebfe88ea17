"""The Gemma 3 family (text decoder: ``Gemma3ForCausalLM``, model type ``gemma3_text``; Gemma-3-270M and up).

What differs from Llama (docs/algorithm.md §2.1, §4.2, §11): four RMSNorms per layer, each computed in
fp32 with a (1 + weight) gain (``input_layernorm`` and ``pre_feedforward_layernorm`` before the blocks,
``post_attention_layernorm`` and ``post_feedforward_layernorm`` on their outputs before the residual add);
per-head RMSNorms on q and k before rotary; attention scaled by ``query_pre_attn_scalar ** -0.5``; local
layers (``layer_types`` "sliding_attention", window ``sliding_window``) and global layers, each kind with
its own rotary base; a GeGLU MLP (gelu with the tanh approximation); embeddings scaled by sqrt(hidden)
inside the embedding module; a tied LM head, optionally soft-capped.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional

import torch
from torch import Tensor

from .base import LayerWeights, ModelDims
from .llama import LlamaAdapter

ROPE_TYPES = ("default", "linear")  # the rope scalings Gemma 3 checkpoints use (linear: the 4B and larger)
LAYER_TYPES = ("sliding_attention", "full_attention")


class Gemma3Adapter(LlamaAdapter):
    """Gemma 3 text checkpoints (``Gemma3ForCausalLM``). The module layout is Llama's (``model.model.layers``,
    ``embed_tokens``, ``norm``, ``rotary_emb``), which this class inherits; what differs is overridden."""

    family = "gemma3"
    model_types = ("gemma3_text",)
    summary = "Gemma 3 text models"
    uses_rotary = True
    gated_mlp = True
    qk_norm = True
    prepend_bos = True  # trained with <bos> on every sequence: without it the loss about doubles

    @classmethod
    def dims_of(cls, config: Any) -> ModelDims:
        """Llama's sizes, with the attention scale ``query_pre_attn_scalar ** -0.5``."""
        return replace(super().dims_of(config), attn_scale=float(config.query_pre_attn_scalar) ** -0.5)

    @classmethod
    def activation_of(cls, config: Any) -> str:
        """``config.hidden_activation`` (gelu_pytorch_tanh)."""
        return config.hidden_activation

    @classmethod
    def unsupported(cls, config: Any) -> Optional[str]:
        """Soft-capped attention logits, bidirectional attention, layer types other than local/global or not
        one per layer, and rope scalings other than default/linear."""
        if getattr(config, "attn_logit_softcapping", None) is not None:
            return ("attention logit soft-capping (attn_logit_softcapping) is not supported: the walk's attention "
                    "is PyTorch's scaled_dot_product_attention, which has no soft-cap")
        if getattr(config, "use_bidirectional_attention", False):
            return "bidirectional attention (use_bidirectional_attention=True) is not a causal LM; it is not supported"
        types = list(getattr(config, "layer_types", None) or [])
        if len(types) != config.num_hidden_layers:
            return f"config.layer_types lists {len(types)} layers but the model has {config.num_hidden_layers}"
        odd = sorted(set(types) - set(LAYER_TYPES))
        if odd:
            return f"layer types {odd} are not supported (supported: {', '.join(LAYER_TYPES)})"
        rope = getattr(config, "rope_parameters", None) or {}
        for kind in set(types):
            params = rope.get(kind, {}) if isinstance(rope, dict) else {}
            if params.get("rope_type", "default") not in ROPE_TYPES:
                return (f"rope type {params.get('rope_type')!r} of the {kind} layers is not supported "
                        f"(supported: {', '.join(ROPE_TYPES)})")
        return None

    def _windows(self) -> tuple[Optional[int], ...]:
        """`sliding_window` on the layers `layer_types` marks "sliding_attention", None on the global ones."""
        w = int(self.config.sliding_window)
        return tuple(w if t == "sliding_attention" else None for t in self.config.layer_types)

    def _rope_kinds(self) -> tuple[str, ...]:
        """Each layer's type: local and global layers read rotary tables of different bases."""
        return tuple(self.config.layer_types)

    def layer(self, i: int) -> LayerWeights:
        """Layer i's four norms, q/k norms, q/k/v/o and gate/up/down projections."""
        lay = self.model.model.layers[i]
        a, m = lay.self_attn, lay.mlp
        return LayerWeights.of(lay.input_layernorm, lay.pre_feedforward_layernorm, a.q_proj, a.k_proj, a.v_proj,
                               a.o_proj, m.up_proj, m.down_proj, gate=m.gate_proj,
                               attn_post_norm=lay.post_attention_layernorm,
                               mlp_post_norm=lay.post_feedforward_layernorm, q_norm=a.q_norm, k_norm=a.k_norm)

    def _rotary(self, h: Tensor, position_ids: Tensor, kind: str) -> tuple[Tensor, Tensor]:
        return self.model.model.rotary_emb(h, position_ids, kind)

    def _head(self, h: Tensor) -> Tensor:
        logits = super()._head(h)
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap is not None:  # HF's Gemma3ForCausalLM: cap * tanh(logits / cap)
            logits = torch.tanh(logits / cap) * cap
        return logits
