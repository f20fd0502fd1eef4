"""A second shot of the same scene, simulated on the batch: what makes a real bg photo differ from its fg_bg photo.

In our composites bg and fg_bg are pixel-identical outside the object; two real photos never are. A model trained on
exact pairs learns that any difference is the object and collapses on a real pair (exposure x1.1: IoU 0.95 -> 0.2).
So training makes each chosen pair look like two shots (labels belong to fg_bg, so they stay aligned and are never
resampled):

- tone, on bg: exposure gain, gamma, white balance (per-channel gain);
- hand shake, on bg: a small similarity warp (whole or sub-pixel shifts, a fraction of a degree, a little scale);
- optics, sensor and compression, on bg, fg_bg or both: Gaussian blur, Gaussian noise, JPEG at a random quality,
  simulated with tensor ops (YCbCr, 4:2:0 or 4:4:4, 8x8 DCT, the standard tables scaled by quality, rounding) so it
  runs on the GPU with the rest; the evaluation uses real JPEG (`perturb.py`), never this simulation;
- shadows, on fg_bg outside the object: soft dark ellipses near its base, and a light change anywhere;
- with p_cast / p_blobs / p_motion (shot_light.py): the object's silhouette cast on the ground, patches of light and
  shadow anywhere, motion blur.

Every draw comes from one `torch.Generator` the caller seeds (run seed, step, rank): a resumed run draws the same.
Images are float (B, 3, H, W) on 0..255 throughout; the result is rounded and clipped like a real 8-bit photo.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from eva_helpers.data.compression import dct_matrix, quant_tables
from eva_helpers.errors import EvaError
from eva_helpers.training.shot_light import apply_light


@dataclass(frozen=True)
class SecondShot:
    """Probabilities (p_*) and ranges of each change; the presets below are the rows of bench/quality.py."""

    p: float = 0.8  # share of pairs that look like two shots at all (the rest stay exact pairs)
    gain: float = 0.25  # exposure: bg x exp(U(-log(1+gain), log(1+gain)))
    gamma: float = 0.25  # bg = 255 (bg / 255) ** exp(U(-log(1+gamma), log(1+gamma)))
    wb: float = 0.1  # white balance: R and B gains exp(U(-log(1+wb), ..)), independently
    p_blur: float = 0.3
    blur: float = 1.0  # Gaussian sigma up to this (px)
    noise: float = 4.0  # Gaussian sensor noise, sigma up to this (0..255 units)
    p_jpeg: float = 0.5
    jpeg_quality: tuple = (30, 95)  # uniform in [lo, hi]
    # when both photos are saved as JPEG, the share that use one quality (one camera's two shots; or a pair whose
    # compression `align` matched): outside the object the pair then differs by little more than the object's own blocks
    p_jpeg_same: float = 0.0
    p_shift: float = 0.0  # hand shake: share of pairs whose bg is warped
    shift: float = 0.0  # translation up to this many px per axis (at the training size); half rounded to whole px
    rotate: float = 0.0  # degrees, uniform in [-rotate, rotate]
    scale: float = 0.0  # scale 1 + U(-scale, scale)
    p_shadow: float = 0.0  # share of pairs with a cast shadow (and a light change) on fg_bg outside the object
    shadow: tuple = (0.15, 0.5)  # darkening at the shadow's core
    # shot_light.py: drawn from their own generator, only when one of these is on (older runs keep their stream)
    p_cast: float = 0.0  # the object's silhouette cast on the ground, on fg_bg outside the object
    cast: tuple = (0.2, 0.6)  # its darkening
    p_blobs: float = 0.0  # two soft patches of light or shadow anywhere, on fg_bg outside the object
    blobs: float = 0.4  # each brightens or darkens by up to this share
    blob_size: tuple = (0.05, 0.3)  # diameter, as a share of the frame's longer side
    p_motion: float = 0.0  # motion blur on bg or fg_bg
    motion: float = 0.06  # up to this share of the frame long

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(f.default, tuple) and not (isinstance(v, tuple) and len(v) == 2):
                raise EvaError(f"second_shot_opts {f.name}={v!r} is not valid: give [lo, hi]")
            vals = v if isinstance(v, tuple) else (v,)
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0
                       for x in vals):
                raise EvaError(f"second_shot_opts {f.name}={v!r} is not valid: give numbers >= 0")
            if f.name.startswith("p") and not 0 <= v <= 1:
                raise EvaError(f"second_shot_opts {f.name}={v!r} is not valid: a probability in [0, 1]")
        lo, hi = self.jpeg_quality
        if not 1 <= lo <= hi <= 100:
            raise EvaError(f"second_shot_opts jpeg_quality={self.jpeg_quality} is not valid: give [lo, hi] in 1..100")


PRESETS: dict[str, SecondShot | None] = {
    "off": None,  # exact pairs
    "tone": SecondShot(),  # tone, blur, noise, JPEG on 80 % of pairs
    # half of the pairs look like two shots: + shake up to 2 px and cast shadows (bench/RESULTS.md: on 80 % of pairs,
    # more robust to tone but below the clean target)
    "full": SecondShot(p=0.5, p_shift=0.5, shift=2.0, rotate=0.3, scale=0.005, p_shadow=0.3),
}


def second_shot_from(preset: str, opts: dict | None = None) -> SecondShot | None:
    """The SecondShot of a TrainConfig's `second_shot` preset with `second_shot_opts` overriding its fields."""
    if preset not in PRESETS:
        raise EvaError(f"second_shot={preset!r} is not one of {list(PRESETS)}")
    base = PRESETS[preset]
    if not opts:
        return base
    known = {f.name for f in fields(SecondShot)}
    unknown = sorted(set(opts) - known)
    if unknown:
        raise EvaError(f"second_shot_opts: unknown field(s) {unknown}; valid fields: {sorted(known)}")
    if base is None:
        raise EvaError("second_shot_opts are given but second_shot='off': pick a preset ('tone' or 'full')")
    opts = {k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()}
    return dataclasses.replace(base, **opts)


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (hi - lo) + lo


