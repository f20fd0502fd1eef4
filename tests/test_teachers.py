"""Depth teachers: the geometric one (offline, torch-free) and the transformers path with a tiny random model."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from eva_helpers.errors import EvaError
from eva_helpers.teachers import GeometricTeacher, get_teacher, normalise

pytestmark = pytest.mark.timeout(120)


def _imgs(n=2, h=32, w=40):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_geometric_is_a_ground_plane_near_at_the_bottom():
    t = get_teacher("geometric")
    assert isinstance(t, GeometricTeacher) and t.name == "geometric"
    flat = np.full((40, 30, 3), 128, np.uint8)
    d = t.predict([flat])[0]
    assert d.shape == (40, 30) and d.dtype == np.float32
    rows = d.mean(axis=1)
    hz = int(0.4 * 39)
    assert np.allclose(rows[:hz + 1], rows[0])  # constant far value above the horizon
    assert np.all(np.diff(rows[hz + 1:]) > 0)  # rising towards the camera (near = larger)
    assert rows[-1] > rows[0] + 0.8


def test_geometric_depends_on_the_image_and_is_deterministic():
    t = get_teacher("geometric")
    dark, light = np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 255, np.uint8)
    a, b = t.predict([dark, light])
    assert np.all(b > a)  # brighter image -> the luminance term differs
    assert np.array_equal(t.predict([dark])[0], a)


def test_normalise():
    d, lo, hi = normalise(np.array([[2.0, 4.0], [3.0, 6.0]], np.float32))
    assert (lo, hi) == (2.0, 6.0) and d.min() == 0.0 and d.max() == 1.0 and d[1, 0] == 0.25
    assert normalise(np.ones((3, 3)))[0].max() == 0.0  # flat map: no division by zero


def test_unknown_teacher_lists_valid_names():
    with pytest.raises(EvaError, match="geometric.*depth-anything-v2-small.*midas-small"):
        get_teacher("dpt-huge")


def test_geometric_path_imports_neither_transformers_nor_torch():
    code = ("import sys, numpy as np; from eva_helpers.teachers import get_teacher; "
            "get_teacher('geometric').predict([np.zeros((16, 16, 3), np.uint8)]); "
            "from eva_helpers import build, compose, images; "
            "print(sorted(m for m in ('transformers', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _tiny_depth_anything(folder):
    """A randomly initialised Depth Anything with a 2-layer, 32-wide DINOv2 backbone, saved like a hub snapshot."""
    import torch
    from transformers import (DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config,
                              DPTImageProcessor)

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2,
                            image_size=28, patch_size=14, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
                              fusion_hidden_size=16, head_hidden_size=8, patch_size=14)
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(cfg).save_pretrained(folder)
    DPTImageProcessor(size={"height": 28, "width": 28}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      do_pad=False).save_pretrained(folder)


@pytest.fixture(scope="module")
def tiny_da(tmp_path_factory):
    pytest.importorskip("transformers")
    import torch

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("models") / "tiny-da"
    _tiny_depth_anything(folder)
    return folder


def test_tiny_depth_anything_loads_from_a_local_folder_and_predicts(tiny_da):
    t = get_teacher("depth-anything-v2-small", model_dir=tiny_da, device="cpu", batch_size=2)
    assert type(t.model).__name__ == "DepthAnythingForDepthEstimation"
    assert t.info["source"] == str(tiny_da)
    imgs = _imgs(3) + [np.zeros((20, 24, 3), np.uint8)]  # a different size in the same call
    out = t.predict(imgs)
    assert [o.shape for o in out] == [(32, 40)] * 3 + [(20, 24)]
    assert all(o.dtype == np.float32 and np.isfinite(o).all() for o in out)
    again = t.predict(imgs[:1])[0]
    assert np.allclose(again, out[0], atol=1e-5)  # batch of 1 vs batch of 2: same answer


def test_missing_local_model_is_a_clear_error(tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(EvaError, match="model_dir"):
        get_teacher("depth-anything-v2-small", model_dir=tmp_path / "nothing-here", device="cpu")


@pytest.mark.parametrize("mode", ["layered", "per-composite"])
def test_build_with_the_transformers_teacher(tiny_da, tmp_path, mode):
    from _build_helpers import sample_inputs
    from eva_helpers import formats
    from eva_helpers.build import build_dataset

    bg, fg = sample_inputs(tmp_path / "in", n_bg=2, n_fg=1)
    m = build_dataset(bg, fg, tmp_path / "ds", size=32, positions=2, limit=6, shard_size=4, workers=2, progress=False,
                      mode=mode, teacher="depth-anything-v2-small",
                      teacher_kwargs={"model_dir": tiny_da, "device": "cpu", "batch_size": 3})
    assert m["teacher"]["source"] == str(tiny_da) and m["params"]["teacher_kwargs"] == {"model_dir": str(tiny_da)}
    import zipfile

    zf = zipfile.ZipFile(tmp_path / "ds" / m["shards"][1]["file"])
    rows = formats.read_jsonl(zf.read(formats.INDEX))
    assert [r["index"] for r in rows] == [4, 5]
    for r in rows:
        d = formats.decode_depth(zf.read(formats.member("depth", r["id"])))
        assert d.shape == (32, 32) and np.isfinite(d).all() and r["depth_max"] >= r["depth_min"]
