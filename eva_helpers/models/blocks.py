"""Shared building blocks: conv blocks, a UNet decoder, 1x1 heads and the multi-task wrapper every model uses.

Every submodule takes and returns tensors (the decoder takes the skip features as *args), so torchsummary's
per-module hooks work; only the top-level model returns a dict, and torchsummary does not hook the top level.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from eva_helpers.errors import EvaError
from eva_helpers.models.inputs import MASK_HEADS, BaselinePrior, SiameseEncoder, check_inputs, select_inputs

UPSAMPLE_MODES = ("bilinear", "transpose")
DECODER_MODES = ("per_task", "shared")
HEADS = ("mask", "depth")


def nearest_multiple(n: int, multiple: int) -> int:
    """The multiple of `multiple` closest to n (at least one multiple)."""
    return max(multiple, int(round(n / multiple)) * multiple)


def check_size(h: int, w: int, multiple: int) -> None:
    """Raise EvaError naming the nearest valid size when h or w is not a multiple of `multiple`."""
    if h % multiple or w % multiple or h <= 0 or w <= 0:
        raise EvaError(
            f"input {h}x{w} is not supported: sizes must be multiples of {multiple}; "
            f"nearest valid: {nearest_multiple(h, multiple)}x{nearest_multiple(w, multiple)}"
        )


def check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    """Validate and normalise the task list (order kept, duplicates refused)."""
    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    bad = [t for t in tasks if t not in HEADS]
    if not tasks or bad or len(set(tasks)) != len(tasks):
        raise EvaError(f"tasks {list(tasks)} are not valid: choose one or both of {list(HEADS)}, each once")
    return tasks


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3):
        # bias=False: BatchNorm's shift makes a conv bias redundant
        super().__init__(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DoubleConv(nn.Sequential):
    """Two 3x3 conv-BN-ReLU: the classic UNet stage."""

    def __init__(self, cin: int, cout: int):
        super().__init__(ConvBNReLU(cin, cout), ConvBNReLU(cout, cout))


class UpBlock(nn.Module):
    """x2 upsample the deeper features, concatenate the skip, DoubleConv."""

    def __init__(self, cin: int, cskip: int, cout: int, upsample: str = "bilinear"):
        super().__init__()
        if upsample not in UPSAMPLE_MODES:
            raise EvaError(f"upsample={upsample!r} is not valid: choose one of {list(UPSAMPLE_MODES)}")
        if upsample == "transpose":
            self.up = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2)
            cup = cin // 2
        else:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            cup = cin
        self.conv = DoubleConv(cup + cskip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # (B, cup, 2h, 2w)
        return self.conv(torch.cat([x, skip], dim=1))


class UNetDecoder(nn.Module):
    """Decoder over encoder features ordered shallow -> deep; returns full-resolution features (B, dec[-1], H, W).

    enc_channels[i] is the channel count of feature i (feature 0 at full resolution, each next one /2);
    dec_channels has len(enc_channels) - 1 entries, deep -> shallow.
    """

    def __init__(self, enc_channels: Sequence[int], dec_channels: Sequence[int], upsample: str = "bilinear"):
        super().__init__()
        if len(dec_channels) != len(enc_channels) - 1:
            raise EvaError(f"decoder needs {len(enc_channels) - 1} widths, got {list(dec_channels)}")
        blocks, cin = [], enc_channels[-1]
        for cskip, cout in zip(reversed(enc_channels[:-1]), dec_channels):
            blocks.append(UpBlock(cin, cskip, cout, upsample))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = cin

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, reversed(features[:-1])):
            x = block(x, skip)
        return x


class MultiTaskNet(nn.Module):
    """encoder -> decoder(s) -> 1x1 head per task; returns {"mask": logits, "depth": sigmoid in [0, 1]}.

    Takes model_input's (B, 10, H, W) tensor and reads the slice `inputs` names (models/inputs.py); with
    inputs="siamese" the encoder is wrapped to run on bg and fg_bg separately, which doubles the channels each skip
    hands the decoder. decoder="per_task": one decoder per task (the joint default); "shared": one decoder, a head per
    task. mask_head="residual": the mask logits are the baseline prior plus the network's correction (head zero-init).
    """

    def __init__(self, encoder: nn.Module, enc_channels: Sequence[int], dec_channels: Sequence[int],
                 tasks: Sequence[str], divisor: int, decoder: str = "per_task", upsample: str = "bilinear",
                 inputs: str = "concat", mask_head: str = "plain"):
        super().__init__()
        if decoder not in DECODER_MODES:
            raise EvaError(f"decoder={decoder!r} is not valid: choose one of {list(DECODER_MODES)}")
        if mask_head not in MASK_HEADS:
            raise EvaError(f"mask_head={mask_head!r} is not valid: choose one of {list(MASK_HEADS)}")
        self.tasks = check_tasks(tasks)
        self.inputs = check_inputs(inputs)
        self.divisor = divisor
        if inputs == "siamese":
            encoder, enc_channels = SiameseEncoder(encoder), [2 * c for c in enc_channels]
        self.encoder = encoder
        n_dec = len(self.tasks) if decoder == "per_task" else 1
        self.decoders = nn.ModuleList(UNetDecoder(enc_channels, dec_channels, upsample) for _ in range(n_dec))
        c = self.decoders[0].out_channels
        self.heads = nn.ModuleDict({t: nn.Conv2d(c, 1, 1) for t in self.tasks})
        self.prior = BaselinePrior() if mask_head == "residual" and "mask" in self.tasks else None
        if self.prior is not None:  # start exactly at the prior: the network learns corrections
            nn.init.zeros_(self.heads["mask"].weight)
            nn.init.zeros_(self.heads["mask"].bias)
        self.model_args: dict = {}  # filled by build_model

    def check_input_size(self, h: int, w: int) -> None:
        check_size(h, w, self.divisor)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_input_size(x.shape[-2], x.shape[-1])
        feats = self.encoder(select_inputs(x, self.inputs))  # list shallow -> deep, feats[0] at (H, W)
        out: dict[str, torch.Tensor] = {}
        shared = self.decoders[0](*feats) if len(self.decoders) == 1 else None
        for i, task in enumerate(self.tasks):
            y = shared if shared is not None else self.decoders[i](*feats)  # (B, C, H, W)
            y = self.heads[task](y)  # (B, 1, H, W)
            if task == "mask" and self.prior is not None:
                y = y + self.prior(x)
            out[task] = torch.sigmoid(y) if task == "depth" else y
        return out