def _log_uniform(gen: torch.Generator, n: int, spread: float, device) -> torch.Tensor:
    r = math.log1p(spread)
    return _uniform(gen, n, -r, r, device).exp()


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) blurred with a per-sample Gaussian (sigma (B,), 0 = unchanged), separable, reflected borders."""
    b, c, h, w = x.shape
    radius = 3
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)  # (k,)
    s = sigma.to(x.dtype).clamp_min(1e-3)[:, None]
    k = torch.exp(-0.5 * (t[None] / s) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, k)
    y = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)
    return y.view(b, c, h, w)


def warp_similarity(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, angle: torch.Tensor,
                    scale: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) moved by (dx, dy) px, rotated by `angle` degrees and scaled about the centre; bilinear, edges
    replicated (a real second shot sees a little more or less of the scene there, never a black band)."""
    b, _, h, w = x.shape
    a = angle * (math.pi / 180.0)
    cos, sin = torch.cos(a) / scale, torch.sin(a) / scale
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)  # output -> input, normalised coordinates
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
    theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
    theta[:, 0, 2], theta[:, 1, 2] = -2.0 * dx / w, -2.0 * dy / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _quant_tables(quality: torch.Tensor, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) whole qualities 1..100 -> libjpeg's luma and chroma tables (N, 8, 8) (compression.quant_tables)."""
    tabs = torch.tensor(quant_tables(), device=device, dtype=dtype)  # (2, 100, 64), a copy of the read-only tables
    i = quality.long().clamp(1, 100) - 1
    return tabs[0, i].view(-1, 8, 8), tabs[1, i].view(-1, 8, 8)


