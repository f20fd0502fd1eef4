"""What a model sees of the (bg, fg_bg) pair: the input representations, the Siamese wrapper, the baseline prior.

`model_input(bg, fg_bg, stats)` hands every model one (B, 10, H, W) tensor, in training and in prediction alike:
    channels 0-2  bg, normalised with the run's stats
    channels 3-5  fg_bg, normalised with the run's stats
    channels 6-8  |fg_bg - bg| per channel, from the raw uint8 images (before normalisation), divided by 0.225
                  (ImageNet's typical std) so a difference is in the same units as a normalised image.
    channel  9    the shift-tolerant difference: min over offsets d of at most TOLERANCE_PX px of
                  mean_c |fg_bg(p) - bg(p + d)|, same units: a background that moved a pixel or two between the two
                  shots (hand shake) differs from itself by ~0, while an object still differs from what lies near it.
Each model takes the slice its `inputs` names, so one data pipeline serves every representation:
- "concat":  the 6 normalised channels (the first round's input; a network must learn subtraction itself, and with
             8 training backgrounds it fits appearance instead: it loses to the free baseline, bench/quality.py);
- "diff":    all 9 channels: the difference is handed over, computed exactly from the raw pixels;
- "tolerant": all 10 channels: "diff" plus the shift-tolerant difference;
- "siamese": one shared-weight encoder runs on bg and on fg_bg (3 channels each); each scale passes
             cat(f(fg_bg), |f(fg_bg) - f(bg)|) to the decoder (FC-Siam-diff): the comparison is built into the
             architecture, and a pretrained RGB encoder keeps its first layer untouched.
A model records `inputs` in its model_args, so checkpoints, `load_run`, eval and predict rebuild the same thing;
a checkpoint without the key predates the choice and is "concat".
"""
from __future__ import annotations

import math

import torch
from torch import nn

from eva_helpers.errors import EvaError

INPUTS = ("concat", "diff", "tolerant", "siamese")
X_CHANNELS = 10  # what model_input produces
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the normalisation without a dataset's stats
IMAGENET_STD = (0.229, 0.224, 0.225)
DIFF_SCALE = 1.0 / 0.225  # raw |fg_bg - bg| in [0, 1] -> ImageNet std units
TOLERANCE_PX = 2  # the shift-tolerant difference looks this far (at the model's input size)
ENCODER_IN = {"concat": 6, "diff": 9, "tolerant": 10, "siamese": 3}  # channels the first layer sees (per stream)
_READS = {"concat": 6, "diff": 9, "tolerant": 10, "siamese": 6}  # channels of model_input's tensor each reads
MASK_HEADS = ("plain", "residual")


def model_input(bg: torch.Tensor, fg_bg: torch.Tensor, stats: dict | None = None,
                channels_last: bool = False) -> torch.Tensor:
    """(B, 3, H, W) float bg and fg_bg on 0..255 -> x (B, 10, H, W) float32: cat(bg, fg_bg, |fg_bg - bg|, the
    shift-tolerant difference).

    The images are normalised here and only here, with the dataset's stats (ImageNet's when stats is None); their
    differences come from the raw pixels before normalisation (exact: no stats can blur them), in ImageNet std units.
    Each model reads the slice its input representation needs."""
    b, _, h, w = bg.shape
    # filled in the default layout and converted once: per-channel slices of a channels_last tensor are strided, and
    # writing them was slower on the CPU than this whole step (bench/prepare_batch.py)
    x = torch.empty((b, X_CHANNELS, h, w), dtype=torch.float32, device=bg.device)
    x[:, :3], x[:, 3:6] = bg, fg_bg
    torch.sub(fg_bg, bg, out=x[:, 6:9])
    x[:, 6:9].abs_().mul_(DIFF_SCALE / 255.0)  # (B, 3, H, W) |fg_bg - bg| in [0, 1], then in ImageNet std units
    x[:, 9:10] = shift_tolerant_difference(fg_bg, bg).mul_(DIFF_SCALE / (3 * 255.0))  # (B, 1, H, W), same units
    if stats is None:
        m, s = list(IMAGENET_MEAN) * 2, list(IMAGENET_STD) * 2
    else:
        m = list(stats["bg"]["mean"]) + list(stats["fg_bg"]["mean"])
        s = list(stats["bg"]["std"]) + list(stats["fg_bg"]["std"])
    mean = torch.tensor(m, device=x.device, dtype=x.dtype).view(1, 6, 1, 1)
    std = torch.tensor(s, device=x.device, dtype=x.dtype).view(1, 6, 1, 1)
    x[:, :6].mul_(1.0 / (255.0 * std)).sub_(mean / std)  # (x / 255 - mean) / std, in place
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def check_inputs(inputs: str) -> str:
    if inputs not in INPUTS:
        raise EvaError(f"inputs={inputs!r} is not valid: choose one of {list(INPUTS)}")
    return inputs


