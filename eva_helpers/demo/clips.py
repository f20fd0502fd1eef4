"""Clips from a fixed camera with ground truth, made from cut-outs and backgrounds (bench/footage.py, the demo).

Cut-outs walk across a background photo, in front of it, at the frame's full 640x480: one enters from each side, they
cross, one may stop for a while; each casts a shadow on the ground (`perturb.shadow_map`: its silhouette squashed and
sheared from its ground contact, blurred), the light fades slowly over the clip (gain and a little colour), the
camera shakes a little (sub-pixel to ~1.5 px, a tenth of a degree), the sensor adds noise, and every frame is saved as
a JPEG (an MJPG clip, as many webcams and camera traps record). The ground truth is each frame's alpha >= 0.5 after
the same shake, saved bit-packed beside the clip. Every draw comes from the clip's seed: the same spec gives the same
clip.
"""
from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eva_helpers.atomic import TMP_PREFIX, atomic_write_bytes


@dataclass(frozen=True)
class ClipSpec:
    name: str
    bg: str                 # a background id (its file stem in sample_assets/bg)
    fgs: tuple[str, ...]    # cut-out ids, one walker each (sample_assets/fg)
    frames: int = 300
    seed: int = 0
    pause: float = 0.0      # share of the first walker's time spent standing still mid-frame
    noise: float = 3.0      # sensor noise, sigma of 255
    quality: int = 70       # the MJPG frames' JPEG quality
    light: float = 0.75     # the gain reached by the last frame (1.0 at the first)
    shake: float = 1.2      # px, the shake's amplitude
    shadow: float = 0.45    # how much a cast shadow darkens the ground
    size: tuple[int, int] = (640, 480)  # (W, H)

    def file_stem(self) -> str:
        """The clip's name and a digest of every setting: a changed spec never reuses an old clip."""
        return f"{self.name}-{hashlib.sha256(repr(self).encode()).hexdigest()[:8]}"


