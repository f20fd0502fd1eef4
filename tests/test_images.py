"""Input listing and loading: junk counted, every odd image mode loads, every bad file names itself."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from _build_helpers import rgba_disc, save
from eva_helpers.errors import BadInputError
from eva_helpers.images import decode_background, decode_cutout, list_images, load_sources

pytestmark = pytest.mark.timeout(60)


def _rgb(h=20, w=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_listing_skips_and_counts_junk(tmp_path):
    for name in ["b.JPG", "a.png", "c.WebP", "d.jpeg"]:
        save(_rgb(), tmp_path / name, **({"format": "WEBP"} if name.endswith("WebP") else {}))
    for junk in [".DS_Store", "desktop.ini", "Thumbs.db", "folder.ini", "._a.png"]:
        (tmp_path / junk).write_bytes(b"junk")
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.jpg").write_bytes(b"")
    lst = list_images(tmp_path)
    assert [p.name for p in lst.files] == ["a.png", "b.JPG", "c.WebP", "d.jpeg"]  # sorted by id (stem)
    assert lst.skipped == {"junk": 5, "subfolder": 1, "other": 1, "bad": 0}
    assert "notes.txt" in lst.skipped_names and "sub/" in lst.skipped_names


def test_empty_or_junk_only_folder_is_an_error_naming_it(tmp_path):
    with pytest.raises(BadInputError, match=str(tmp_path)):
        list_images(tmp_path)
    (tmp_path / ".DS_Store").write_bytes(b"x")
    with pytest.raises(BadInputError, match="no images"):
        load_sources(tmp_path, "bg")
    with pytest.raises(BadInputError, match="not a folder"):
        list_images(tmp_path / "missing")


def test_duplicate_ids_refused(tmp_path):
    save(_rgb(), tmp_path / "cat.jpg")
    save(_rgb(), tmp_path / "cat.png")
    with pytest.raises(BadInputError, match="cat"):
        list_images(tmp_path)


def test_background_modes_load_as_rgb_uint8(tmp_path):
    rgb = _rgb(16, 24)
    save(Image.fromarray(rgb).convert("CMYK"), tmp_path / "cmyk.jpg", quality=95)
    save(Image.fromarray(rgb).convert("P"), tmp_path / "pal.png")
    save(Image.fromarray(rgb).convert("L"), tmp_path / "gray.png")
    save(np.dstack([rgb, np.full((16, 24), 100, np.uint8)]), tmp_path / "rgba.png")
    cv2.imwrite(str(tmp_path / "gray16.png"), np.full((16, 24), 32768, np.uint16))  # 16-bit grayscale
    cv2.imwrite(str(tmp_path / "rgb16.png"), (rgb[..., ::-1].astype(np.uint16) * 257))  # 16-bit colour
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    srcs, lst = load_sources(tmp_path, "bg")
    assert len(srcs) == 6 and lst.skipped["bad"] == 0
    by = {s.id: s.array for s in srcs}
    for name, arr in by.items():
        assert arr.shape == (16, 24, 3) and arr.dtype == np.uint8, name
    assert abs(int(by["gray16"].mean()) - 128) <= 1  # scaled, not clipped to 255
    assert np.abs(by["rgb16"].astype(int) - rgb).max() <= 1
    assert np.array_equal(by["rgba"], rgb)  # alpha dropped, colour kept
    assert np.abs(by["cmyk"].astype(int) - rgb).mean() < 12  # JPEG + CMYK round trip


def test_cutout_modes(tmp_path):
    disc = rgba_disc()
    save(disc, tmp_path / "rgba.png")
    pal = Image.fromarray((disc[..., 3] >= 128).astype(np.uint8), mode="L").convert("P")
    pal.putpalette([0, 0, 0, 250, 40, 40] + [0] * 762)
    save(pal, tmp_path / "pal.png", transparency=0)  # palette index 0 transparent (tRNS)
    save(Image.fromarray(disc).convert("LA"), tmp_path / "la.png")
    cv2.imwrite(str(tmp_path / "rgba16.png"), cv2.cvtColor(disc, cv2.COLOR_RGBA2BGRA).astype(np.uint16) * 257)
    srcs, _ = load_sources(tmp_path, "fg")
    by = {s.id: s.array for s in srcs}
    assert set(by) == {"rgba", "pal", "la", "rgba16"}
    for arr in by.values():
        assert arr.shape == (40, 30, 4) and arr.dtype == np.uint8
    assert np.array_equal(by["rgba"], disc)
    assert np.abs(by["rgba16"].astype(int) - disc).max() <= 1
    assert by["pal"][..., 3].min() == 0 and by["pal"][..., 3].max() == 255


@pytest.mark.parametrize("case", ["no_alpha", "transparent", "one_pixel"])
def test_bad_cutouts_name_the_file(tmp_path, case):
    if case == "no_alpha":
        save(_rgb(), tmp_path / "x.png")
        msg = "no alpha"
    else:
        a = np.zeros((30, 30, 4), np.uint8)
        if case == "one_pixel":
            a[10, 10] = 255
        save(a, tmp_path / "x.png")
        msg = "transparent" if case == "transparent" else "only 1x1"
    with pytest.raises(BadInputError, match=msg) as e:
        load_sources(tmp_path, "fg")
    assert "x.png" in str(e.value) and "\n" not in str(e.value)


def _bad_files(tmp_path):
    jpg = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(jpg, "JPEG", quality=90)
    png = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(png, "PNG")
    return {"trjpg.jpg": jpg.getvalue()[: len(jpg.getvalue()) // 2],
            "trpng.png": png.getvalue()[: len(png.getvalue()) // 2],
            "zero.jpg": b"", "text.png": b"this is not an image\n" * 10}


@pytest.mark.parametrize("name", ["trjpg.jpg", "trpng.png", "zero.jpg", "text.png"])
def test_unreadable_files_raise_naming_the_file(tmp_path, name, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # someone else's global must not hide truncation
    data = _bad_files(tmp_path)[name]
    save(rgba_disc(), tmp_path / "zgood.png")  # good as a background and as a cut-out
    (tmp_path / name).write_bytes(data)
    for kind in ("bg", "fg"):
        with pytest.raises(BadInputError, match=name):
            load_sources(tmp_path, kind)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored
    with pytest.raises(BadInputError, match=name):
        decode_background(tmp_path / name, data)


def test_skip_mode_counts_bad_files(tmp_path):
    for name, data in _bad_files(tmp_path).items():
        (tmp_path / name).write_bytes(data)
    save(_rgb(), tmp_path / "good.jpg")
    save(_rgb(), tmp_path / "plain.png")  # fine as a background, no alpha as a cut-out
    srcs, lst = load_sources(tmp_path, "bg", on_bad="skip")
    assert [s.id for s in srcs] == ["good", "plain"] and lst.skipped["bad"] == 4
    save(rgba_disc(), tmp_path / "disc.png")
    srcs, lst = load_sources(tmp_path, "fg", on_bad="skip")
    assert [s.id for s in srcs] == ["disc"] and lst.skipped["bad"] == 6
    assert "plain.png" in lst.skipped_names


def test_exif_orientation_applied(tmp_path):
    img = Image.fromarray(_rgb(10, 20))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    arr = decode_background(tmp_path / "rot.jpg", (tmp_path / "rot.jpg").read_bytes())
    assert arr.shape == (20, 10, 3)


def test_cutout_decoder_keeps_soft_alpha(tmp_path):
    disc = rgba_disc()
    p = save(disc, tmp_path / "d.png")
    out = decode_cutout(p, p.read_bytes())
    assert len(np.unique(out[..., 3])) > 3  # soft edges preserved, not binarised
