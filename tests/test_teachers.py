"""Depth teachers: the geometric one (offline, torch-free) and the transformers path with a tiny random model."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from eva_helpers.errors import EvaError
from _build_helpers import object_contrast
from eva_helpers.compositing.labels import MIN_CONTRAST, ensure_contrast, fit_scale_shift, layer_object
from eva_helpers.compositing.teachers import GeometricTeacher, get_teacher, normalise

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


def _disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_an_object_above_the_horizon_does_not_vanish():
    t = GeometricTeacher()
    base, _, _ = normalise(t.plane(40, 40))  # flat (0) above row 15.6, rising to 1 at the bottom
    obj = _disc(40, 40, 7, 20, 5)  # bottom edge at row 12: on the flat "sky" part
    assert np.ptp(base[obj]) == 0 and np.ptp(base[:16]) == 0  # the old contact-row rule gave it the sky's value
    label = layer_object(base, obj)
    assert object_contrast(label, obj) >= MIN_CONTRAST - 1e-9  # moved in front of its surroundings
    assert np.array_equal(label[~obj], base[~obj]) and label.min() >= 0 and label.max() <= 1


def test_layer_object_stands_on_the_ground_with_a_rounded_bulge():
    t = GeometricTeacher()
    base, _, _ = normalise(t.plane(64, 64))
    obj = np.zeros((64, 64), bool)
    obj[30:56, 20:36] = True  # a 16 px wide upright box standing on row 55
    label = layer_object(base, obj)
    contact = base[55, 20:36].mean()
    assert contact < label[55, 20] < contact + 0.04  # its silhouette edge sits near the ground contact
    centre, edge = label[43, 27:29].mean(), label[43, 20]
    assert centre > edge + 0.02 and label[obj].max() <= 1.0  # nearer in the middle: relief, not a flat layer
    # bulge height as documented: RELIEF * (R / S) * contact, R = 8 px inscribed radius, S = 64
    assert label[obj].max() - contact == pytest.approx(1.0 * 8 / 64 * contact, rel=0.15)
    assert object_contrast(label, obj) > MIN_CONTRAST


def test_ensure_contrast_moves_a_weak_object_and_keeps_a_strong_one():
    d = np.full((20, 20), 0.5)
    obj = _disc(20, 20, 10, 10, 4)
    out = ensure_contrast(d, obj)
    assert object_contrast(out, obj) == pytest.approx(MIN_CONTRAST) and np.array_equal(out[~obj], d[~obj])
    near = np.full((20, 20), 0.99)  # by the nearest pixels: cannot move up by 0.05, moves back instead
    assert object_contrast(ensure_contrast(near, obj), obj) == pytest.approx(-MIN_CONTRAST)
    strong = d.copy()
    strong[obj] = 0.8
    assert ensure_contrast(strong, obj) is strong


def test_fit_scale_shift_outside_the_object():
    rng = np.random.default_rng(0)
    ref = rng.random((16, 16))
    pred = 3.0 * ref - 1.0
    obj = np.zeros((16, 16), bool)
    obj[4:8, 4:8] = True
    pred[obj] = 50.0  # the object must not pull the fit
    s, t = fit_scale_shift(pred, ref, ~obj)
    assert s == pytest.approx(1 / 3) and t == pytest.approx(1 / 3)
    s, _ = fit_scale_shift(-pred, ref, ~obj)  # an anti-correlated map still gets a positive scale
    assert s > 0


def test_geometric_teacher_sees_objects_in_composites():
    t = get_teacher("geometric")
    img = np.full((32, 32, 3), 120, np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[4:10, 12:20] = 255  # above the horizon
    raw = t.predict_composites([img], [mask])[0]
    assert raw.shape == (32, 32) and raw.dtype == np.float32
    d, _, _ = normalise(raw)
    assert abs(object_contrast(d, mask >= 128)) >= MIN_CONTRAST - 1e-6
    assert np.allclose(raw[mask == 0], t.predict([img])[0][mask == 0])


def test_normalise():
    d, lo, hi = normalise(np.array([[2.0, 4.0], [3.0, 6.0]], np.float32))
    assert (lo, hi) == (2.0, 6.0) and d.min() == 0.0 and d.max() == 1.0 and d[1, 0] == 0.25
    assert normalise(np.ones((3, 3)))[0].max() == 0.0  # flat map: no division by zero


def test_unknown_teacher_lists_valid_names():
    with pytest.raises(EvaError, match="geometric.*depth-anything-v2-small.*midas-small"):
        get_teacher("dpt-huge")


def test_geometric_path_imports_neither_transformers_nor_torch():
    code = ("import sys, numpy as np; from eva_helpers.compositing.teachers import get_teacher; "
            "get_teacher('geometric').predict([np.zeros((16, 16, 3), np.uint8)]); "
            "from eva_helpers.compositing import build, compose; from eva_helpers.data import images; "
            "print(sorted(m for m in ('transformers', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _tiny_depth_anything(folder, seed=0):
    """A randomly initialised Depth Anything with a 2-layer, 32-wide DINOv2 backbone, saved like a hub snapshot."""
    import torch
    from transformers import (DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config,
                              DPTImageProcessor)

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2,
                            image_size=28, patch_size=14, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
                              fusion_hidden_size=16, head_hidden_size=8, patch_size=14)
    torch.manual_seed(seed)
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


@pytest.mark.slow  # a transformers model built and run
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
    assert t.input_size == 28  # the processor's own size: what the build prepares backgrounds at
    t42 = get_teacher("depth-anything-v2-small", model_dir=tiny_da, device="cpu", input_size=42)
    assert t42.input_size == 42 and t42.info["input_size"] == 42
    assert t42.predict([np.zeros((42, 42, 3), np.uint8)])[0].shape == (42, 42)


def test_missing_local_model_is_a_clear_error(tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(EvaError, match="model_dir"):
        get_teacher("depth-anything-v2-small", model_dir=tmp_path / "nothing-here", device="cpu")


@pytest.mark.slow  # a transformers model built and run
@pytest.mark.parametrize("mode", ["layered", "per-composite", "hybrid"])
def test_build_with_the_transformers_teacher(tiny_da, tmp_path, mode):
    from _build_helpers import all_bytes, sample_inputs
    from eva_helpers.data import formats
    from eva_helpers.compositing.build import build_dataset

    bg, fg = sample_inputs(tmp_path / "in", n_bg=2, n_fg=1)
    m = build_dataset(bg, fg, tmp_path / "ds", size=32, positions=2, limit=6, shard_size=4, workers=2, progress=False,
                      mode=mode, teacher="depth-anything-v2-small",
                      teacher_kwargs={"model_dir": tiny_da, "device": "cpu", "batch_size": 3})
    assert m["teacher"]["source"] == str(tiny_da) and m["params"]["teacher_kwargs"] == {"model_dir": str(tiny_da)}
    import zipfile

    zf = zipfile.ZipFile(tmp_path / "ds" / m["shards"][1]["file"])
    rows = formats.read_jsonl(zf.read(formats.INDEX))
    assert [r["index"] for r in rows] == [4, 5]
    bgz = zipfile.ZipFile(tmp_path / "ds" / formats.BACKGROUNDS)
    for r in rows:
        d = formats.decode_depth(zf.read(formats.member("depth", r["id"])))
        assert d.shape == (32, 32) and np.isfinite(d).all() and r["depth_max"] >= r["depth_min"]
        obj = formats.decode_mask(zf.read(formats.member("mask", r["id"]))) >= formats.MASK_THRESHOLD
        bg_d = formats.decode_depth(bgz.read(formats.member("bg_depth", r["bg_id"])))
        assert abs(object_contrast(d, obj)) >= MIN_CONTRAST - 1e-4  # no label loses its object, in any mode
        if mode != "per-composite":  # background pixels are the teacher's map of the clean background, exactly
            assert np.array_equal(d[~obj], bg_d[~obj])
    if mode != "layered":  # resumable like every build: a second run verifies and keeps every shard
        before = all_bytes(tmp_path / "ds")
        build_dataset(bg, fg, tmp_path / "ds", size=32, positions=2, limit=6, shard_size=4, workers=1,
                      progress=False, mode=mode, teacher="depth-anything-v2-small",
                      teacher_kwargs={"model_dir": tiny_da, "device": "cpu", "batch_size": 2})
        assert all_bytes(tmp_path / "ds") == before


@pytest.mark.parametrize("mode", ["hybrid", "per-composite"])
def test_composite_labels_align_the_composite_map_outside_the_object(mode):
    from types import SimpleNamespace

    from eva_helpers.data import formats
    from eva_helpers.compositing.shards import _composite_depth

    base = np.repeat(np.linspace(0.0, 1.0, 32)[:, None], 32, 1)
    bg16 = np.round(base * formats.DEPTH_MAX).astype(np.uint16)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 10:22] = 255
    raw = 4.0 * base + 2.0  # the teacher's map of the composite: another scale and shift...
    raw[8:20, 10:22] += np.linspace(0.4, 0.8, 12)[None, :]  # ...with relief on the object
    ctx = SimpleNamespace(bg_depth16=[bg16], mode=mode)
    p = SimpleNamespace(bg=0, x=10, y=8, w=12, h=12)
    depth, banded = _composite_depth(ctx, raw.astype(np.float32), mask, p)
    d = depth / formats.DEPTH_MAX
    obj = mask >= 128
    want = np.clip((raw - 2.0) / 4.0, 0, 1)  # aligned back onto the background's map
    assert banded == (mode == "hybrid")
    assert np.allclose(d[obj], want[obj], atol=1e-4)  # the object keeps the composite's relief, aligned
    assert np.allclose(d[~obj], base[~obj], atol=1e-4)
    if mode == "hybrid":
        assert np.array_equal(depth[~obj], bg16[~obj])


def test_teacher_view_recomposites_at_the_teachers_size():
    """A 518 px teacher must see the composite made from the full-resolution photo, not an upsampled thumbnail."""
    import cv2
    from types import SimpleNamespace

    from _build_helpers import rgba_disc
    from eva_helpers.compositing.shards import _teacher_view
    from eva_helpers.compositing.compose import Compositor, prepare_background

    rng = np.random.default_rng(0)
    photo = cv2.resize(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), (160, 120), interpolation=cv2.INTER_CUBIC)
    comp = Compositor([prepare_background(photo, 32)], [rgba_disc(60, 40)], size=32, positions=2, seed=0)
    fg_bg, mask, p = comp.render(1)
    ctx = SimpleNamespace(teacher_bgs=[prepare_background(photo, 96)], comp=comp)
    view = _teacher_view(ctx, fg_bg, p)
    assert view.shape == (96, 96, 3)
    small = cv2.resize(view, (32, 32), interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(float) - fg_bg).mean() < 2  # the same composite, three times finer (bg alone: ~17)
    assert _teacher_view(SimpleNamespace(teacher_bgs=None), fg_bg, p) is fg_bg


def test_a_resume_whose_teacher_maps_differently_keeps_the_recorded_background_maps(tmp_path, monkeypatch):
    """Hybrid build, killed after one shard, resumed where the same model folder now holds other weights (as another
    GPU or precision gives other maps): backgrounds.zip is kept byte for byte and every shard's background pixels are
    exactly its recorded map, the shards built before the resume and after alike."""
    pytest.importorskip("transformers")
    import zipfile

    from _build_helpers import build_killed_at_shard, sample_inputs
    from eva_helpers.data import formats
    from eva_helpers.compositing.build import build_dataset

    bg, fg = sample_inputs(tmp_path / "in", n_bg=2, n_fg=1)
    model = tmp_path / "model"
    _tiny_depth_anything(model, seed=0)
    kw = dict(size=32, positions=2, limit=8, shard_size=4, workers=1, progress=False, mode="hybrid",
              teacher="depth-anything-v2-small", teacher_kwargs={"model_dir": model, "device": "cpu"})
    build_killed_at_shard(bg, fg, tmp_path / "ds", monkeypatch, 1, **kw)
    bgz = (tmp_path / "ds" / formats.BACKGROUNDS).read_bytes()
    _tiny_depth_anything(model, seed=1)  # the teacher now maps the backgrounds differently
    m = build_dataset(bg, fg, tmp_path / "ds", **kw)
    assert (tmp_path / "ds" / formats.BACKGROUNDS).read_bytes() == bgz
    bgz_zip = zipfile.ZipFile(tmp_path / "ds" / formats.BACKGROUNDS)
    for entry in m["shards"]:
        zf = zipfile.ZipFile(tmp_path / "ds" / entry["file"])
        for r in formats.read_jsonl(zf.read(formats.INDEX)):
            d = formats.decode_depth(zf.read(formats.member("depth", r["id"])))
            obj = formats.decode_mask(zf.read(formats.member("mask", r["id"]))) >= formats.MASK_THRESHOLD
            bg_d = formats.decode_depth(bgz_zip.read(formats.member("bg_depth", r["bg_id"])))
            assert np.array_equal(d[~obj], bg_d[~obj]), (entry["file"], r["id"])