def _fit_frame(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre crop to size's aspect and resize to size (W, H): float32 (H, W, 3)."""
    import cv2

    h, w = rgb.shape[:2]
    tw = min(w, round(h * size[0] / size[1]))
    th = min(h, round(tw * size[1] / size[0]))
    y0, x0 = (h - th) // 2, (w - tw) // 2
    crop = np.ascontiguousarray(rgb[y0:y0 + th, x0:x0 + tw])
    interp = cv2.INTER_AREA if tw > size[0] else cv2.INTER_CUBIC
    return cv2.resize(crop, size, interpolation=interp).astype(np.float32)


class _Walker:
    """One cut-out walking along the ground from one side of the frame to the other during [t0, t1)."""

    def __init__(self, rgba: np.ndarray, t0: int, t1: int, left_to_right: bool, height: float, ground: float,
                 pause: float, rng: np.random.Generator, size: tuple[int, int]):
        from eva_helpers.compositing.compose import cutout_chain

        W, H = self.size = size
        self.chain = cutout_chain(rgba, max(W, H))
        self.h = int(height * H)
        trimmed = self.chain[0]
        self.w = max(1, round(trimmed.shape[1] * self.h / trimmed.shape[0]))
        self.t0, self.t1, self.ltr, self.ground = t0, t1, left_to_right, ground * H
        self.pause, self.phase = pause, rng.uniform(0, 2 * math.pi)

    def place(self, t: int) -> tuple[np.ndarray, np.ndarray, int, int] | None:
        """(premultiplied RGB, alpha, x, y) at frame t, or None when off stage."""
        from eva_helpers.compositing.compose import place_cutout

        if not self.t0 <= t < self.t1:
            return None
        u = (t - self.t0) / max(1, self.t1 - self.t0 - 1)
        a, b = 0.5 - self.pause / 2, 0.5 + self.pause / 2  # [a, b]: standing still at mid-frame
        s = u / a * 0.5 if u < a else (0.5 if u <= b else 0.5 + (u - b) / (1 - b) * 0.5) if self.pause else u
        s = s if self.ltr else 1 - s
        x = round(-self.w + s * (self.size[0] + self.w))
        walking = not (self.pause and a <= u <= b)
        y = round(self.ground - self.h + (2.0 * math.sin(t / 3.0 + self.phase) if walking else 0.0))
        pm, alpha = place_cutout(self.chain, self.w, self.h, flip=not self.ltr)
        return pm, alpha, x, y


def _paste(canvas: np.ndarray, alpha_canvas: np.ndarray, pm: np.ndarray, alpha: np.ndarray, x: int, y: int) -> None:
    """Blend a premultiplied cut-out over `canvas` at (x, y), clipped to the frame; its alpha into `alpha_canvas`."""
    H, W = canvas.shape[:2]
    x0, y0, x1, y1 = max(0, x), max(0, y), min(W, x + pm.shape[1]), min(H, y + pm.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    sp, sa = pm[y0 - y:y1 - y, x0 - x:x1 - x], alpha[y0 - y:y1 - y, x0 - x:x1 - x]
    canvas[y0:y1, x0:x1] = sp + canvas[y0:y1, x0:x1] * (1 - sa[..., None])
    alpha_canvas[y0:y1, x0:x1] = np.maximum(alpha_canvas[y0:y1, x0:x1], sa)


def make_clip(spec: ClipSpec, assets: Path, out_dir: Path) -> tuple[Path, Path]:
    """Write <name>.avi (MJPG) and <name>_gt.npz (bit-packed masks (N, H, W)); reused when both exist."""
    import cv2

    from eva_helpers.data.images import decode_cutout, read_image
    from eva_helpers.evaluation.perturb import shadow_map

    clip, gt_path = out_dir / f"{spec.file_stem()}.avi", out_dir / f"{spec.file_stem()}_gt.npz"
    if clip.is_file() and gt_path.is_file():
        return clip, gt_path
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    bg = _fit_frame(read_image(next((assets / "bg").glob(spec.bg + ".*"))), spec.size)
    n, k = spec.frames, len(spec.fgs)
    walkers = []
    for j, fg in enumerate(spec.fgs):
        span = int(n * 0.62)
        t0 = round(j * (n - span) / max(1, k - 1)) if k > 1 else (n - span) // 2
        path = assets / "fg" / f"{fg}.png"
        walkers.append(_Walker(decode_cutout(path, path.read_bytes()), t0, t0 + span, j % 2 == 0,
                               rng.uniform(0.35, 0.55), rng.uniform(0.86, 0.95), spec.pause if j == 0 else 0.0, rng,
                               spec.size))
    ph = rng.uniform(0, 2 * math.pi, 5)
    W, H = spec.size
    masks = np.zeros((n, H, W), bool)
    tmp = out_dir / f"{TMP_PREFIX}{spec.name}.avi"  # whole or absent: renamed once the last frame is in
    writer = cv2.VideoWriter(str(tmp), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"), 25.0, spec.size)
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, spec.quality)
    for t in range(n):
        frame, alpha = bg.copy(), np.zeros((H, W), np.float32)
        placed = [(j, p) for j, p in enumerate(w.place(t) for w in walkers) if p is not None]
        for j, (pm, a, x, y) in placed:  # shadows first: they fall on the ground, under every object
            one = np.zeros_like(alpha)
            _paste(np.zeros_like(frame), one, pm, a, x, y)
            frame *= (1.0 - spec.shadow * shadow_map(one >= 0.5, 10 * spec.seed + j))[..., None]  # one lean per walker
        for _, (pm, a, x, y) in placed:
            _paste(frame, alpha, pm, a, x, y)
        u = t / max(1, n - 1)
        gain = 1.0 + (spec.light - 1.0) * u
        frame *= np.array([gain * (1 + 0.04 * u), gain, gain * (1 - 0.04 * u)], np.float32)  # dimmer and warmer
        s = spec.shake
        dx = s * (0.6 * math.sin(2 * math.pi * t / 37 + ph[0]) + 0.4 * math.sin(2 * math.pi * t / 11 + ph[1]))
        dy = s * (0.6 * math.sin(2 * math.pi * t / 29 + ph[2]) + 0.4 * math.sin(2 * math.pi * t / 13 + ph[3]))
        ang = 0.1 * math.sin(2 * math.pi * t / 41 + ph[4])
        m = cv2.getRotationMatrix2D(((W - 1) / 2, (H - 1) / 2), ang, 1.0)
        m[:, 2] += (dx, dy)
        frame = cv2.warpAffine(frame, m, spec.size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        alpha = cv2.warpAffine(alpha, m, spec.size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        frame += rng.normal(0.0, spec.noise, frame.shape).astype(np.float32)
        masks[t] = alpha >= 0.5
        writer.write(np.clip(np.rint(frame), 0, 255).astype(np.uint8)[..., ::-1].copy())
    writer.release()
    buf = io.BytesIO()
    np.savez_compressed(buf, masks=np.packbits(masks, axis=-1), shape=np.array(masks.shape))
    atomic_write_bytes(gt_path, buf.getvalue())
    tmp.replace(clip)
    return clip, gt_path


def load_gt(gt_path: Path) -> np.ndarray:
    """(N, H, W) bool ground truth of a clip made by make_clip."""
    z = np.load(gt_path)
    n, h, w = z["shape"]
    return np.unpackbits(z["masks"], axis=-1, count=int(w)).astype(bool).reshape(n, h, w)


def mask_ious(masks_video: Path, gt: np.ndarray) -> list[float]:
    """Per-frame IoU (empty vs empty = 1) of a mask video (frame k against gt[k], (N, H, W) bool)."""
    import cv2

    cap, out = cv2.VideoCapture(str(masks_video)), []
    try:
        for g in gt:
            ok, m = cap.read()
            if not ok:
                break
            p = m[..., 0] > 127
            union = np.logical_or(p, g).sum()
            out.append(float(np.logical_and(p, g).sum() / union) if union else 1.0)
    finally:
        cap.release()
    return out


def demo_clip(run_dir: str | Path, out_dir: str | Path, frames: int = 120, seed: int = 0,
              size: tuple[int, int] = (640, 480)) -> tuple[Path, Path]:
    """A clip of the embedded sample to try `predict_video` on (notebook 05, the demo): a background of the run's
    held-out test split and two of its test cut-outs (any cut-outs when the run's split is by background only), the
    first of the sample's when the run was not trained on the sample. -> (clip, ground truth), as make_clip."""
    from eva_helpers.paths import sample_assets
    from eva_helpers.training.run_folder import resolve_data
    from eva_helpers.training.trained_run import load_run

    assets = sample_assets()
    bgs = sorted(p.stem for p in (assets / "bg").glob("*.jpg"))
    fgs = sorted(p.stem for p in (assets / "fg").glob("*.png"))
    _, cfg, _ = load_run(run_dir)
    data = resolve_data(cfg.data, run_dir)
    if data is not None and Path(data).is_dir():
        info = cfg.splits(data)["info"]
        bgs = [b for b in info["bg_ids"]["test"] if b in bgs] or bgs
        fgs = [f for f in info.get("fg_ids", {}).get("test", []) if f in fgs] or fgs
    spec = ClipSpec("demo", bgs[0], tuple(fgs[:2]), frames=frames, seed=seed, size=size)
    return make_clip(spec, assets, Path(out_dir))
