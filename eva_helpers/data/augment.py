"""Joint augmentation (albumentations): one geometric draw for bg, fg_bg, mask and depth; colour for images only.

Choices, and why:
- depth is an *image-type* target of the geometric pipeline, so it is resampled bilinearly (a depth map is a smooth
  field; nearest would make staircases), and it never enters the photometric pipeline (a separate Compose that only
  sees fg_bg and bg), so colour jitter cannot touch it. Bilinear weights are convex: values stay in [0, 1].
- mask is the mask target: nearest-neighbour, so it stays exactly {0, 1}.
- geometric ops are cheap ones: flip and crop-then-resize (RandomResizedCrop); a small Affine (rotation) is optional.
- photometric: one draw shared by fg_bg and bg by default (the scene's lighting changes, the pair stays a pair); with
  `independent_jitter=True` each image gets its own draw, so |fg_bg - bg| outside the object is not exactly zero and
  stops being a free shortcut.
- seeding: `transform(sample, seed)` reseeds both pipelines from `seed` alone, so a sample's augmentation is a pure
  function of (sample, seed): the same in any worker, process or resumed run. seed=None draws from the process RNG.
- no normalisation here: images leave as uint8 tensors; `loaders.prepare_batch` normalises once, on the device.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from eva_helpers.errors import BadInputError

SPLITS = ("train", "val", "test")
# cv2's INTER_NEAREST resize samples at floor(x * scale): up to half a pixel off the centre-aligned bilinear grid the
# images use; NEAREST_EXACT is centre-aligned, so mask edges land where the image edges do.
_NEAREST_EXACT = 6  # cv2.INTER_NEAREST_EXACT


def _albu():
    import albumentations as A  # lazy: keeps `import eva_helpers` light

    return A


def _to_tensors(out: dict[str, Any], compact: bool = False, with_bg: bool = True) -> dict[str, Any]:
    """numpy (H, W, 3) uint8 / (H, W) -> torch (3, H, W) uint8 / (1, H, W) float32 (uint8 / float16 if compact);
    without bg, the sample's meta["bg_id"] names it (`loaders.BackgroundBank` holds the backgrounds)."""
    import torch

    res = {"meta": out["meta"]}
    for k in (("bg", "fg_bg") if with_bg else ("fg_bg",)):
        # (3, H, W) uint8 view of the (H, W, 3) array: the batch collate copies it once, straight into shared memory
        arr = out[k] if out[k].flags.writeable else out[k].copy()  # never alias the dataset's background cache
        res[k] = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
    mask = torch.from_numpy(np.ascontiguousarray(out["mask"]))[None]  # (1, H, W) uint8 {0, 1}
    depth = torch.from_numpy(np.ascontiguousarray(out["depth"], dtype=np.float32))[None]  # (1, H, W)
    if compact:  # mask 4x, depth 2x smaller to move out of the workers; prepare_batch restores float32
        res["mask"], res["depth"] = mask, depth.to(torch.float16)
    else:
        res["mask"], res["depth"] = mask.float(), depth
    return res


