"""Input listing and loading: junk counted, every odd image mode loads, every bad file names itself."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from _build_helpers import rgba_disc, save
from eva_helpers.errors import BadInputError
from eva_helpers.data.images import decode_background, decode_cutout, list_images, load_sources

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


# ---- issue 11 item 7: `eva predict` reads photos exactly as `eva build` does -------------------------------------
def _mode_files(folder):
    """name -> a tiny image file of that mode / bit depth (written with PIL or OpenCV)."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = _rgb(12, 18, seed=3)
    disc = rgba_disc(12, 18)
    ramp16 = (np.arange(12 * 18, dtype=np.uint32).reshape(12, 18) * 303).astype(np.uint16)  # 0..65 k
    pal = Image.fromarray(rgb).convert("P")
    exif_img = Image.fromarray(rgb)
    exif = exif_img.getexif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees
    files = {
        "rgb.jpg": lambda p: save(rgb, p, quality=95),
        "gray.png": lambda p: save(Image.fromarray(rgb).convert("L"), p),
        "la.png": lambda p: save(Image.fromarray(disc).convert("LA"), p),
        "pal_t.png": lambda p: save(pal, p, transparency=3),
        "rgba.png": lambda p: save(disc, p),
        "rgba.webp": lambda p: save(disc, p, format="WEBP", lossless=True),
        "cmyk.jpg": lambda p: save(Image.fromarray(rgb).convert("CMYK"), p, quality=95),
        "bilevel.png": lambda p: save(Image.fromarray(rgb).convert("1"), p),
        "gray16.png": lambda p: cv2.imwrite(str(p), ramp16),
        "dark16.png": lambda p: cv2.imwrite(str(p), (ramp16 // 300).astype(np.uint16)),  # 16-bit, all <= 218
        "rgb16.png": lambda p: cv2.imwrite(str(p), rgb[..., ::-1].astype(np.uint16) * 257),
        "exif.jpg": lambda p: exif_img.save(p, exif=exif.tobytes(), quality=95),
    }
    out = {}
    for name, write in files.items():
        sub = folder / name.replace(".", "_")  # one file per folder: load_sources reads whole folders
        sub.mkdir()
        write(sub / name)
        out[name] = sub / name
    return out, ramp16


def test_predict_reads_every_mode_exactly_as_build(tmp_path):
    from eva_helpers.predict.pair import load_photo

    files, ramp16 = _mode_files(tmp_path)
    assert Image.open(files["gray16.png"]).mode.startswith("I") and Image.open(files["cmyk.jpg"]).mode == "CMYK"
    assert Image.open(files["pal_t.png"]).mode == "P" and Image.open(files["la.png"]).mode == "LA"
    for name, path in files.items():
        (src,), _ = load_sources(path.parent, "bg")  # what `eva build` decodes
        built = src.array
        predicted = load_photo(path)  # what `eva predict` decodes
        assert predicted.dtype == np.uint8 and predicted.shape == built.shape and built.shape[2] == 3, name
        assert np.array_equal(predicted, built), name
    gray16 = load_photo(files["gray16.png"])
    assert np.array_equal(gray16[..., 0], np.round(ramp16 / 257.0).astype(np.uint8))  # scaled, never clipped
    dark16 = load_photo(files["dark16.png"])  # a dark 16-bit photo stays dark (its scale is its bit depth)
    assert dark16.max() <= 1
    assert load_photo(files["exif.jpg"]).shape == (18, 12, 3)  # EXIF orientation honoured by both


def _png_header_only(w: int, h: int) -> bytes:
    import struct
    import zlib

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [30_000, 10_000])  # over PIL's hard limit (an error) and its warning zone
def test_a_decompression_bomb_is_one_line_naming_the_file_in_build_and_predict(tmp_path, side):
    from eva_helpers.errors import EvaError
    from eva_helpers.predict.pair import load_photo

    p = tmp_path / "huge.png"
    p.write_bytes(_png_header_only(side, side))  # 200 bytes claiming 100-900 megapixels
    for kind in ("bg", "fg"):
        with pytest.raises(BadInputError, match="huge.png") as e:
            load_sources(tmp_path, kind)
        assert "\n" not in str(e.value) and "pixels" in str(e.value)
    with pytest.raises(EvaError, match="huge.png") as e:
        load_photo(p)
    assert "\n" not in str(e.value) and "pixels" in str(e.value)


def test_the_pixel_limit_is_one_setting_for_build_and_predict(tmp_path, monkeypatch):
    from eva_helpers.data import images
    from eva_helpers.errors import EvaError
    from eva_helpers.predict.pair import load_photo

    p = save(_rgb(40, 40), tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 1000, raising=False)
    with pytest.raises(BadInputError, match="big.png.*1600 pixels"):
        load_sources(tmp_path, "bg")
    with pytest.raises(EvaError, match="big.png.*1600 pixels"):
        load_photo(p)


@pytest.mark.parametrize("name", ["notes.jpg", "notes.png"])
def test_a_text_file_named_like_an_image_says_so_naming_it(tmp_path, name):
    from eva_helpers.errors import EvaError
    from eva_helpers.predict.pair import load_photo

    p = tmp_path / name
    p.write_text("this is a shopping list, not a photo\n" * 3)
    with pytest.raises(BadInputError) as e:
        load_sources(tmp_path, "bg")
    with pytest.raises(EvaError) as e2:
        load_photo(p)
    for msg in (str(e.value), str(e2.value)):
        assert msg.startswith(str(p)) and "is not an image" in msg and "BytesIO" not in msg and "\n" not in msg


def test_predict_names_a_missing_file_or_a_folder(tmp_path):
    from eva_helpers.errors import EvaError
    from eva_helpers.predict.pair import load_photo

    with pytest.raises(EvaError, match="no such file"):
        load_photo(tmp_path / "missing.jpg")
    with pytest.raises(EvaError, match=str(tmp_path)):
        load_photo(tmp_path)


@pytest.mark.parametrize("fmt", ["WEBP", "PNG"])
def test_an_animated_image_is_refused_naming_the_file_and_its_frames(tmp_path, fmt):
    from eva_helpers.data.images import read_image

    frames = [Image.new("RGB", (32, 24), c) for c in ((200, 0, 0), (0, 200, 0), (0, 0, 200))]
    path = tmp_path / f"anim.{fmt.lower()}"
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(BadInputError) as e:
        read_image(path)
    msg = str(e.value)
    assert str(path) in msg and "3 frames" in msg and "\n" not in msg
    still = tmp_path / f"still.{fmt.lower()}"
    frames[0].save(still, format=fmt)
    assert read_image(still).shape == (24, 32, 3)


def test_a_greyscale_bg_beside_a_colour_fg_bg_is_one_line_naming_both(tmp_path):
    from eva_helpers.data.images import check_same_kind

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, (24, 32), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "bg.png")
    Image.fromarray(np.repeat(grey[..., None], 3, 2)).save(tmp_path / "fg_bg.png")
    Image.fromarray(grey).save(tmp_path / "grey2.jpg")
    check_same_kind(tmp_path / "bg.png", tmp_path / "grey2.jpg")  # both grey: fine
    with pytest.raises(BadInputError) as e:
        check_same_kind(tmp_path / "bg.png", tmp_path / "fg_bg.png")
    msg = str(e.value)
    assert "bg.png is greyscale" in msg and "fg_bg.png is in colour" in msg and "\n" not in msg
