"""The Llama family: Llama (SmolLM included), Mistral and Qwen2 (q/k/v biases), one decoder layout.

Pre-norm layers (``input_layernorm`` before attention, ``post_attention_layernorm`` before the MLP),
rotary positions from the model's own ``rotary_emb``, a gated MLP (``down(act(gate(x)) * up(x))``) and
grouped-query attention where ``num_key_value_heads`` < ``num_attention_heads`` (docs/algorithm.md §2.1, §4.2).
"""
from __future__ import annotations

from typing import Any, Optional

from torch import Tensor, nn

from .base import Adapter, LayerWeights, ModelDims

ROPE_TYPES = ("default", "llama3", "linear", "dynamic", "yarn")  # the rope scalings HF's rotary_emb computes here


class LlamaAdapter(Adapter):
    """Llama, Mistral and Qwen2 checkpoints (``LlamaForCausalLM`` and its look-alikes)."""

    family = "llama"
    model_types = ("llama", "mistral", "qwen2")
    summary = "Llama-family incl. SmolLM and grouped-query attention"
    uses_rotary = True
    gated_mlp = True

    @classmethod
    def dims_of(cls, config: Any) -> ModelDims:
        """Sizes from a Llama/Mistral/Qwen2 config: ``head_dim`` where the config sets it, else hidden / heads."""
        heads = config.num_attention_heads
        kv = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return ModelDims(
            num_layers=config.num_hidden_layers,
            hidden=config.hidden_size,
            num_heads=heads,
            num_kv_heads=kv,
            head_dim=head_dim,
            intermediate=config.intermediate_size,
            vocab=config.vocab_size,
            max_positions=getattr(config, "max_position_embeddings", 0) or 0,
        )

    @classmethod
    def activation_of(cls, config: Any) -> str:
        """``config.hidden_act`` (silu in all three)."""
        return config.hidden_act

    @classmethod
    def unsupported(cls, config: Any) -> Optional[str]:
        """An unknown rope scaling, or Qwen2 ``layer_types`` that do not list one type per layer."""
        rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
        if isinstance(rope, dict) and rope.get("rope_type", "default") not in ROPE_TYPES:
            return f"rope type {rope.get('rope_type')!r} is not supported (supported: {', '.join(ROPE_TYPES)})"
        types, n = getattr(config, "layer_types", None), config.num_hidden_layers
        if _per_layer_types(config) and types and len(types) != n:
            return f"config.layer_types lists {len(types)} layers but the model has {n}"
        return None

    def _windows(self) -> tuple[Optional[int], ...]:
        """Mistral slides every layer's attention over `sliding_window` tokens when it is set; Qwen2 only
        the layers its `layer_types` mark "sliding_attention" (HF's modelling code for each); Llama none."""
        c, n = self.config, self.dims.num_layers
        window = getattr(c, "sliding_window", None)
        if not window or c.model_type == "llama":
            return (None,) * n
        if not _per_layer_types(c):
            return (int(window),) * n
        types = list(getattr(c, "layer_types", None) or ["full_attention"] * n)
        return tuple(int(window) if t == "sliding_attention" else None for t in types)

    def layer_module(self, i: int) -> nn.Module:
        """``model.model.layers[i]``."""
        return self.model.model.layers[i]

    def layer(self, i: int) -> LayerWeights:
        """Layer i's two RMSNorms and its q/k/v/o and gate/up/down projections (Qwen2's q/k/v biases included)."""
        lay = self.model.model.layers[i]
        a, m = lay.self_attn, lay.mlp
        return LayerWeights.of(lay.input_layernorm, lay.post_attention_layernorm, a.q_proj, a.k_proj, a.v_proj,
                               a.o_proj, m.up_proj, m.down_proj, gate=m.gate_proj)

    def _embed(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        return self.model.model.embed_tokens(input_ids)

    def _final(self, h: Tensor) -> Tensor:
        return self.model.model.norm(h)

    def _rotary(self, h: Tensor, position_ids: Tensor, kind: str) -> tuple[Tensor, Tensor]:
        return self.model.model.rotary_emb(h, position_ids)


def _per_layer_types(config: Any) -> bool:
    """True where a set `sliding_window` applies per `layer_types` (Qwen2), not to every layer (Mistral)."""
    return bool(getattr(config, "sliding_window", None)) and config.model_type not in ("llama", "mistral")