def _dct_kron(device, dtype) -> torch.Tensor:
    """(64, 64) D kron D, D the 8x8 orthonormal DCT-II (JPEG's FDCT): vec(D X D^T) = (D kron D) vec(X)."""
    return torch.tensor(dct_matrix(), device=device, dtype=dtype)


def _quantise_blocks(c: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """(N, H, W) level-shifted plane (H, W multiples of 8) -> the same after 8x8 DCT, quantisation and inverse.

    Every block's DCT is one row of a single (blocks, 64) x (64, 64) matrix product: far faster than many 8x8 ones."""
    n, h, w = c.shape
    k = _dct_kron(c.device, c.dtype)
    blocks = c.view(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4).reshape(n, -1, 64)  # (N, blocks, 64)
    t = table.reshape(n, 1, 64)
    coef = torch.round(blocks @ k.T / t) * t
    return (coef @ k).view(n, h // 8, w // 8, 8, 8).permute(0, 1, 3, 2, 4).reshape(n, h, w)


def jpeg_like(x: torch.Tensor, quality: torch.Tensor, subsample: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB on 0..255 -> as a JPEG at `quality` (N,) would decode it; `subsample` (N,) bool: 4:2:0 chroma."""
    n, _, h, w = x.shape
    ph, pw = -h % 16, -w % 16
    x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b - 128.0
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b
    luma_t, chroma_t = _quant_tables(quality, x.device, x.dtype)
    y = _quantise_blocks(y, luma_t)
    chroma = torch.stack([cb, cr], 1)  # (N, 2, H, W)
    out_chroma = chroma.clone()
    for sub in (True, False):
        i = (subsample == sub).nonzero()[:, 0]
        if not len(i):
            continue
        c = F.avg_pool2d(chroma[i], 2) if sub else chroma[i]  # 4:2:0 halves the chroma planes
        ph2, pw2 = -c.shape[2] % 8, -c.shape[3] % 8
        cp = F.pad(c, (0, pw2, 0, ph2), mode="replicate")
        q = torch.stack([_quantise_blocks(cp[:, j], chroma_t[i]) for j in range(2)], 1)[:, :, :c.shape[2], :c.shape[3]]
        out_chroma[i] = F.interpolate(q, scale_factor=2, mode="bilinear", align_corners=False) if sub else q
    chroma = out_chroma
    cb, cr = chroma[:, 0], chroma[:, 1]
    y = y + 128.0
    out = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], 1)
    return out[:, :, :h, :w].round().clamp(0, 255)


def _object_boxes(mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) {0, 1} -> (B, 4) x0, x1, y0, y1 of each object in pixels (the whole frame when there is none)."""
    b, _, h, w = mask.shape
    m = mask[:, 0] > 0.5
    cols, rows = m.any(1), m.any(2)  # (B, W), (B, H)
    xs = torch.arange(w, device=mask.device, dtype=torch.float32)
    ys = torch.arange(h, device=mask.device, dtype=torch.float32)
    big = float(max(h, w))
    x0 = torch.where(cols, xs, big).amin(1)
    x1 = torch.where(cols, xs, -1.0).amax(1)
    y0 = torch.where(rows, ys, big).amin(1)
    y1 = torch.where(rows, ys, -1.0).amax(1)
    empty = x1 < 0
    x0, y0 = torch.where(empty, 0.0, x0), torch.where(empty, 0.0, y0)
    x1, y1 = torch.where(empty, w - 1.0, x1), torch.where(empty, h - 1.0, y1)
    return torch.stack([x0, x1, y0, y1], 1)


def cast_shadows(fg_bg: torch.Tensor, mask: torch.Tensor, gen: torch.Generator, strength: torch.Tensor) -> torch.Tensor:
    """Soft dark ellipses at each object's base, plus one light change anywhere, on fg_bg outside the object only."""
    b, _, h, w = fg_bg.shape
    dev = fg_bg.device
    x0, x1, y0, y1 = _object_boxes(mask).unbind(1)
    ow, oh = (x1 - x0 + 1).clamp_min(2), (y1 - y0 + 1).clamp_min(2)
    cx = x0 + ow * _uniform(gen, b, -0.3, 1.3, dev)  # beside or under the object
    cy = y1 + oh * _uniform(gen, b, -0.25, 0.1, dev)  # along its ground contact
    rx, ry = ow * _uniform(gen, b, 0.4, 1.2, dev), oh * _uniform(gen, b, 0.08, 0.35, dev)
    soft = _uniform(gen, b, 0.15, 0.6, dev)
    ys = torch.arange(h, device=dev, dtype=fg_bg.dtype).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=dev, dtype=fg_bg.dtype).view(1, 1, w) + 0.5

    def blob(cx, cy, rx, ry, soft):  # (B, H, W) 1 inside the ellipse, fading to 0 over `soft` of its radius
        d = (((xs - cx.view(b, 1, 1)) / rx.view(b, 1, 1)) ** 2 + ((ys - cy.view(b, 1, 1)) / ry.view(b, 1, 1)) ** 2).sqrt()
        return torch.sigmoid((1.0 - d) / (soft.view(b, 1, 1) * 0.25))

    shade = 1.0 - strength.view(b, 1, 1) * blob(cx, cy, rx, ry, soft)
    # a light change anywhere (a cloud, a lamp): brighter or darker by up to 10 %
    lx, ly = _uniform(gen, b, 0, w, dev), _uniform(gen, b, 0, h, dev)
    lr = _uniform(gen, b, 0.15, 0.5, dev) * max(h, w)
    light = 1.0 + _uniform(gen, b, -0.1, 0.1, dev).view(b, 1, 1) * blob(lx, ly, lr, lr, torch.full_like(lr, 2.0))
    factor = (shade * light)[:, None]  # (B, 1, H, W)
    outside = 1.0 - mask.to(fg_bg.dtype)
    return (fg_bg * (1.0 + (factor - 1.0) * outside)).round().clamp(0, 255)


def apply_second_shot(bg: torch.Tensor, fg_bg: torch.Tensor, mask: torch.Tensor, gen: torch.Generator,
                      opts: SecondShot) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) float bg and fg_bg on 0..255, mask (B, 1, H, W) -> (bg as another shot, fg_bg as its own shot).

    Tone and shake change bg (relative to fg_bg, which the labels belong to). Blur, noise and JPEG land on either
    photo or both: two real photos are both noisy JPEGs, and a degradation seen only on bg would teach the model that
    "the softer image is the background", which a soft or recompressed fg_bg then breaks. Half of the shakes are whole
    pixels (no resampling blur, the same cue again). Draws are masked, never branched on, so the stream is the same
    whatever was drawn (but the noise, drawn for the chosen pairs only); pairs not chosen keep their exact bytes.
    """
    b, dev = bg.shape[0], bg.device
    on = torch.rand(b, generator=gen, device=dev) < opts.p  # (B,) which pairs get a second shot at all

    def chosen(p: float) -> torch.Tensor:
        return (torch.rand(b, generator=gen, device=dev) < p) & on

    def side() -> tuple[torch.Tensor, torch.Tensor]:  # (on bg, on fg_bg): bg, fg_bg or both, a third each
        k = torch.randint(0, 3, (b,), generator=gen, device=dev)
        return k != 1, k != 0

    shift_on, blur_on, jpeg_on, shadow_on = (chosen(opts.p_shift), chosen(opts.p_blur), chosen(opts.p_jpeg),
                                             chosen(opts.p_shadow))
    dx, dy = _uniform(gen, b, -opts.shift, opts.shift, dev), _uniform(gen, b, -opts.shift, opts.shift, dev)
    whole = torch.rand(b, generator=gen, device=dev) < 0.5  # whole-pixel shakes: no resampling, no rotation
    dx, dy = torch.where(whole, dx.round(), dx), torch.where(whole, dy.round(), dy)
    angle = torch.where(whole, 0.0, _uniform(gen, b, -opts.rotate, opts.rotate, dev))
    scale = torch.where(whole, 1.0, 1.0 + _uniform(gen, b, -opts.scale, opts.scale, dev))
    gain = _log_uniform(gen, b, opts.gain, dev)
    gamma = _log_uniform(gen, b, opts.gamma, dev)
    wb = torch.stack([_log_uniform(gen, b, opts.wb, dev), torch.ones(b, device=dev), _log_uniform(gen, b, opts.wb, dev)], 1)
    sigma = _uniform(gen, b, 0.3, max(opts.blur, 0.3), dev)
    blur_bg, blur_fg = side()
    noise_sigma = _uniform(gen, b, 0, opts.noise, dev).view(b, 1, 1, 1)
    noise_sigma2 = _uniform(gen, b, 0, opts.noise, dev).view(b, 1, 1, 1)
    q_lo, q_hi = opts.jpeg_quality[0], opts.jpeg_quality[1] + 1
    quality = _uniform(gen, b, q_lo, q_hi, dev).floor()
    quality2 = _uniform(gen, b, q_lo, q_hi, dev).floor()
    subsample = torch.rand(b, generator=gen, device=dev) < 0.5
    jpeg_bg, jpeg_fg = side()
    strength = _uniform(gen, b, opts.shadow[0], opts.shadow[1], dev)
    shadow_seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=dev))
    if opts.p_jpeg_same > 0:  # an option, not a draw, decides: runs without it keep their stream
        quality2 = torch.where(torch.rand(b, generator=gen, device=dev) < opts.p_jpeg_same, quality, quality2)
    light = opts.p_cast > 0 or opts.p_blobs > 0 or opts.p_motion > 0  # the same: an option decides
    light_seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=dev)) if light else 0

    idx = on.nonzero()[:, 0]
    if not len(idx):
        return bg, fg_bg
    # from here on, only the pairs that get a second shot: (n, 3, H, W)
    x, y = bg[idx], fg_bg[idx]
    n = len(idx)

    def sub(sel: torch.Tensor) -> torch.Tensor:  # positions within the subset where `sel` holds
        return sel[idx].nonzero()[:, 0]

    i = sub(shift_on)
    if len(i):
        j = idx[i]
        x[i] = warp_similarity(x[i], dx[j], dy[j], angle[j], scale[j])
    for img, sel in ((x, blur_on & blur_bg), (y, blur_on & blur_fg)):
        i = sub(sel)
        if len(i):
            img[i] = gaussian_blur(img[i], sigma[idx[i]])
    g = (gain[idx, None] * wb[idx]).view(n, 3, 1, 1)
    x = (x.clamp_(0, 255).div_(255.0).pow_(gamma[idx].view(n, 1, 1, 1)) * (255.0 * g)
         + torch.randn(x.shape, generator=gen, device=dev, dtype=x.dtype) * noise_sigma[idx])
    y = y + torch.randn(y.shape, generator=gen, device=dev, dtype=y.dtype) * noise_sigma2[idx]
    x, y = x.round_().clamp_(0, 255), y.round_().clamp_(0, 255)
    i = sub(shadow_on)
    if len(i):
        g2 = torch.Generator(device=dev)
        g2.manual_seed(shadow_seed)
        y[i] = cast_shadows(y[i], mask[idx[i]], g2, strength[idx[i]])
    if light:
        g3 = torch.Generator(device=dev)
        g3.manual_seed(light_seed)
        x, y = apply_light(x, y, mask[idx], g3, opts)
    for img, sel, q in ((x, jpeg_on & jpeg_bg, quality), (y, jpeg_on & jpeg_fg, quality2)):
        i = sub(sel)
        if len(i):
            img[i] = jpeg_like(img[i], q[idx[i]], subsample[idx[i]])
    out, fg_out = bg.clone(), fg_bg.clone()
    out[idx], fg_out[idx] = x, y
    return out, fg_out
