"""The dataset codecs: the fast grayscale PNG path decodes exactly what OpenCV does, for every filter we may meet."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from eva_helpers.data import formats

FILTERS = {"none": cv2.IMWRITE_PNG_FILTER_NONE, "sub": cv2.IMWRITE_PNG_FILTER_SUB, "up": cv2.IMWRITE_PNG_FILTER_UP,
           "paeth": cv2.IMWRITE_PNG_FILTER_PAETH, "adaptive": cv2.IMWRITE_PNG_FILTER_PAETH | cv2.IMWRITE_PNG_FILTER_SUB}


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("filt", sorted(FILTERS))
def test_fast_png_equals_opencv(dtype, filt):
    rng = np.random.default_rng(3)
    hi = np.iinfo(dtype).max
    smooth = np.linspace(0, hi, 37 * 23).reshape(23, 37)
    arr = np.clip(smooth + rng.integers(-300, 300, smooth.shape), 0, hi).astype(dtype)
    data = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, FILTERS[filt]])[1].tobytes()
    ref = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    fast = formats._decode_gray_png(data)
    if fast is not None:  # None means: not our simple layout, OpenCV decodes it
        assert fast.dtype == ref.dtype and np.array_equal(fast, ref)
    out = formats.decode_depth(data) if dtype == np.uint16 else formats.decode_mask(data)
    expect = ref.astype(np.float32) / 65535 if dtype == np.uint16 else ref
    assert np.array_equal(out, expect)


def test_depth_and_mask_round_trip_and_truncation():
    rng = np.random.default_rng(0)
    d = rng.random((16, 24)).astype(np.float32)
    assert np.abs(formats.decode_depth(formats.encode_depth(d)) - d).max() <= 0.5 / 65535 + 1e-7
    a = rng.integers(0, 256, (16, 24), dtype=np.uint8)
    data = formats.encode_mask(a)
    assert np.array_equal(formats.decode_mask(data), a)
    with pytest.raises(ValueError):
        formats.decode_mask(data[: len(data) // 2])


def test_jpeg_decodes_to_rgb():
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 200  # pure red must stay in channel 0
    out = formats.decode_image(formats.encode_jpeg(rgb))
    assert out.shape == (16, 16, 3) and out[..., 0].mean() > 150 and out[..., 2].mean() < 50
