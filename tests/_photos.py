"""Real photos for tests: the embedded sample's backgrounds, cropped square and resized."""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from eva_helpers.paths import sample_assets


@lru_cache(maxsize=None)
def sample_photo(name: str, side: int) -> np.ndarray:
    """Centre square of a sample background, (side, side, 3) uint8 RGB, never saved as a JPEG at this size."""
    im = cv2.cvtColor(cv2.imread(str(sample_assets() / "bg" / f"{name}.jpg")), cv2.COLOR_BGR2RGB)
    h, w = im.shape[:2]
    s = min(h, w)
    im = im[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return cv2.resize(im, (side, side), interpolation=cv2.INTER_AREA)
