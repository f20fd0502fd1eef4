"""Light and motion a real second shot brings, simulated on the batch: the object's own cast shadow, light and shadow
anywhere in the frame, and motion blur. Used by second_shot.py, only when its options ask (p_cast, p_blobs, p_motion).

A model that reads every darker pixel as object loses 0.12-0.15 IoU to a dark cast shadow, a shadow or reflection far
from the object or a phone's local tone mapping. Shadows keep the surface's colour and darken it: showing the model such
changes on fg_bg, outside the object, with the labels unchanged, teaches it that they are background.

Images are float (B, 3, H, W) on 0..255; every draw comes from the generator the caller seeds.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (hi - lo) + lo


def _coords(h: int, w: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates (1, H, 1) and (1, 1, W)."""
    ys = torch.arange(h, device=device, dtype=dtype).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=device, dtype=dtype).view(1, 1, w) + 0.5
    return ys, xs


def cast_silhouette(mask: torch.Tensor, gen: torch.Generator, strength: tuple[float, float]) -> torch.Tensor:
    """(B, 1, H, W) {0, 1} -> (B, 1, H, W) darkening in [0, 0.6]: each object's silhouette laid on the ground from its
    lowest row, squashed to 20-70 % of its height and leaning 0.3-1.5 px per px of height to either side (a light in
    front and to one side), with a penumbra from hard (0.5 px) to soft (3 % of the frame). Part of it falls under the
    object, where the caller's "outside the object" rule removes it, as in a photo."""
    b, _, h, w = mask.shape
    dev, dt = mask.device, torch.float32
    m = mask[:, 0] > 0.5
    rows = m.any(2)  # (B, H)
    ys_idx = torch.arange(h, device=dev, dtype=dt)
    yb = torch.where(rows, ys_idx, -1.0).amax(1) + 0.5  # the ground contact row, (B,)
    squash = _uniform(gen, b, 0.2, 0.7, dev)
    lean = _uniform(gen, b, 0.3, 1.5, dev) * torch.where(torch.rand(b, generator=gen, device=dev) < 0.5, -1.0, 1.0)
    amount = _uniform(gen, b, *strength, dev)
    sigma = _uniform(gen, b, 0.5, max(0.5, 0.03 * max(h, w)), dev)
    ys, xs = _coords(h, w, dev, dt)
    # the shadow at (x', y') comes from the mask at y = yb - (yb - y') / squash, x = x' - lean * (yb - y)
    up = (yb.view(b, 1, 1) - ys) / squash.view(b, 1, 1)  # (B, H, 1) height above the ground of the source row
    src_y = (yb.view(b, 1, 1) - up).expand(b, h, w)
    src_x = xs - lean.view(b, 1, 1) * up
    grid = torch.stack([2 * src_x / w - 1, 2 * src_y / h - 1], -1)  # (B, H, W, 2) normalised, align_corners=False
    shadow = F.grid_sample(mask.to(dt), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    shadow = shadow * (up >= 0).to(dt)[:, None]  # nothing below the ground contact
    return blur(shadow, sigma) * amount.view(b, 1, 1, 1)


def light_blobs(n: int, h: int, w: int, gen: torch.Generator, change: float, size: tuple[float, float],
                device) -> torch.Tensor:
    """(n, 1, H, W) multiplicative factors: two soft patches of light or shadow each (1 +- up to `change`), anywhere,
    of `size` (fractions of the frame's longer side, as diameters)."""
    ys, xs = _coords(h, w, device, torch.float32)
    factor = torch.ones(n, h, w, device=device)
    for _ in range(2):
        cy, cx = _uniform(gen, n, 0, h, device), _uniform(gen, n, 0, w, device)
        r = _uniform(gen, n, *size, device) * max(h, w) / 2
        c = _uniform(gen, n, -change, change, device)
        d2 = ((ys - cy.view(n, 1, 1)) ** 2 + (xs - cx.view(n, 1, 1)) ** 2) / (0.6 * r.view(n, 1, 1)) ** 2
        factor = factor * (1.0 + c.view(n, 1, 1) * torch.exp(-0.5 * d2))
    return factor[:, None]


def blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) with a per-sample Gaussian (sigma (B,) px), separable; zero borders (a shadow map's edges)."""
    b, c, h, w = x.shape
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma.to(x.dtype).clamp_min(1e-3)[:, None]) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, k)
    y = F.conv2d(F.pad(x.reshape(1, b * c, h, w), (radius, radius, 0, 0)), k[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius)), k[:, None, :, None], groups=b * c)
    return y.view(b, c, h, w)


def motion_blur(x: torch.Tensor, gen: torch.Generator, length: float) -> torch.Tensor:
    """(B, 3, H, W) blurred along a line of up to `length` of the frame, at a drawn angle per sample."""
    b, c, h, w = x.shape
    k = max(3, int(round(length * max(h, w))) | 1)
    n = _uniform(gen, b, 2.0, float(k), x.device)  # the line's length in px
    angle = _uniform(gen, b, 0.0, math.pi, x.device)
    t = torch.arange(k, device=x.device, dtype=x.dtype) - (k - 1) / 2
    yy, xx = t.view(1, k, 1), t.view(1, 1, k)
    # distance of each tap from the line through the centre, and how far along it
    across = (-xx * torch.sin(angle).view(b, 1, 1) + yy * torch.cos(angle).view(b, 1, 1)).abs()
    along = (xx * torch.cos(angle).view(b, 1, 1) + yy * torch.sin(angle).view(b, 1, 1)).abs()
    kern = (1 - across).clamp_min(0) * (along <= n.view(b, 1, 1) / 2).to(x.dtype)  # (B, k, k)
    kern = kern / kern.sum((1, 2), keepdim=True)
    weight = kern.repeat_interleave(c, 0)[:, None]  # (B*C, 1, k, k)
    y = F.conv2d(F.pad(x.reshape(1, b * c, h, w), (k // 2,) * 4, mode="replicate"), weight, groups=b * c)
    return y.view(b, c, h, w)


def apply_light(bg: torch.Tensor, fg_bg: torch.Tensor, mask: torch.Tensor, gen: torch.Generator,
                opts) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs given (n, 3, H, W), each with its own draws: a cast silhouette (p_cast) and light blobs (p_blobs) on
    fg_bg outside the object, motion blur (p_motion) on bg or fg_bg. `opts`: second_shot.SecondShot."""
    n, dev = fg_bg.shape[0], fg_bg.device
    cast_on, blobs_on, motion_on = (torch.rand(n, generator=gen, device=dev) < p
                                    for p in (opts.p_cast, opts.p_blobs, opts.p_motion))
    on_fg = torch.rand(n, generator=gen, device=dev) < 0.5  # which photo moved
    factor = torch.ones_like(mask, dtype=fg_bg.dtype)
    i = cast_on.nonzero()[:, 0]
    if len(i):
        factor[i] = factor[i] * (1.0 - cast_silhouette(mask[i], gen, opts.cast))
    i = blobs_on.nonzero()[:, 0]
    if len(i):
        factor[i] = factor[i] * light_blobs(len(i), *fg_bg.shape[2:], gen, opts.blobs, opts.blob_size, dev)
    outside = 1.0 - mask.to(fg_bg.dtype)
    fg_bg = (fg_bg * (1.0 + (factor - 1.0) * outside)).round().clamp(0, 255)
    for img, sel in ((bg, motion_on & ~on_fg), (fg_bg, motion_on & on_fg)):
        i = sel.nonzero()[:, 0]
        if len(i):
            img[i] = motion_blur(img[i], gen, opts.motion).round().clamp(0, 255)
    return bg, fg_bg
