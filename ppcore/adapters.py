"""Architecture adapters: where each family keeps its norms, projections, biases and positions.

The walker reads weights through these views and never through module attributes that differ per
family. Head counts come from `config`, never from module attributes.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import UnsupportedModelError

LLAMA_FAMILY = ("llama", "mistral", "qwen2")
SUPPORTED = LLAMA_FAMILY + ("opt",)


@dataclass(frozen=True)
class LayerWeights:
    """References (never copies) to one decoder layer's tensors."""

    attn_norm: nn.Module
    mlp_norm: nn.Module
    q_w: Tensor
    k_w: Tensor
    v_w: Tensor
    o_w: Tensor
    q_b: Optional[Tensor]
    k_b: Optional[Tensor]
    v_b: Optional[Tensor]
    o_b: Optional[Tensor]
    up_w: Tensor  # fc1 on OPT
    up_b: Optional[Tensor]
    down_w: Tensor  # fc2 on OPT
    down_b: Optional[Tensor]
    gate_w: Optional[Tensor]  # None for OPT (no gated MLP)
    gate_b: Optional[Tensor]


@dataclass(frozen=True)
class ModelDims:
    num_layers: int
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    max_positions: int

    @property
    def group(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def gqa(self) -> bool:
        return self.num_kv_heads < self.num_heads


class Adapter:
    """Base: the family-independent surface the walker uses."""

    family: str = ""
    uses_rotary: bool = False
    gated_mlp: bool = False

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config
        self.dims = self._dims()
        # Each layer's sliding attention window as the HF config defines it (None: full attention).
        self.windows: tuple[Optional[int], ...] = self._windows()
        self.act: Callable[[Tensor], Tensor] = _activation(self._act_name())
        # Placement, read once: with accelerate's device_map each layer has its own execution device,
        # and layers offloaded to the CPU or disk hold meta tensors until materialised.
        n = self.dims.num_layers
        self._layer_devices = [execution_device(self.layer_module(i)) for i in range(n)]
        self._offloaded = [any(_offloaded(m) for m in self.layer_module(i).modules()) for i in range(n)]
        # accelerate's offload hooks swap a module's tensors in and out around each call (and keep per-call
        # state), so on a model with offloaded parts one thread at a time may run them; one lock per model.
        self._lock = threading.RLock()
        self._any_offloaded = any(_offloaded(m) for m in model.modules())

    # --- to override -------------------------------------------------------------------------
    def _dims(self) -> ModelDims:
        raise NotImplementedError

    def _act_name(self) -> str:
        raise NotImplementedError

    def layer_module(self, i: int) -> nn.Module:
        raise NotImplementedError

    def layer(self, i: int) -> LayerWeights:
        """References to layer i's tensors; for an offloaded layer, call inside `materialized(i)`."""
        raise NotImplementedError

    def _embed(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        raise NotImplementedError

    def _final(self, h: Tensor) -> Tensor:
        raise NotImplementedError

    def _rotary(self, h: Tensor, position_ids: Tensor) -> Optional[tuple[Tensor, Tensor]]:
        return None

    def _windows(self) -> tuple[Optional[int], ...]:
        """Per layer, the sliding window of its attention (None = full causal attention)."""
        return (None,) * self.dims.num_layers

    # --- module calls outside the layers (offload-safe) ---------------------------------------
    def _guard(self) -> contextlib.AbstractContextManager:
        return self._lock if self._any_offloaded else contextlib.nullcontext()

    def embed(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        with self._guard():
            return self._embed(input_ids, position_ids)

    def final(self, h: Tensor) -> Tensor:
        """Final norm (and projection out, where the family has one) before the LM head."""
        with self._guard():
            return self._final(h)

    def rotary(self, h: Tensor, position_ids: Tensor) -> Optional[tuple[Tensor, Tensor]]:
        """Rotary cos/sin on h's device (the rotary module may sit on another device when dispatched)."""
        with self._guard():
            rot = self._rotary(h, position_ids)
        return None if rot is None else (rot[0].to(h.device), rot[1].to(h.device))

    def head(self, h: Tensor) -> Tensor:
        """Logits: the LM head on its own device (the result stays there)."""
        with self._guard():
            return self.lm_head(h)

    # --- shared ------------------------------------------------------------------------------
    @property
    def lm_head(self) -> nn.Module:
        return self.model.get_output_embeddings()

    def outside_flops_per_token(self) -> int:
        """FLOPs per token of the matrix products outside the decoder layers (LM head at its real width)."""
        vocab, width = self.lm_head.weight.shape
        return 2 * int(vocab) * int(width) + self._extra_proj_flops_per_token()

    def _extra_proj_flops_per_token(self) -> int:
        return 0

    @property
    def device(self) -> torch.device:
        """Where input ids go: the embedding's execution device."""
        return execution_device(self.model.get_input_embeddings())

    def layer_device(self, i: int) -> torch.device:
        return self._layer_devices[i]

    def offloaded(self, i: int) -> bool:
        return self._offloaded[i]

    @contextlib.contextmanager
    def materialized(self, i: int) -> Iterator[torch.device]:
        """Layer i's weights on its execution device for the duration of the block (a no-op unless
        accelerate offloaded it); yields that device. Tensors read inside stay valid after exit."""
        if not self._offloaded[i]:
            yield self._layer_devices[i]
            return
        with self.weights_of(self.layer_module(i)):
            yield self._layer_devices[i]

    @contextlib.contextmanager
    def weights_of(self, module: nn.Module) -> Iterator[None]:
        """Materialise every offloaded tensor under `module` (accelerate's own hooks) for a block."""
        from accelerate.utils import align_module_device

        with self._lock, contextlib.ExitStack() as stack:
            for m in module.modules():
                if _offloaded(m):
                    stack.enter_context(align_module_device(m))
            yield

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def position_ids(self, attention_mask: Tensor) -> Tensor:
        """Positions of the real tokens counted from each row's first real token (pads get 0)."""
        pos = torch.cumsum(attention_mask, dim=1) * attention_mask - 1
        return pos.clamp_min(0).long()


class LlamaAdapter(Adapter):
    family = "llama"
    uses_rotary = True
    gated_mlp = True

    def _dims(self) -> ModelDims:
        c = self.config
        heads = c.num_attention_heads
        kv = getattr(c, "num_key_value_heads", None) or heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
        return ModelDims(
            num_layers=c.num_hidden_layers,
            hidden=c.hidden_size,
            num_heads=heads,
            num_kv_heads=kv,
            head_dim=head_dim,
            intermediate=c.intermediate_size,
            vocab=c.vocab_size,
            max_positions=getattr(c, "max_position_embeddings", 0) or 0,
        )

    def _act_name(self) -> str:
        return self.config.hidden_act

    def _windows(self) -> tuple[Optional[int], ...]:
        """Mistral slides every layer's attention over `sliding_window` tokens when it is set; Qwen2 only
        the layers its `layer_types` mark "sliding_attention" (HF's modelling code for each); Llama none."""
        c, n = self.config, self.dims.num_layers
        window = getattr(c, "sliding_window", None)
        if not window or c.model_type == "llama":
            return (None,) * n
        if c.model_type == "mistral":
            return (int(window),) * n
        types = list(getattr(c, "layer_types", None) or ["full_attention"] * n)
        if len(types) != n:
            raise UnsupportedModelError(f"config.layer_types lists {len(types)} layers but the model has {n}")
        return tuple(int(window) if t == "sliding_attention" else None for t in types)

    def layer_module(self, i: int) -> nn.Module:
        return self.model.model.layers[i]

    def layer(self, i: int) -> LayerWeights:
        lay = self.model.model.layers[i]
        a, m = lay.self_attn, lay.mlp
        return LayerWeights(
            attn_norm=lay.input_layernorm,
            mlp_norm=lay.post_attention_layernorm,
            q_w=a.q_proj.weight, k_w=a.k_proj.weight, v_w=a.v_proj.weight, o_w=a.o_proj.weight,
            q_b=a.q_proj.bias, k_b=a.k_proj.bias, v_b=a.v_proj.bias, o_b=a.o_proj.bias,
            up_w=m.up_proj.weight, up_b=m.up_proj.bias,
            down_w=m.down_proj.weight, down_b=m.down_proj.bias,
            gate_w=m.gate_proj.weight, gate_b=m.gate_proj.bias,
        )

    def _embed(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        return self.model.model.embed_tokens(input_ids)

    def _final(self, h: Tensor) -> Tensor:
        return self.model.model.norm(h)

    def _rotary(self, h: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.model.rotary_emb(h, position_ids)


class OPTAdapter(Adapter):
    family = "opt"

    def _dims(self) -> ModelDims:
        c = self.config
        return ModelDims(
            num_layers=c.num_hidden_layers,
            hidden=c.hidden_size,
            num_heads=c.num_attention_heads,
            num_kv_heads=c.num_attention_heads,
            head_dim=c.hidden_size // c.num_attention_heads,
            intermediate=c.ffn_dim,
            vocab=c.vocab_size,
            max_positions=c.max_position_embeddings,
        )

    def _act_name(self) -> str:
        return self.config.activation_function

    def layer_module(self, i: int) -> nn.Module:
        return self.model.model.decoder.layers[i]

    def layer(self, i: int) -> LayerWeights:
        lay = self.model.model.decoder.layers[i]
        a = lay.self_attn
        return LayerWeights(
            attn_norm=lay.self_attn_layer_norm,
            mlp_norm=lay.final_layer_norm,
            q_w=a.q_proj.weight, k_w=a.k_proj.weight, v_w=a.v_proj.weight, o_w=a.out_proj.weight,
            q_b=a.q_proj.bias, k_b=a.k_proj.bias, v_b=a.v_proj.bias, o_b=a.out_proj.bias,
            up_w=lay.fc1.weight, up_b=lay.fc1.bias,
            down_w=lay.fc2.weight, down_b=lay.fc2.bias,
            gate_w=None, gate_b=None,
        )

    def _embed(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        dec = self.model.model.decoder
        h = dec.embed_tokens(input_ids)
        if dec.project_in is not None:
            h = dec.project_in(h)
        # OPT's learned positions carry a fixed offset of 2 (HF's OPTLearnedPositionalEmbedding).
        with self.weights_of(dec.embed_positions) if _offloaded(dec.embed_positions) else contextlib.nullcontext():
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


def execution_device(module: nn.Module) -> torch.device:
    """Where a module computes: accelerate's hook says so when dispatched, else its first real tensor."""
    dev = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    if dev is not None:
        return torch.device("cuda", dev) if isinstance(dev, int) else torch.device(dev)
    for t in list(module.parameters()) + list(module.buffers()):
        if t.device.type != "meta":
            return t.device
    return torch.device("cpu")


def _offloaded(module: nn.Module) -> bool:
    """True when accelerate keeps this module's own tensors off-device (CPU or disk) between uses."""
    if getattr(module, "_hf_hook", None) is None:
        return False
    from accelerate.utils import has_offloaded_params

    return has_offloaded_params(module)


def _activation(name: str) -> Callable[[Tensor], Tensor]:
    table: dict[str, Callable[[Tensor], Tensor]] = {
        "silu": F.silu,
        "swish": F.silu,
        "relu": F.relu,
        "gelu": F.gelu,
        "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
        "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    }
    if name not in table:
        raise UnsupportedModelError(f"activation {name!r} is not supported; supported: {', '.join(table)}")
    return table[name]


def make_adapter(model: nn.Module) -> Adapter:
    """The adapter for a loaded HF causal LM, or UnsupportedModelError saying what is supported."""
    cfg = model.config
    mt = getattr(cfg, "model_type", None)
    if mt in LLAMA_FAMILY:
        for attr in ("q_norm", "k_norm"):
            if hasattr(model.model.layers[0].self_attn, attr):
                raise UnsupportedModelError(f"{mt} with per-head {attr} is not supported")
        rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
        if isinstance(rope, dict) and rope.get("rope_type", "default") not in ("default", "llama3", "linear", "dynamic", "yarn"):
            raise UnsupportedModelError(f"rope type {rope.get('rope_type')!r} is not supported")
        return check_layout(LlamaAdapter(model))
    if mt == "opt":
        if not cfg.do_layer_norm_before:
            raise UnsupportedModelError(
                "this OPT checkpoint is post-LN (do_layer_norm_before=False, e.g. opt-350m); "
                "Probe Pruning needs pre-LN OPT (opt-125m, opt-1.3b and larger)"
            )
        return check_layout(OPTAdapter(model))
    raise UnsupportedModelError(
        f"architecture {mt!r} is not supported; supported model types: {', '.join(SUPPORTED)} "
        "(Llama-family incl. SmolLM and grouped-query attention, pre-LN OPT)"
    )


def check_layout(adapter: Adapter) -> Adapter:
    """Refuse head layouts and weight shapes the walk cannot run, at load time, with one message.

    Grouped-query attention needs the query heads to split evenly over the key/value heads; every
    layer's projections must have the shapes the config's head counts, head size, hidden size and MLP
    width imply (a checkpoint whose config disagrees with its weights would otherwise fail mid-walk
    with a torch error, or run on the wrong heads). Shapes are read without touching tensor data, so
    offloaded (meta) layers are checked too. Raises UnsupportedModelError.
    """
    d = adapter.dims
    if d.num_heads < 1 or d.num_kv_heads < 1 or d.num_heads % d.num_kv_heads:
        raise UnsupportedModelError(
            f"{d.num_heads} query heads over {d.num_kv_heads} key/value heads: grouped-query attention needs the "
            "query heads to split evenly over the key/value heads; the config's num_attention_heads / "
            "num_key_value_heads do not describe a model that can run")
    q, kv = d.num_heads * d.head_dim, d.num_kv_heads * d.head_dim
    for i in range(d.num_layers):
        w = adapter.layer(i)
        want = {"q_proj": (w.q_w, (q, d.hidden)), "k_proj": (w.k_w, (kv, d.hidden)), "v_proj": (w.v_w, (kv, d.hidden)),
                "o_proj": (w.o_w, (d.hidden, q)), "up_proj": (w.up_w, (d.intermediate, d.hidden)),
                "down_proj": (w.down_w, (d.hidden, d.intermediate))}
        if w.gate_w is not None:
            want["gate_proj"] = (w.gate_w, (d.intermediate, d.hidden))
        for name, (t, shape) in want.items():
            if tuple(t.shape) != shape:
                raise UnsupportedModelError(
                    f"layer {i} {name} has shape {tuple(t.shape)} but the config ({d.num_heads} heads of {d.head_dim} "
                    f"over {d.num_kv_heads} key/value heads, hidden {d.hidden}, MLP {d.intermediate}) implies {shape}: "
                    "the config does not match the weights")
    return adapter
