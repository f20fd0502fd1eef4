"""Model registry: a plain dict of name -> (builder, preset kwargs), and `build_model`, whose error lists the names.

Every model takes (B, in_channels, H, W) = cat(bg, fg_bg) and returns {"mask": logits} and/or {"depth": [0, 1]}.
`model.model_args` is a JSON-able dict: `build_model(**model.model_args)` rebuilds the architecture (checkpoints
store it; models are never pickled). `rebuild_model(model_args)` does the same without downloading weights.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from torch import nn

from ..errors import EvaError
from .blocks import check_size, check_tasks
from .resnet_unet import build_resnet_unet, expand_first_conv
from .unet import build_unet

# name -> (builder, preset kwargs); parameter counts are for mask-only (joint adds one decoder), see bench/models.py
MODELS: dict[str, tuple[Callable[..., nn.Module], dict[str, Any]]] = {
    "unet_small": (build_unet, {"widths": [10, 20, 40, 80, 160]}),  # ~0.8M
    "unet_medium": (build_unet, {"widths": [24, 48, 96, 192, 384]}),  # ~4.4M
    "unet_large": (build_unet, {"widths": [40, 80, 160, 320, 640], "upsample": "transpose"}),  # ~12M
    "resnet18_unet": (build_resnet_unet, {"arch": "resnet18"}),  # ~14M
    "resnet34_unet": (build_resnet_unet, {"arch": "resnet34"}),  # ~24M
}


def list_models() -> list[str]:
    return sorted(MODELS)


def build_model(name: str, tasks: Sequence[str] = ("mask",), in_channels: int = 6, **kwargs: Any) -> nn.Module:
    """Build a registered model; kwargs override the preset (e.g. widths, upsample, decoder, pretrained).

    Args:
        name: one of list_models().
        tasks: ("mask",), ("depth",) or ("mask", "depth") (joint: shared encoder, decoder="per_task"|"shared").
        in_channels: 6 for cat(bg, fg_bg).
    """
    if name not in MODELS:
        raise EvaError(f"unknown model {name!r}: valid names are {', '.join(list_models())}")
    builder, preset = MODELS[name]
    tasks = check_tasks(tasks)
    args = {**preset, **kwargs}
    try:
        model = builder(tasks=tasks, in_channels=int(in_channels), **args)
    except TypeError as e:  # an option this family does not have
        raise EvaError(f"model {name!r}: bad option ({e})") from None
    model.model_args = {"name": name, "tasks": list(tasks), "in_channels": int(in_channels),
                        **{k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}}
    return model


def rebuild_model(model_args: dict[str, Any]) -> nn.Module:
    """Rebuild from a checkpoint's model_args without fetching pretrained weights (the state_dict replaces them)."""
    args = dict(model_args)
    if "pretrained" in args:
        args["pretrained"] = False
    model = build_model(**args)
    model.model_args = dict(model_args)  # keep the original record (e.g. pretrained=True)
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def summary(model: nn.Module, size: int = 224, in_channels: int | None = None) -> None:
    """Print torchsummary's layer table on CPU (for the notebooks); the dict output is fine: the top level is not hooked."""
    from torchsummary import summary as _summary

    c = in_channels or getattr(model, "model_args", {}).get("in_channels", 6)
    was_training, device = model.training, next(model.parameters()).device
    model.cpu()
    try:
        _summary(model, (c, size, size), device="cpu")
    finally:
        model.to(device).train(was_training)


__all__ = ["MODELS", "build_model", "rebuild_model", "list_models", "count_parameters", "summary",
           "expand_first_conv", "check_size"]
