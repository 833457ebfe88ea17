"""The one place that decides whether a model is supported, and says why not.

`check_supported` reads a config (before any weight is loaded): custom code, the family, the family's
own refusals (`Adapter.unsupported`), the activation and the head layout. `check_layout` reads a built
adapter: module parts the walk would skip and weight shapes the config does not imply. `make_adapter`
runs both. Every refusal is an UnsupportedModelError whose message gives the reason and, where the
family is unknown, the supported model types.
"""
from __future__ import annotations

from typing import Any, Optional

from torch import nn

from ..errors import UnsupportedModelError
from .base import ACTIVATIONS, Adapter

# Model types close to a supported one, and what to use instead.
HINTS = {"gemma3": ". This is a multimodal Gemma 3 checkpoint (image and text); only the text-only ones "
                   "(model type gemma3_text: gemma-3-270m, gemma-3-1b) are supported"}
FAMILIES: dict[str, type[Adapter]] = {}  # model_type -> adapter class; filled by register() in __init__.py


def register(cls: type[Adapter]) -> type[Adapter]:
    """Add a family: map each of `cls.model_types` to `cls`. Returns `cls`."""
    for model_type in cls.model_types:
        FAMILIES[model_type] = cls
    return cls


def supported_types() -> tuple[str, ...]:
    """The model types a walk can run, in registration order."""
    return tuple(FAMILIES)


def _listing() -> str:
    """'llama, mistral, qwen2, opt (Llama-family ..., pre-LN OPT)': the model types and what each family covers."""
    summaries = ", ".join(dict.fromkeys(cls.summary for cls in FAMILIES.values()))
    return f"{', '.join(FAMILIES)} ({summaries})"


def check_supported(config: Any, name: Optional[str] = None) -> type[Adapter]:
    """The adapter class that runs `config`, or UnsupportedModelError saying why none does.

    Refused, in this order: custom modelling code (``auto_map``; ppcore never runs remote code), a
    ``model_type`` no family registers, the family's own refusal (`Adapter.unsupported`, e.g. post-LN
    OPT or an unknown rope scaling), an activation not in ACTIVATIONS, and query heads that do not split
    evenly over the key/value heads (docs/algorithm.md §4.2). `name` (what the user asked for) leads the
    message where given.
    """
    who = f"{name}: " if name else ""
    if getattr(config, "auto_map", None):
        raise UnsupportedModelError(
            f"{name or 'this checkpoint'} ships custom modelling code (auto_map); ppcore never runs remote code. "
            f"Supported architectures: {_listing()}")
    model_type = getattr(config, "model_type", None)
    family = FAMILIES.get(model_type)
    if family is None:
        raise UnsupportedModelError(
            f"{who}architecture {model_type!r} is not supported; supported model types: {_listing()}"
            + HINTS.get(model_type, ""))
    reason = family.unsupported(config)
    if reason:
        raise UnsupportedModelError(who + reason)
    act = family.activation_of(config)
    if act not in ACTIVATIONS:
        raise UnsupportedModelError(f"{who}activation {act!r} is not supported; supported: {', '.join(ACTIVATIONS)}")
    try:
        d = family.dims_of(config)
    except (AttributeError, TypeError, ZeroDivisionError) as e:
        raise UnsupportedModelError(f"{who}the config does not give the model's sizes ({type(e).__name__}: {e})") \
            from None
    if d.num_heads < 1 or d.num_kv_heads < 1 or d.num_heads % d.num_kv_heads:
        raise UnsupportedModelError(
            f"{who}{d.num_heads} query heads over {d.num_kv_heads} key/value heads: grouped-query attention needs "
            "the query heads to split evenly over the key/value heads; the config's num_attention_heads / "
            "num_key_value_heads do not describe a model that can run")
    return family


def check_layout(adapter: Adapter) -> Adapter:
    """Refuse modules and weight shapes the walk cannot run, at load time, with one message.

    Per-head q/k norms are refused unless the family applies them (``Adapter.qk_norm``). Every layer's
    projections must have the shapes (out x in) the config's head counts, head size, hidden size and MLP
    width imply (a checkpoint whose config disagrees with its weights would otherwise fail mid-walk with
    a torch error, or run on the wrong heads). Shapes are read without touching tensor data, so
    offloaded (meta) layers are checked too. Returns `adapter`; raises UnsupportedModelError.
    """
    d = adapter.dims
    attn = getattr(adapter.layer_module(0), "self_attn", None) if d.num_layers else None
    for attr in ("q_norm", "k_norm"):
        if not adapter.qk_norm and hasattr(attn, attr):
            raise UnsupportedModelError(f"{adapter.config.model_type} with per-head {attr} is not supported")
    q, kv = d.num_heads * d.head_dim, d.num_kv_heads * d.head_dim
    for i in range(d.num_layers):
        w = adapter.layer(i)
        want = {"q_proj": (w.q_w, (q, d.hidden)), "k_proj": (w.k_w, (kv, d.hidden)), "v_proj": (w.v_w, (kv, d.hidden)),
                "o_proj": (w.o_w, (d.hidden, q)), "up_proj": (w.up_w, (d.intermediate, d.hidden)),
                "down_proj": (w.down_w, (d.hidden, d.intermediate))}
        if w.gate_w is not None:
            want["gate_proj"] = (w.gate_w, (d.intermediate, d.hidden))
        for name, norm in (("q_norm", w.q_norm), ("k_norm", w.k_norm)):  # one gain per channel of a head
            if norm is not None and getattr(norm, "weight", None) is not None:
                want[name] = (norm.weight, (d.head_dim,))
        for name, (t, shape) in want.items():
            if tuple(t.shape) != shape:
                raise UnsupportedModelError(
                    f"layer {i} {name} has shape {tuple(t.shape)} but the config ({d.num_heads} heads of {d.head_dim} "
                    f"over {d.num_kv_heads} key/value heads, hidden {d.hidden}, MLP {d.intermediate}) implies {shape}: "
                    "the config does not match the weights")
    return adapter


def make_adapter(model: nn.Module, name: Optional[str] = None) -> Adapter:
    """The adapter for a loaded HF causal LM: `check_supported` on its config, then `check_layout`.

    `name` (what the user asked for) leads config refusals. Raises UnsupportedModelError.
    """
    family = check_supported(model.config, name)
    return check_layout(family(model))
