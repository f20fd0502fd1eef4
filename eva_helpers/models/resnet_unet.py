"""UNet with a torchvision ResNet encoder (ImageNet weights when they can be had).

Inputs must be multiples of 32 (five stride-2 stages). A small full-resolution stem adds a skip at (H, W):
masks need pixel-exact edges and the bg/fg_bg difference is a per-pixel cue the stride-2 conv1 would blur.
With inputs="siamese" the RGB conv1 is kept as it is (the encoder runs on each image); with "concat" or "diff"
conv1 is widened by `expand_first_conv` so that it starts as the pretrained filter applied to the composite plus the
same filter applied to the difference (never their average, which cancels the very signal that matters).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import nn

from eva_helpers.errors import EvaError
from eva_helpers.models.blocks import DoubleConv, MultiTaskNet
from eva_helpers.models.inputs import ENCODER_IN, check_inputs

ENCODER_CHANNELS = {"resnet18": (64, 64, 128, 256, 512), "resnet34": (64, 64, 128, 256, 512)}
STEM_CHANNELS = 16


def expand_first_conv(conv3: nn.Conv2d, inputs: str = "diff") -> nn.Conv2d:
    """A copy of an RGB conv (weights w) for the "concat" (6 channels) or "diff" (9 channels) input layout.

    "diff":   bg -> 0, fg_bg -> w, |fg_bg - bg| -> w:  the response is w*fg_bg + w*|fg_bg - bg|;
    "concat": bg -> -w, fg_bg -> 2w:                   the response is w*fg_bg + w*(fg_bg - bg).
    Either way the pretrained filters see the composite exactly where bg == fg_bg, and every pixel where the two
    images differ changes the response from step 0. (Splitting w as 0.5 w per image would make conv1 a function of
    bg + fg_bg only: blind to which image holds the object.)
    """
    in_channels = ENCODER_IN[check_inputs(inputs)]
    if in_channels == 3:
        return conv3
    conv = nn.Conv2d(in_channels, conv3.out_channels, conv3.kernel_size, conv3.stride, conv3.padding,
                     conv3.dilation, conv3.groups, conv3.bias is not None)
    with torch.no_grad():
        w = conv3.weight  # (out, 3, k, k)
        parts = {"diff": [torch.zeros_like(w), w, w], "tolerant": [torch.zeros_like(w), w, w, torch.zeros_like(w[:, :1])],
                 "concat": [-w, 2 * w]}[inputs]  # the tolerant channel starts silent
        conv.weight.copy_(torch.cat(parts, 1))
        if conv3.bias is not None:
            conv.bias.copy_(conv3.bias)
    return conv


def _torchvision_resnet(arch: str, pretrained: bool) -> nn.Module:
    """torchvision ResNet; pretrained=True tries the ImageNet weights and falls back to random init with a warning."""
    from torchvision import models

    fn = getattr(models, arch)
    if pretrained:
        try:
            return fn(weights="DEFAULT")
        except Exception as e:  # offline, hub quota, corrupt cache: training still works from random init
            warnings.warn(f"{arch}: could not load ImageNet weights ({type(e).__name__}: {e}); using random init",
                          stacklevel=3)
    return fn(weights=None)


class ResNetEncoder(nn.Module):
    """Features shallow -> deep: stem (H), conv1 (H/2), layer1 (H/4), layer2 (H/8), layer3 (H/16), layer4 (H/32)."""

    def __init__(self, arch: str, inputs: str, pretrained: bool):
        super().__init__()
        net = _torchvision_resnet(arch, pretrained)
        self.stem = DoubleConv(ENCODER_IN[inputs], STEM_CHANNELS)
        self.conv1 = expand_first_conv(net.conv1, inputs)
        self.bn1, self.relu, self.maxpool = net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f0 = self.stem(x)  # (B, 16, H, W)
        f1 = self.relu(self.bn1(self.conv1(x)))  # (B, 64, H/2, W/2)
        f2 = self.layer1(self.maxpool(f1))  # (B, 64, H/4, W/4)
        f3 = self.layer2(f2)  # (B, 128, H/8, W/8)
        f4 = self.layer3(f3)  # (B, 256, H/16, W/16)
        f5 = self.layer4(f4)  # (B, 512, H/32, W/32)
        return [f0, f1, f2, f3, f4, f5]


def build_resnet_unet(tasks: Sequence[str], inputs: str = "diff", arch: str = "resnet18", pretrained: bool = False,
                      decoder_widths: Sequence[int] = (256, 128, 64, 32, 16), upsample: str = "bilinear",
                      decoder: str = "per_task", mask_head: str = "plain") -> MultiTaskNet:
    """ResNet-encoder UNet; `pretrained=True` wants ImageNet weights (Colab), tests use False (no download)."""
    if arch not in ENCODER_CHANNELS:
        raise EvaError(f"arch={arch!r} is not valid: choose one of {sorted(ENCODER_CHANNELS)}")
    encoder = ResNetEncoder(arch, check_inputs(inputs), bool(pretrained))
    enc = (STEM_CHANNELS, *ENCODER_CHANNELS[arch])
    return MultiTaskNet(encoder, enc, [int(w) for w in decoder_widths], tasks, divisor=32,
                        decoder=decoder, upsample=upsample, inputs=inputs, mask_head=mask_head)
