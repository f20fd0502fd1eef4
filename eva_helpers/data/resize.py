"""The workers' transform: a decoded sample resized to the run's size, out as uint8 tensors.

Training augmentation runs on the batch, on the device (`training/batch_augment.py`); the workers only resize: the
images and depth bilinearly (a depth map is a smooth field; nearest would make staircases), the mask with cv2's
centre-aligned nearest, so it stays exactly {0, 1} and its edges land where the image edges do. No normalisation here:
`models.inputs.model_input` normalises once, on the device.
"""
from __future__ import annotations

from typing import Any

import numpy as np

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
    if compact:  # mask 4x, depth 2x smaller to move out of the workers; batch_to_device restores float32
        res["mask"], res["depth"] = mask, depth.to(torch.float16)
    else:
        res["mask"], res["depth"] = mask.float(), depth
    return res


class ResizeTransform:
    """callable(sample, seed=None) -> the sample at `size` as tensors (the seed is accepted and unused: the dataset
    passes one); picklable, so spawn-started workers can use it. `compact`: mask uint8 and depth float16 out of the
    workers; `with_bg=False` leaves bg out (the training loader: `loaders.BackgroundBank` gives it by meta["bg_id"])."""

    def __init__(self, size: int, compact: bool = False, with_bg: bool = True) -> None:
        self.size, self.compact, self.with_bg = int(size), compact, with_bg
        self._build()

    def _build(self) -> None:
        import cv2

        A, s = _albu(), self.size
        # fg_bg is `image`, mask is `mask`; bg and depth ride along as images. The four arrays share one shape (the
        # dataset guarantees it), so albumentations' per-call check is skipped.
        self._resize = A.Compose([A.Resize(s, s, interpolation=cv2.INTER_LINEAR, mask_interpolation=_NEAREST_EXACT)],
                                 additional_targets={"bg": "image", "depth": "image"}, is_check_shapes=False)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._build()

    def __call__(self, sample: dict[str, Any], seed: int | None = None) -> dict[str, Any]:
        out = dict(sample)
        if sample["fg_bg"].shape[:2] != (self.size, self.size):
            g = self._resize(image=sample["fg_bg"], bg=sample["bg"], mask=sample["mask"], depth=sample["depth"])
            out.update(fg_bg=g["image"], bg=g["bg"], mask=g["mask"], depth=g["depth"])
        return _to_tensors(out, self.compact, self.with_bg)


def resize_transform(size: int, compact: bool = False, with_bg: bool = True) -> ResizeTransform:
    return ResizeTransform(size, compact, with_bg)


def resize_background(bg: np.ndarray, size: int) -> np.ndarray:
    """A prepared background at `size`, byte-identical to what the transform gives a sample's bg."""
    import cv2

    if bg.shape[:2] == (size, size):
        return bg
    return _albu().Resize(size, size, interpolation=cv2.INTER_LINEAR)(image=bg)["image"]
