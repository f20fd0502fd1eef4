"""Model registry: a plain dict of name -> (builder, preset kwargs), and `build_model`, whose error lists the names.

Every model takes model_input's (B, 10, H, W) = cat(bg, fg_bg, |fg_bg - bg|, the shift-tolerant difference)
(models/inputs.py says which slice each input representation reads) and returns {"mask": logits} and/or {"depth": [0, 1]}.
`model.model_args` is a JSON-able dict: `build_model(**model.model_args)` rebuilds the architecture (checkpoints
store it; models are never pickled). `rebuild_model(model_args)` does the same without downloading weights.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from torch import nn

from eva_helpers.errors import EvaError
from eva_helpers.models.blocks import check_size, check_tasks
from eva_helpers.models.inputs import ENCODER_IN, INPUTS, MASK_HEADS, X_CHANNELS, check_inputs
from eva_helpers.models.resnet_unet import build_resnet_unet, expand_first_conv
from eva_helpers.models.unet import build_unet

# name -> (builder, preset kwargs); parameter counts are for mask-only (joint adds one decoder), see bench/models.py
MODELS: dict[str, tuple[Callable[..., nn.Module], dict[str, Any]]] = {
    # 16 channels at full resolution (where mask edges are decided) and one decoder shared by both tasks' heads: more
    # mask IoU and depth SSIM than [10, ...] with a decoder per task, for 24 % fewer joint FLOPs (bench/quality.py)
    "unet_small": (build_unet, {"widths": [16, 20, 40, 80, 160], "decoder": "shared"}),  # ~0.8M
    "unet_medium": (build_unet, {"widths": [24, 48, 96, 192, 384]}),  # ~4.4M
    "unet_large": (build_unet, {"widths": [40, 80, 160, 320, 640], "upsample": "transpose"}),  # ~12M
    "resnet18_unet": (build_resnet_unet, {"arch": "resnet18"}),  # ~14M
    "resnet34_unet": (build_resnet_unet, {"arch": "resnet34"}),  # ~24M
}


def list_models() -> list[str]:
    return sorted(MODELS)


# What a model record from before presets were stored means: the first round's presets, concat input, plain head.
LEGACY = {"unet_small": {"widths": [10, 20, 40, 80, 160], "decoder": "per_task"}}
LEGACY_DEFAULTS = {"inputs": "concat", "mask_head": "plain"}

# The representation and mask head new models get: the rows that won in bench/quality.py (bench/RESULTS.md): "diff"
# beat "concat" and "siamese"; the residual head was behind the plain one, mask-only and joint; "tolerant" (diff + the
# shift-tolerant difference) cuts what a 1-2 px shake costs (bench/robustness.py).
DEFAULT_INPUTS = "tolerant"
DEFAULT_MASK_HEAD = "plain"


def build_model(name: str, tasks: Sequence[str] = ("mask",), inputs: str = DEFAULT_INPUTS,
                mask_head: str = DEFAULT_MASK_HEAD, in_channels: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model; kwargs override the preset (e.g. widths, upsample, decoder, pretrained).

    Args:
        name: one of list_models().
        tasks: ("mask",), ("depth",) or ("mask", "depth") (joint: shared encoder, decoder="per_task"|"shared").
        inputs: "concat", "diff", "tolerant" or "siamese" (models/inputs.py).
        mask_head: "plain" or "residual" (the thresholded difference as a learned prior, the net adds corrections).
        in_channels: the encoder's input channels; only checked (it follows from `inputs`; checkpoints record it).
    """
    if name not in MODELS:
        raise EvaError(f"unknown model {name!r}: valid names are {', '.join(list_models())}")
    builder, preset = MODELS[name]
    tasks = check_tasks(tasks)
    check_inputs(inputs)
    if mask_head not in MASK_HEADS:
        raise EvaError(f"mask_head={mask_head!r} is not valid: choose one of {list(MASK_HEADS)}")
    if in_channels is not None and int(in_channels) != ENCODER_IN[inputs]:
        raise EvaError(f"in_channels={in_channels} does not match inputs={inputs!r} ({ENCODER_IN[inputs]} channels)")
    args = {**preset, **kwargs}
    try:
        model = builder(tasks=tasks, inputs=inputs, mask_head=mask_head, **args)
    except TypeError as e:  # an option this family does not have
        raise EvaError(f"model {name!r}: bad option ({e})") from None
    # the whole preset is recorded, so a later change of a preset never changes what an old checkpoint rebuilds
    model.model_args = {"name": name, "tasks": list(tasks), "inputs": inputs, "mask_head": mask_head,
                        "in_channels": ENCODER_IN[inputs],
                        **{k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}}
    return model


def rebuild_model(model_args: dict[str, Any]) -> nn.Module:
    """Rebuild from a checkpoint's model_args without fetching pretrained weights (the state_dict replaces them).

    Records from before the input choice existed have no "inputs"/"mask_head": they were 6-channel concat models
    with a plain head and the first round's presets (LEGACY), and are rebuilt as such.
    """
    args = dict(model_args)
    if "inputs" not in args:
        args = {**LEGACY_DEFAULTS, **LEGACY.get(args.get("name", ""), {}), **args}
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

    c = in_channels or X_CHANNELS  # every model reads model_input's 10-channel tensor
    was_training, device = model.training, next(model.parameters()).device
    model.cpu()
    try:
        _summary(model, (c, size, size), device="cpu")
    finally:
        model.to(device).train(was_training)


__all__ = ["MODELS", "build_model", "rebuild_model", "list_models", "count_parameters", "summary",
           "expand_first_conv", "check_size", "INPUTS", "MASK_HEADS", "X_CHANNELS", "DEFAULT_INPUTS",
           "DEFAULT_MASK_HEAD"]
