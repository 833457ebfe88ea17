"""The OPT family: pre-LN OPT (opt-125m, opt-1.3b and larger).

Norms ``self_attn_layer_norm`` / ``final_layer_norm``, projections with biases, learned positions (offset
2), an ungated MLP ``fc2(act(fc1(x)))``, and optional ``project_in`` / ``project_out`` around the decoder
where ``word_embed_proj_dim`` differs from the hidden size (docs/algorithm.md §2.1). Post-LN OPT
(opt-350m) is refused: the walk applies the norms first (docs/algorithm.md §11, item 9).
"""
from __future__ import annotations

from typing import Any, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from .base import Adapter, LayerWeights, ModelDims


class OPTAdapter(Adapter):
    """Pre-LN ``OPTForCausalLM`` checkpoints."""

    family = "opt"
    model_types = ("opt",)
    summary = "pre-LN OPT"

    @classmethod
    def dims_of(cls, config: Any) -> ModelDims:
        """Sizes from an OPT config: one key/value head per query head, MLP width ``ffn_dim``."""
        return ModelDims(
            num_layers=config.num_hidden_layers,
            hidden=config.hidden_size,
            num_heads=config.num_attention_heads,
            num_kv_heads=config.num_attention_heads,
            head_dim=config.hidden_size // config.num_attention_heads,
            intermediate=config.ffn_dim,
            vocab=config.vocab_size,
            max_positions=config.max_position_embeddings,
        )

    @classmethod
    def activation_of(cls, config: Any) -> str:
        """``config.activation_function`` (relu in OPT)."""
        return config.activation_function

    @classmethod
    def unsupported(cls, config: Any) -> Optional[str]:
        """Post-LN OPT (``do_layer_norm_before=False``)."""
        if not getattr(config, "do_layer_norm_before", True):
            return ("this OPT checkpoint is post-LN (do_layer_norm_before=False, e.g. opt-350m); Probe Pruning "
                    "needs pre-LN OPT (opt-125m, opt-1.3b and larger) or a Llama-family model")
        return None

    def layer_module(self, i: int) -> nn.Module:
        """``model.model.decoder.layers[i]``."""
        return self.model.model.decoder.layers[i]

    def layer(self, i: int) -> LayerWeights:
        """Layer i's two LayerNorms, q/k/v/out_proj, and fc1 as ``up`` and fc2 as ``down`` (all with biases)."""
        lay = self.model.model.decoder.layers[i]
        a = lay.self_attn
        return LayerWeights.of(lay.self_attn_layer_norm, lay.final_layer_norm, a.q_proj, a.k_proj, a.v_proj,
                               a.out_proj, lay.fc1, lay.fc2)

    def _embed(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        dec = self.model.model.decoder
        h = dec.embed_tokens(input_ids)
        if dec.project_in is not None:
            h = dec.project_in(h)
        # OPT's learned positions carry a fixed offset of 2 (HF's OPTLearnedPositionalEmbedding).
        with self.weights_if_offloaded(dec.embed_positions):
            pos_w = dec.embed_positions.weight
            pos = F.embedding(position_ids.to(pos_w.device) + dec.embed_positions.offset, pos_w)
        return h + pos.to(h.device)

    def _extra_proj_flops_per_token(self) -> int:
        # OPT models whose word_embed_proj_dim differs from the hidden size project in and out.
        dec = self.model.model.decoder
        return sum(2 * m.weight.numel() for m in (dec.project_in, dec.project_out) if m is not None)

    def _final(self, h: Tensor) -> Tensor:
        dec = self.model.model.decoder
        if dec.final_layer_norm is not None:
            h = dec.final_layer_norm(h)
        if dec.project_out is not None:
            h = dec.project_out(h)
        return h
