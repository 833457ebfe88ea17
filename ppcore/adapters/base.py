"""The adapter base class: how the walker reads one model family, and how to add a family.

The walker reads weights through `Adapter` views and never through module attributes that differ per
family; head counts come from the config, never from module attributes (docs/algorithm.md §2.1, §4.2).

How to add a model family
-------------------------
1. One file, ``ppcore/adapters/<family>.py``, holding a subclass of `Adapter`.
2. One registry line in ``ppcore/adapters/__init__.py``: ``register(MyAdapter)``.
Nothing else in the engine names a family; `ppcore.adapters.support.check_supported` refuses what the
family says it cannot run, with the reason.

Class attributes to set:
  ``family``       short name shown in records and ``ppcore info`` ("llama", "opt").
  ``model_types``  the Hugging Face ``config.model_type`` values the class runs.
  ``summary``      one phrase for the "supported model types" message ("pre-LN OPT").
  ``uses_rotary``  True: the walker applies `rotary`'s cos/sin to q and k (rotary positions).
  ``gated_mlp``    True: the MLP is ``down(act(gate(x)) * up(x))``; False: ``down(act(up(x)))``.
  ``prepend_bos``  True for a family trained with its BOS token at the start of every sequence (Gemma 3):
                   corpus windows and prompts then start with it (`LoadedModel.bos_id`).
  ``qk_norm``      True only if the walk applies per-head q/k norms (`LayerWeights.q_norm`/``k_norm``); a
                   model that has them while this is False is refused (the walk would skip them).

Class methods to override (they read the config only, so a config is checked before weights load):
  ``dims_of(config) -> ModelDims``        sizes and head counts (see `ModelDims`).
  ``activation_of(config) -> str``        the MLP activation's name, a key of `ACTIVATIONS`.
  ``unsupported(config) -> str | None``   why this family cannot run this config (a variant the walk
                                          does not implement, a config that contradicts itself), else None.

Methods to override (B: batch, L: tokens, D: hidden size, all tensors on the layer's device):
  ``layer_module(i) -> nn.Module``        decoder layer i (its device and offloading are read from it).
  ``layer(i) -> LayerWeights``            references to layer i's tensors; shapes in `LayerWeights`.
  ``_embed(input_ids, position_ids)``     (B, L) int64 ids and positions -> (B, L, D) hidden states,
                                          including learned positions where the family has them.
  ``_final(h)``                           (B, L, D) -> (B, L, D_out): final norm (and project-out) before
                                          the LM head.
Optional overrides:
  ``_rotary(h, position_ids, kind)``      (cos, sin), each (B, L, head_dim), of one rotary kind, or None
                                          (default: None).
  ``_rope_kinds()``                       per layer, the name of its rotary table ("default" for all layers by
                                          default; Gemma 3's local and global layers use two).
  ``_windows()``                          per layer, its sliding attention window in tokens, or None for
                                          full causal attention (default: all None).
  ``_head(h)``                            logits of final hidden states (default: the output embedding).
  ``_extra_proj_flops_per_token()``       FLOPs per token of projections outside the layers (default 0).

Tests to add for a family (tiny random models built from the family's HF config, no downloads):
  * ``tests/conftest.py``: a ``tiny_<family>()`` builder (2-4 layers, grouped-query attention where the
    family has it);
  * ``tests/test_parity.py``: add it to ``TINY``: the dense walk equals the HF forward (fp32, max
    |diff| <= 1e-4, padded and not), ratio 0 equals dense, sliced blocks equal masked dense ones;
  * ``tests/test_head_layouts.py`` / ``tests/test_loading_errors.py``: every refusal of ``unsupported``
    raises UnsupportedModelError with its reason, and a supported variant loads;
  * ``tests/test_sliding_window.py`` if the family has sliding-window layers.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Rotaries = dict[str, tuple[Tensor, Tensor]]  # rotary kind -> (cos, sin), each (B, L, head_dim)

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}
# The same functions overwriting their argument where torch has the kernel: the engine's `Adapter.act` passes
# only a tensor it has just computed and owns, and saves an allocation of the MLP's widest activation.
_IN_PLACE: dict[str, Callable[[Tensor], Tensor]] = {
    "silu": lambda x: F.silu(x, inplace=True),
    "swish": lambda x: F.silu(x, inplace=True),
    "relu": lambda x: F.relu(x, inplace=True),
}


@dataclass(frozen=True)
class LayerWeights:
    """References (never copies) to one decoder layer's tensors, as nn.Linear stores them (out x in).

    With D = hidden, H = query heads, K = key/value heads, d = head_dim, I = MLP width:
    q_w (H*d, D), k_w and v_w (K*d, D), o_w (D, H*d), up_w and gate_w (I, D), down_w (D, I); each bias
    is None or the matching (out,) vector. ``gate_w`` is None for a family without a gated MLP
    (OPT's fc1 is ``up_w``, its fc2 ``down_w``). The norms are the modules themselves (called on (B, L, D)):
    ``attn_norm``/``mlp_norm`` before each block; ``attn_post_norm``/``mlp_post_norm`` on a block's output
    before the residual add, and ``q_norm``/``k_norm`` on each head's q and k (over d) before rotary, or None
    where the family has none (Gemma 3 has all four, docs/algorithm.md §2.1).
    """

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
    attn_post_norm: Optional[nn.Module] = None  # on o_proj's output, before the residual add (Gemma 3)
    mlp_post_norm: Optional[nn.Module] = None  # on down_proj's output, before the residual add (Gemma 3)
    q_norm: Optional[nn.Module] = None  # per head, over d, before rotary (Gemma 3)
    k_norm: Optional[nn.Module] = None

    @classmethod
    def of(cls, attn_norm: nn.Module, mlp_norm: nn.Module, q: nn.Module, k: nn.Module, v: nn.Module,
           o: nn.Module, up: nn.Module, down: nn.Module, gate: Optional[nn.Module] = None, *,
           attn_post_norm: Optional[nn.Module] = None, mlp_post_norm: Optional[nn.Module] = None,
           q_norm: Optional[nn.Module] = None, k_norm: Optional[nn.Module] = None) -> "LayerWeights":
        """The views of a layer from its norm modules and its nn.Linear projections (``gate`` None: no gated MLP;
        the post-block and q/k norms None where the family has none)."""
        return cls(attn_norm=attn_norm, mlp_norm=mlp_norm,
                   q_w=q.weight, k_w=k.weight, v_w=v.weight, o_w=o.weight,
                   q_b=q.bias, k_b=k.bias, v_b=v.bias, o_b=o.bias,
                   up_w=up.weight, up_b=up.bias, down_w=down.weight, down_b=down.bias,
                   gate_w=None if gate is None else gate.weight, gate_b=None if gate is None else gate.bias,
                   attn_post_norm=attn_post_norm, mlp_post_norm=mlp_post_norm, q_norm=q_norm, k_norm=k_norm)


@dataclass(frozen=True)
class ModelDims:
    """A model's sizes, read from its config: counts, and widths in channels.

    ``head_dim`` is the width of one attention head; ``intermediate`` the MLP width; ``max_positions``
    the longest sequence the config declares (0 where it declares none); ``attn_scale`` the factor on
    q.k in attention (None: 1 / sqrt(head_dim); Gemma 3: query_pre_attn_scalar ** -0.5).
    """

    num_layers: int
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    max_positions: int
    attn_scale: Optional[float] = None

    @property
    def group(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.num_heads // self.num_kv_heads

    @property
    def gqa(self) -> bool:
        """True with grouped-query attention (fewer key/value heads than query heads)."""
        return self.num_kv_heads < self.num_heads


class Adapter:
    """Base: the family-independent surface the walker uses (see the module docstring to add a family).

    Built from a loaded HF causal LM by `ppcore.adapters.make_adapter`, which checks the model first;
    construct one directly only for a model that passed `check_supported`. Read-only: the adapter
    never changes the model, so one adapter serves many threads.
    """

    family: str = ""
    model_types: tuple[str, ...] = ()
    summary: str = ""
    uses_rotary: bool = False
    gated_mlp: bool = False
    qk_norm: bool = False
    prepend_bos: bool = False

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config
        self.dims = self.dims_of(self.config)
        # Each layer's sliding attention window as the HF config defines it (None: full attention).
        self.windows: tuple[Optional[int], ...] = self._windows()
        # Each layer's rotary table (Gemma 3: "full_attention" / "sliding_attention", other bases).
        self.rope_kinds: tuple[str, ...] = self._rope_kinds()
        name = self.activation_of(self.config)
        # May overwrite its argument (see _IN_PLACE): pass only a tensor nobody else reads.
        self.act: Callable[[Tensor], Tensor] = _IN_PLACE.get(name, ACTIVATIONS[name])
        # Placement, read once: with accelerate's device_map each layer has its own execution device,
        # and layers offloaded to the CPU or disk hold meta tensors until materialised.
        n = self.dims.num_layers
        self._layer_devices = [execution_device(self.layer_module(i)) for i in range(n)]
        self._offloaded = [any(_offloaded(m) for m in self.layer_module(i).modules()) for i in range(n)]
        # accelerate's offload hooks swap a module's tensors in and out around each call (and keep per-call
        # state), so on a model with offloaded parts one thread at a time may run them; one lock per model.
        self._lock = threading.RLock()
        self._any_offloaded = any(_offloaded(m) for m in model.modules())
        # Per-batch slicing's layout of the final projections (`transposed`): contiguous transposes, made on first
        # use and shared by every run and thread on this model; `LoadedModel.extra_weight_bytes` counts them. Each
        # with the (storage, version) of the weight it was made from, so that a weight changed in place is redone.
        self._transposed: dict[tuple[int, str], Tensor] = {}
        self._transposed_of: dict[tuple[int, str], tuple[int, int]] = {}
        self._transposed_lock = threading.Lock()

    # --- to override: the config ---------------------------------------------------------------
    @classmethod
    def dims_of(cls, config: Any) -> ModelDims:
        """The model's sizes from its config."""
        raise NotImplementedError

    @classmethod
    def activation_of(cls, config: Any) -> str:
        """The name of the MLP activation (a key of ACTIVATIONS)."""
        raise NotImplementedError

    @classmethod
    def unsupported(cls, config: Any) -> Optional[str]:
        """Why this family cannot run `config` (one sentence, no model name), or None if it can."""
        return None

    # --- to override: the modules --------------------------------------------------------------
    def layer_module(self, i: int) -> nn.Module:
        """Decoder layer i as a module."""
        raise NotImplementedError

    def layer(self, i: int) -> LayerWeights:
        """References to layer i's tensors; for an offloaded layer, call inside `materialized(i)`."""
        raise NotImplementedError

    def _embed(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        raise NotImplementedError

    def _final(self, h: Tensor) -> Tensor:
        raise NotImplementedError

    def _rotary(self, h: Tensor, position_ids: Tensor, kind: str) -> Optional[tuple[Tensor, Tensor]]:
        return None

    def _rope_kinds(self) -> tuple[str, ...]:
        """Per layer, the name of its rotary table (one table, "default", unless the family has several)."""
        return ("default",) * self.dims.num_layers

    def _head(self, h: Tensor) -> Tensor:
        return self.lm_head(h)

    def _windows(self) -> tuple[Optional[int], ...]:
        """Per layer, the sliding window of its attention (None = full causal attention)."""
        return (None,) * self.dims.num_layers

    def _extra_proj_flops_per_token(self) -> int:
        return 0

    # --- module calls outside the layers (offload-safe) ---------------------------------------
    def _guard(self) -> contextlib.AbstractContextManager:
        return self._lock if self._any_offloaded else contextlib.nullcontext()

    def embed(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        """(B, L) token ids and positions -> (B, L, D) input hidden states, on the embedding's device."""
        with self._guard():
            return self._embed(input_ids, position_ids)

    def final(self, h: Tensor) -> Tensor:
        """Final norm (and projection out, where the family has one) before the LM head: (B, L, D) in and out."""
        with self._guard():
            return self._final(h)

    def rotary(self, h: Tensor, position_ids: Tensor) -> Optional[Rotaries]:
        """Every rotary table the layers use, {kind: (cos, sin)}, each (B, L, head_dim), on h's device (the
        rotary module may sit on another device when dispatched); None for a family without rotary
        positions. `layer_rotary` picks a layer's."""
        if not self.uses_rotary:
            return None
        out: Rotaries = {}
        with self._guard():
            for kind in dict.fromkeys(self.rope_kinds):
                cos, sin = self._rotary(h, position_ids, kind)
                out[kind] = (cos.to(h.device), sin.to(h.device))
        return out

    def layer_rotary(self, rots: Optional[Rotaries], i: int) -> Optional[tuple[Tensor, Tensor]]:
        """Layer i's (cos, sin) out of `rotary`'s tables, or None without rotary positions."""
        return None if rots is None else rots[self.rope_kinds[i]]

    def head(self, h: Tensor) -> Tensor:
        """Logits (..., vocab) of final hidden states (..., D): the LM head on its own device (the result
        stays there). For many rows at once use `ppcore.head_chunks.head_blocks` / `run_head`: a 262k-token vocabulary
        makes a whole batch's logits too large to hold."""
        with self._guard():
            return self._head(h)

    # --- shared ------------------------------------------------------------------------------
    @property
    def lm_head(self) -> nn.Module:
        """The model's output embedding (LM head) module."""
        return self.model.get_output_embeddings()

    def outside_flops_per_token(self) -> int:
        """FLOPs per token of the matrix products outside the decoder layers (LM head at its real width)."""
        vocab, width = self.lm_head.weight.shape
        return 2 * int(vocab) * int(width) + self._extra_proj_flops_per_token()

    @property
    def device(self) -> torch.device:
        """Where input ids go: the embedding's execution device."""
        return execution_device(self.model.get_input_embeddings())

    def layer_device(self, i: int) -> torch.device:
        """The execution device of layer i."""
        return self._layer_devices[i]

    def offloaded(self, i: int) -> bool:
        """True when accelerate keeps some of layer i's tensors off-device between uses."""
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

    def weights_if_offloaded(self, module: nn.Module) -> contextlib.AbstractContextManager:
        """`weights_of(module)` where accelerate offloaded it, else a no-op."""
        return self.weights_of(module) if _offloaded(module) else contextlib.nullcontext()

    def transposed(self, layer: int, name: str, weight: Tensor) -> Optional[Tensor]:
        """`weight`.T as a contiguous (in, out) tensor for a per-batch slice of a final projection on the CPU: kept
        for this model under (layer, name), or, for an offloaded layer, made for this call only (keeping it would
        pin the layer's weights in memory); None on another device (the slice gathers columns as before).

        Why: a per-batch slice of a final projection (o_proj, down_proj: (out, in)) keeps some of its *columns*,
        a strided gather; from the transpose it is a copy of whole rows, 3 to 4 times faster on this CPU. The
        product on the slice's transposed view computes the same sums, equal to the column-gathered slice's up to
        float rounding (bit for bit at the batch shapes measured, docs/results.md). Costs the copies' memory once
        per loaded model (125 MiB on the default model at the default skip list), made when a run first slices per
        batch. Not on a GPU: no speed measured there, and its memory is scarcer (about 4 GB at LLaMA-7B's shapes
        in bf16). Thread-safe; the model is only read; a weight changed in place gets a new transpose.
        """
        if weight.device.type != "cpu":
            return None
        if self._offloaded[layer]:
            with torch.inference_mode(False):
                return weight.detach().t().contiguous()
        key, made_from = (layer, name), (weight.untyped_storage().data_ptr(), _version(weight))
        t = self._transposed.get(key)
        if t is None or self._transposed_of.get(key) != made_from:
            with self._transposed_lock:
                t = self._transposed.get(key)
                if t is None or self._transposed_of.get(key) != made_from:
                    with torch.inference_mode(False):  # a plain tensor, usable in and out of inference mode
                        t = weight.detach().t().contiguous()
                    self._transposed[key], self._transposed_of[key] = t, made_from
        return t

    def transposes_bytes(self) -> int:
        """Bytes `transposed` would keep if a run sliced every layer per batch: o_proj's and down_proj's weights of
        each layer held whole on the CPU (what PP adds to this model's memory at most; 0 on a GPU)."""
        total = 0
        for i in range(self.dims.num_layers):
            if self._offloaded[i] or self._layer_devices[i].type != "cpu":
                continue
            w = self.layer(i)
            total += sum(t.numel() * t.element_size() for t in (w.o_w, w.down_w))
        return total

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the LM head weight (the model's compute dtype)."""
        return self.lm_head.weight.dtype

    def position_ids(self, attention_mask: Tensor) -> Tensor:
        """(B, L) positions of the real tokens counted from each row's first real token (pads get 0),
        from a (B, L) 0/1 attention mask."""
        pos = torch.cumsum(attention_mask, dim=1) * attention_mask - 1
        return pos.clamp_min(0).long()


def _version(t: Tensor) -> int:
    """The tensor's in-place write counter (0 for an inference tensor, which keeps none and cannot be written to
    outside inference mode)."""
    try:
        return t._version
    except RuntimeError:
        return 0


def execution_device(module: nn.Module) -> torch.device:
    """Where a module computes: accelerate's hook says so when dispatched, else its first real tensor
    (CPU when it holds none)."""
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
