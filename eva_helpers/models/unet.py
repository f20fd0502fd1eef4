"""The plain UNet family (Ronneberger et al. 2015) with BatchNorm and configurable widths.

len(widths) - 1 downsamplings, so inputs must be multiples of 2 ** (len(widths) - 1) (16 for 5 widths).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from eva_helpers.errors import EvaError
from eva_helpers.models.blocks import DoubleConv, MultiTaskNet
from eva_helpers.models.inputs import ENCODER_IN, check_inputs

STEMS = ("concat", "two")


class TwoStems(nn.Module):
    """bg and fg_bg through separate full-resolution stems, then concatenated (the `stem="two"` option).

    The 6-channel input is split in halves, so the data pipeline and checkpoints are the same as for "concat"; each
    image gets its own first filters instead of one filter bank mixing both from the first layer.
    """

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        if in_channels % 2 or width < 2:
            raise EvaError(f"stem='two' needs an even in_channels (got {in_channels}) and a first width >= 2")
        self.half = in_channels // 2
        self.bg = DoubleConv(self.half, width // 2)
        self.fg_bg = DoubleConv(self.half, width - width // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.bg(x[:, :self.half]), self.fg_bg(x[:, self.half:])], dim=1)  # (B, w0, H, W)


class UNetEncoder(nn.Module):
    """Stem at full resolution, then (maxpool, DoubleConv) per level; returns features shallow -> deep."""

    def __init__(self, in_channels: int, widths: Sequence[int], stem: str = "concat"):
        super().__init__()
        if stem not in STEMS:
            raise EvaError(f"stem={stem!r} is not valid: choose one of {list(STEMS)}")
        self.stem = DoubleConv(in_channels, widths[0]) if stem == "concat" else TwoStems(in_channels, widths[0])
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(cin, cout)) for cin, cout in zip(widths[:-1], widths[1:])
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(x)]  # (B, w0, H, W)
        for down in self.downs:
            feats.append(down(feats[-1]))  # (B, w_i, H / 2**i, W / 2**i)
        return feats


def build_unet(tasks: Sequence[str], inputs: str = "diff", widths: Sequence[int] = (16, 32, 64, 128, 256),
               upsample: str = "bilinear", decoder: str = "per_task", stem: str = "concat",
               mask_head: str = "plain") -> MultiTaskNet:
    """A UNet whose decoder mirrors the encoder widths; `upsample` "bilinear" or "transpose" (learned x2);
    `stem` "concat" (one stem over the input) or "two" (a stem per image, inputs="concat" only)."""
    widths = [int(w) for w in widths]
    if len(widths) < 2 or min(widths) < 2:
        raise EvaError(f"widths {widths} are not valid: give at least two positive channel counts")
    if stem == "two" and check_inputs(inputs) != "concat":
        raise EvaError(f"stem='two' splits a 6-channel concat input: use it with inputs='concat', not {inputs!r}")
    encoder = UNetEncoder(ENCODER_IN[check_inputs(inputs)], widths, stem)
    dec = list(reversed(widths[:-1]))  # deep -> shallow
    return MultiTaskNet(encoder, widths, dec, tasks, divisor=2 ** (len(widths) - 1),
                        decoder=decoder, upsample=upsample, inputs=inputs, mask_head=mask_head)