def select_inputs(x: torch.Tensor, inputs: str) -> torch.Tensor:
    """The slice of model_input's (B, 10, H, W) tensor a model of this representation reads."""
    need = _READS[inputs]
    if x.shape[1] < need:
        raise EvaError(f"a model with inputs={inputs!r} needs {need} input channels (bg, fg_bg"
                       f"{', |fg_bg - bg|' if need >= 9 else ''}) but got {x.shape[1]}: build batches with "
                       "models.inputs.model_input")
    return x[:, :need]


def shift_tolerant_difference(fg_bg: torch.Tensor, bg: torch.Tensor, radius: int = TOLERANCE_PX) -> torch.Tensor:
    """(B, 3, H, W) raw images (0..255) -> (B, 1, H, W) min over |dx|, |dy| <= radius of sum_c |fg_bg(p) - bg(p+d)|.

    Why: after a small shake every background pixel still finds itself in bg within the radius, an object pixel does
    not (it is new content). 25 shifted comparisons at radius 2: a few ms for a CPU batch, nothing on a GPU."""
    import torch.nn.functional as F

    h, w = bg.shape[2:]
    padded = F.pad(bg, (radius, radius, radius, radius), mode="replicate")
    best = None
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            d = (fg_bg - padded[:, :, dy:dy + h, dx:dx + w]).abs_().sum(1, keepdim=True)
            best = d if best is None else torch.minimum(best, d, out=best)
    return best


def max_difference(x: torch.Tensor) -> torch.Tensor:
    """max_c |fg_bg - bg| in raw [0, 1] units (B, 1, H, W), recovered from model_input's difference channels."""
    if x.shape[1] < 9:
        raise EvaError("the residual mask head needs the |fg_bg - bg| channels of model_input (9 channels)")
    return x[:, 6:9].amax(1, keepdim=True) / DIFF_SCALE


class SiameseEncoder(nn.Module):
    """Run one encoder on bg and fg_bg (a single batched call: shared weights, shared BatchNorm statistics) and fuse
    each scale as cat(f_fg, |f_fg - f_bg|): (B, 2 C_i, H_i, W_i)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b = x.shape[0]
        feats = self.encoder(torch.cat([x[:, :3], x[:, 3:6]], 0))  # (2B, C_i, H_i, W_i): bg first, then fg_bg
        return [torch.cat([f[b:], (f[b:] - f[:b]).abs()], 1) for f in feats]


class BaselinePrior(nn.Module):
    """The free baseline as a logit prior: s * (max_c |fg_bg - bg| - t), with s > 0 and t >= T_MIN learned.

    Added to a zero-initialised mask head, the model's first prediction *is* the thresholded difference (without the
    open/close), so training corrects the baseline instead of rediscovering it: it starts at the baseline's quality.
    t is kept above T_MIN: where the two images agree the prior must say "background". Left free, t drifted below 0
    (the prior then calls every pixel object and the network learns to veto by appearance, which fails on an unseen
    background: 0.53-0.61 IoU on one held-out background in two screening runs, bench/RESULTS.md).
    """

    T_MIN = 0.01  # above JPEG noise in |fg_bg - bg| (q95, 4:4:4)

    def __init__(self, threshold: float = 0.05, sharpness: float = 40.0):
        super().__init__()
        # t = T_MIN + softplus(raw): positive by construction, starts at `threshold`
        self.raw_threshold = nn.Parameter(torch.tensor(math.log(math.expm1(threshold - self.T_MIN))))
        self.log_sharpness = nn.Parameter(torch.tensor(math.log(sharpness)))

    @property
    def threshold(self) -> torch.Tensor:
        return self.T_MIN + nn.functional.softplus(self.raw_threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_sharpness.exp() * (max_difference(x) - self.threshold)  # (B, 1, H, W) logits
