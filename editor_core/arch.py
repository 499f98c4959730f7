"""Which modules of which model family are edited, and a uniform ``[in, out]`` view of their weights.

GPT-2 stores MLP weights in ``Conv1D`` as ``[in, out]``; everything else (GPT-J, Llama, Qwen2,
Gemma2, BERT-style decoders) uses ``nn.Linear`` with ``[out, in]``. The editor works in the
``[in, out]`` convention throughout (a key row ``k`` maps to a value row ``k @ W``), so this module
is the only place that knows the difference.
"""

from __future__ import annotations

import torch
from torch import nn

# Per family: a template for the MLP output projection of layer i (what MEND, MALMEN and MEMIT
# edit) and the config attribute holding the layer count.
_FAMILIES: dict[str, tuple[str, str]] = {
    "gpt2": ("transformer.h.{}.mlp.c_proj", "n_layer"),
    "gptj": ("transformer.h.{}.mlp.fc_out", "n_layer"),
    "gpt_neox": ("gpt_neox.layers.{}.mlp.dense_4h_to_h", "num_hidden_layers"),
    "llama": ("model.layers.{}.mlp.down_proj", "num_hidden_layers"),
    "mistral": ("model.layers.{}.mlp.down_proj", "num_hidden_layers"),
    "qwen2": ("model.layers.{}.mlp.down_proj", "num_hidden_layers"),
    "qwen3": ("model.layers.{}.mlp.down_proj", "num_hidden_layers"),
    "gemma": ("model.layers.{}.mlp.down_proj", "num_hidden_layers"),
    "gemma2": ("model.layers.{}.mlp.down_proj", "num_hidden_layers"),
    "gemma3_text": ("model.layers.{}.mlp.down_proj", "num_hidden_layers"),
    "bert": ("bert.encoder.layer.{}.output.dense", "num_hidden_layers"),
}

# MALMEN and EMSEdit edit the last 6 layers of GPT-J / GPT-2 XL; small models get their upper half.
MAX_DEFAULT_LAYERS = 6


def model_family(model: nn.Module) -> str:
    """The ``model_type`` of a Hugging Face model (``gpt2``, ``llama``...)."""
    config = getattr(model, "config", None)
    family = getattr(config, "model_type", None)
    if family is None:
        raise ValueError("model has no config.model_type: pass the modules to edit explicitly")
    return family


def default_modules(model: nn.Module) -> list[str]:
    """MLP output projections of the last layers: what MEND, MALMEN, MEMIT and FT-L edit."""
    n_layers = layer_count(model)
    return last_layer_modules(model, max(1, min(MAX_DEFAULT_LAYERS, n_layers // 2)))


# The projections and layers the EMSEdit paper edits, per family, as shares of the depth
# [first, last], from its model configs: Llama-3-8B gate_proj 11-15 and up_proj 18-24 of 32,
# Gemma-2-9B gate_proj and up_proj 32-40 of 42, Qwen2.5-7B down_proj 17-19 of 28. Other
# families: default_modules. bench.scale measures what these cost at real widths.
_PAPER_LAYERS: dict[str, list[tuple[str, float, float]]] = {
    "llama": [("model.layers.{}.mlp.gate_proj", 11 / 32, 15 / 32), ("model.layers.{}.mlp.up_proj", 18 / 32, 24 / 32)],
    "gemma2": [("model.layers.{}.mlp.gate_proj", 32 / 42, 40 / 42), ("model.layers.{}.mlp.up_proj", 32 / 42, 40 / 42)],
    "qwen2": [("model.layers.{}.mlp.down_proj", 17 / 28, 19 / 28)],
}


def paper_modules(model: nn.Module) -> list[str]:
    """The SMEdit editor's default modules: the paper's choice for its families (scaled to the
    model's depth, at least one layer each), else :func:`default_modules`."""
    family = model_family(model)
    if family not in _PAPER_LAYERS:
        return default_modules(model)
    n_layers = layer_count(model)
    names = []
    for template, first, last in _PAPER_LAYERS[family]:
        lo = min(n_layers - 1, round(first * n_layers))
        hi = max(lo, min(n_layers - 1, round(last * n_layers)))
        names += [template.format(i) for i in range(lo, hi + 1)]
    return names


def layer_count(model: nn.Module) -> int:
    """How many transformer blocks the model has."""
    return int(getattr(model.config, _family_entry(model)[1]))


def last_layer_modules(model: nn.Module, n: int) -> list[str]:
    """The MLP output projections of the last ``n`` layers (all of them when ``n`` is larger)."""
    template = _family_entry(model)[0]
    n_layers = layer_count(model)
    return [template.format(i) for i in range(max(0, n_layers - n), n_layers)]


def _family_entry(model: nn.Module) -> tuple[str, str]:
    family = model_family(model)
    if family not in _FAMILIES:
        known = ", ".join(sorted(_FAMILIES))
        raise ValueError(
            f"no default edit modules for model family {family!r} (known: {known}); "
            "name the modules to edit explicitly"
        )
    return _FAMILIES[family]


def get_module(model: nn.Module, name: str) -> nn.Module:
    """A submodule by dotted name, with an error listing close candidates when it is missing."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        leaf = name.rsplit(".", 1)[-1]
        hints = [n for n, _ in model.named_modules() if n.endswith(leaf)][:5]
        raise ValueError(f"model has no module {name!r}; similar: {hints}") from None


def is_in_out(module: nn.Module) -> bool:
    """True when the module stores its weight as ``[in, out]`` (GPT-2's ``Conv1D``)."""
    if isinstance(module, nn.Linear):
        return False
    if type(module).__name__ == "Conv1D":
        return True
    raise TypeError(f"cannot edit a {type(module).__name__}: only nn.Linear and Conv1D are supported")


def weight_in_out(module: nn.Module) -> torch.Tensor:
    """The module's weight as an ``[in, out]`` view (shares storage with the parameter)."""
    weight = module.weight
    return weight if is_in_out(module) else weight.t()


def weight_shape(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of an editable module."""
    d_in, d_out = weight_in_out(module).shape
    return int(d_in), int(d_out)