def _seed_of(seed: int, stream: int) -> int:
    """Independent 32-bit seeds for each pipeline from one sample seed."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFF, stream]).generate_state(1)[0])


class JointTransform:
    """callable(sample, seed) -> sample with tensors; picklable so spawn-started workers can use it."""
    def __init__(self, split: str, size: int, independent_jitter: bool = False, *, hflip: float = 0.5,
                 crop_scale: tuple[float, float] = (0.6, 1.0), affine_p: float = 0.0, rotate: float = 10.0,
                 jitter: float = 0.25, jitter_p: float = 0.8, saturation: float = 0.0, hue: float = 0.0,
                 compact: bool = False, with_bg: bool = True):
        if split not in SPLITS:

            raise BadInputError(f"split {split!r}: use one of {SPLITS}")
        self.split, self.size, self.independent_jitter, self.compact = split, int(size), independent_jitter, compact
        self.with_bg = with_bg
        self.opts = dict(hflip=hflip, crop_scale=tuple(crop_scale), affine_p=affine_p, rotate=rotate, jitter=jitter,
                         jitter_p=jitter_p, saturation=saturation, hue=hue)
        self._build()

    def _build(self) -> None:
        import cv2

        A, o, s = _albu(), self.opts, self.size
        if self.split == "train":
            geo = [A.HorizontalFlip(p=o["hflip"])]
            if o["affine_p"] > 0:  # rotation/shear: ~1.7 ms per sample at 224 px, so off by default
                geo.append(A.Affine(scale=(0.9, 1.1), rotate=(-o["rotate"], o["rotate"]),
                                    translate_percent=(-0.05, 0.05), interpolation=cv2.INTER_LINEAR,
                                    mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT,
                                    fill=0, fill_mask=0, p=o["affine_p"]))
            # crop first, then resize only the crop: scale + translation for the price of one resize
            geo.append(A.RandomResizedCrop(size=(s, s), scale=o["crop_scale"], ratio=(0.8, 1.25),
                                           interpolation=cv2.INTER_LINEAR, mask_interpolation=_NEAREST_EXACT))
            # brightness/contrast are lookup tables on uint8 (~0.04 ms); saturation/hue go through HSV (~0.5 ms)
            photo = [A.RandomBrightnessContrast(brightness_limit=o["jitter"], contrast_limit=o["jitter"],
                                                p=o["jitter_p"])]
            if o["saturation"] > 0 or o["hue"] > 0:
                photo.append(A.ColorJitter(brightness=0, contrast=0, saturation=o["saturation"], hue=o["hue"],
                                           p=o["jitter_p"]))
        else:
            geo = [A.Resize(s, s, interpolation=cv2.INTER_LINEAR, mask_interpolation=_NEAREST_EXACT)]
            photo = []
        # fg_bg is `image`, mask is `mask` (nearest); bg and depth ride along as images (bilinear)
        # the four arrays always share one shape (the dataset guarantees it), so skip albumentations' per-call check
        self._geo = A.Compose(geo, additional_targets={"bg": "image", "depth": "image"}, is_check_shapes=False)
        self._photo = A.Compose(photo, additional_targets={"bg": "image"}, is_check_shapes=False) if photo else None
        self._photo1 = A.Compose(photo, is_check_shapes=False) if photo else None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._build()

    def _reseed(self, compose, seed: int, stream: int) -> None:
        compose.set_random_seed(_seed_of(seed, stream))

    def __call__(self, sample: dict[str, Any], seed: int | None = None) -> dict[str, Any]:
        if seed is None:  # draw from numpy's process RNG (worker_init_fn seeds it per worker): no shared streams
            seed = int(np.random.randint(0, 2**31 - 1))
        h, w = sample["fg_bg"].shape[:2]
        out = dict(sample)
        if self.split != "train" and (h, w) == (self.size, self.size):
            pass  # already at size: nothing to resample
        else:
            self._reseed(self._geo, seed, 0)
            g = self._geo(image=sample["fg_bg"], bg=sample["bg"], mask=sample["mask"], depth=sample["depth"])
            out.update(fg_bg=g["image"], bg=g["bg"], mask=g["mask"], depth=g["depth"])
        if self._photo is not None:
            if self.independent_jitter:
                self._reseed(self._photo1, seed, 1)
                out["fg_bg"] = self._photo1(image=out["fg_bg"])["image"]
                self._reseed(self._photo1, seed, 2)
                out["bg"] = self._photo1(image=out["bg"])["image"]
            else:
                self._reseed(self._photo, seed, 1)
                p = self._photo(image=out["fg_bg"], bg=out["bg"])
                out.update(fg_bg=p["image"], bg=p["bg"])
        return _to_tensors(out, self.compact, getattr(self, "with_bg", True))


def build_transforms(split: str, size: int, independent_jitter: bool = False,
                     **opts: Any) -> Callable[[dict, int | None], dict]:
    """Train: flip + small affine + random resized crop on all four arrays, colour jitter on images; val/test: resize.

    Options (train): hflip, crop_scale, affine_p (small rotation, off by default: costly), rotate, jitter
    (brightness/contrast), jitter_p, saturation, hue (0 by default: HSV is costly); compact=True makes the output
    mask uint8 and depth float16 (cheaper to move out of workers; `prepare_batch` converts back to float32);
    with_bg=False leaves bg out (the training loader: `loaders.BackgroundBank` gives it from meta["bg_id"]).
    """
    return JointTransform(split, size, independent_jitter, **opts)


def resize_background(bg: np.ndarray, size: int) -> np.ndarray:
    """A prepared background at `size`, byte-identical to what the val/test transform gives its bg."""
    import cv2

    if bg.shape[:2] == (size, size):
        return bg
    return _albu().Resize(size, size, interpolation=cv2.INTER_LINEAR)(image=bg)["image"]
