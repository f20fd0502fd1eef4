"""The plain UNet family (Ronneberger et al. 2015) with BatchNorm and configurable widths.

len(widths) - 1 downsamplings, so inputs must be multiples of 2 ** (len(widths) - 1) (16 for 5 widths).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import EvaError
from .blocks import DoubleConv, MultiTaskNet


class UNetEncoder(nn.Module):
    """Stem DoubleConv at full resolution, then (maxpool, DoubleConv) per level; returns features shallow -> deep."""

    def __init__(self, in_channels: int, widths: Sequence[int]):
        super().__init__()
        self.stem = DoubleConv(in_channels, widths[0])
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(cin, cout)) for cin, cout in zip(widths[:-1], widths[1:])
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(x)]  # (B, w0, H, W)
        for down in self.downs:
            feats.append(down(feats[-1]))  # (B, w_i, H / 2**i, W / 2**i)
        return feats


def build_unet(tasks: Sequence[str], in_channels: int = 6, widths: Sequence[int] = (16, 32, 64, 128, 256),
               upsample: str = "bilinear", decoder: str = "per_task") -> MultiTaskNet:
    """A UNet whose decoder mirrors the encoder widths; `upsample` "bilinear" or "transpose" (learned x2)."""
    widths = [int(w) for w in widths]
    if len(widths) < 2 or min(widths) < 2:
        raise EvaError(f"widths {widths} are not valid: give at least two positive channel counts")
    encoder = UNetEncoder(in_channels, widths)
    dec = list(reversed(widths[:-1]))  # deep -> shallow
    return MultiTaskNet(encoder, widths, dec, tasks, divisor=2 ** (len(widths) - 1),
                        decoder=decoder, upsample=upsample)
