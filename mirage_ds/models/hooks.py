"""Forward hooks on the language model's decoder layers (RMU's activation read-out), and the hooked forward
that the RMU loss and the frozen reference both run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from mirage_ds.models.loading import language_layers


@contextmanager
def hooked_layer(model: torch.nn.Module, layer: int, truncate: bool) -> Iterator[dict[str, torch.Tensor]]:
    """Capture the output hidden state of language-model layer ``layer`` into the yielded dict ("hidden").

    The captured tensor equals ``output_hidden_states[layer + 1]`` (index 0 is the embeddings; for the last
    layer HF reports the output after the final norm, the hook the output before it). With
    ``truncate`` the decoder runs only layers 0..layer for this forward: RMU reads nothing above it, so the
    rest of the stack is skipped (the final norm still runs on the truncated output; ``hooked_forward``
    passes ``logits_to_keep=1`` so the LM head costs one position). Both changes are undone in ``finally``.
    """
    layers = language_layers(model)
    if not 0 <= layer < len(layers):
        raise ValueError(f"hooked layer {layer} outside the language model's {len(layers)} layers")
    owner = _layers_owner(model, layers)
    captured: dict[str, torch.Tensor] = {}

    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        captured["hidden"] = output[0] if isinstance(output, tuple) else output

    handle = layers[layer].register_forward_hook(hook)
    if truncate:
        owner.layers = torch.nn.ModuleList(list(layers)[: layer + 1])
    try:
        yield captured
    finally:
        handle.remove()
        owner.layers = layers


def hooked_forward(
    model: Any, inputs: dict[str, torch.Tensor], layer: int, truncate: bool, *, logits: bool = False
) -> dict[str, torch.Tensor]:
    """One forward of ``model`` (an HF/PEFT model or a DeepSpeed engine around one) on ``inputs``, returning
    {"hidden": [B, T, D] output of language-model layer ``layer``} and, with ``logits``, {"logits": [B, T, V]}.

    With ``truncate`` the forward stops after ``layer`` (see ``hooked_layer``), so it has no logits to give.
    """
    if truncate and logits:
        raise ValueError("a truncated forward has no logits: it stops after the hooked layer")
    # The hook goes on the inner module (it owns the decoder layers), but an engine is called as the engine:
    # its forward wraps the module call in DeepSpeed's bookkeeping (autocast when configured, ZeRO's
    # backward-phase flag, the output hooks that run its backward prologue).
    module = model.module if hasattr(model, "module") else model
    with hooked_layer(module, layer, truncate) as captured:
        # The loss reads layer l's output, not the logits: unless they are asked for, the LM head runs on one
        # position only (a truncated forward reaches it with layer l's output, which nothing reads).
        out = model(**inputs, **({} if logits else {"logits_to_keep": 1}))
    return {"hidden": captured["hidden"], "logits": out.logits} if logits else {"hidden": captured["hidden"]}


def _layers_owner(model: torch.nn.Module, layers: torch.nn.ModuleList) -> torch.nn.Module:
    for module in model.modules():
        if getattr(module, "layers", None) is layers:
            return module
    raise ValueError("could not find the module that owns the decoder layers")
