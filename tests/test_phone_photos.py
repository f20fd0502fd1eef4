"""Photos as phones make them (issue 29 item 5): HEIC read with pillow-heif or refused in one line saying how to add it
(never skipped without a CSV row), a shoot paired by order or by a CSV of pairs (and the pairing said), a transparent
fg_bg refused, sizes swapped by a lost EXIF orientation named as a rotation, notebook 05's figure from thumbnails, photos
from Drive paths and the results as a zip to download, and the Colab install adding pillow-heif. Tiny images (32-64 px,
one strip 1040 px long), offline; the HEIC decode test is skipped where pillow-heif is not installed."""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eva_helpers.cli import main
from eva_helpers.errors import BadInputError

HAVE_HEIF = importlib.util.find_spec("pillow_heif") is not None
ROOT = Path(__file__).resolve().parents[1]


def _pair(w: int = 48, h: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A textured w x h photo and the same with a red square pasted on it."""
    from tests._photos import sample_photo

    bg = np.ascontiguousarray(sample_photo("coffee", max(w, h))[:h, :w])
    fg = bg.copy()
    fg[h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 3] = (230, 40, 40)
    return bg, fg


def _fake_heic(path: Path) -> Path:
    """The first bytes of an iPhone HEIC (an ISO-BMFF `ftyp` box, brand heic): enough to be known as one."""
    path.write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64)
    return path


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def _csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return {r["name"]: r for r in csv.DictReader(f)}


def _predict(*args) -> int:
    return main(["predict", *map(str, args)])


def _state(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(root.rglob("*"))}


@pytest.fixture
def no_heif(monkeypatch):
    """pillow-heif taken away for the test (import fails), whether or not it is installed."""
    monkeypatch.setitem(sys.modules, "pillow_heif", None)


@pytest.fixture
def fake_colab(monkeypatch):
    """A `google.colab` whose files.download records what it was given."""
    downloads: list[str] = []
    colab = types.ModuleType("google.colab")
    colab.files = types.SimpleNamespace(download=downloads.append,
                                        upload=lambda: pytest.fail("an upload would wait for the user"))
    google = types.ModuleType("google")
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    return downloads


# ---- HEIC ---------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not HAVE_HEIF, reason="pillow-heif is not installed (pip install 'eva-maskdepth[heic]')")
def test_a_heic_photo_is_read_with_pillow_heif(tmp_path):
    import pillow_heif

    from eva_helpers.data.images import list_images
    from eva_helpers.predict.pair import load_photo

    bg, _ = _pair()
    heif = pillow_heif.from_pillow(Image.fromarray(bg))  # written without registering PIL's opener
    heif.save(tmp_path / "IMG_0101.HEIC", quality=95)
    assert [p.name for p in list_images(tmp_path).files] == ["IMG_0101.HEIC"]  # listed as a photo, not skipped
    img = load_photo(tmp_path / "IMG_0101.HEIC")
    assert img.shape == (32, 48, 3) and img.dtype == np.uint8
    assert np.abs(img.astype(int) - bg).mean() < 12  # lossy, but the same picture


def test_without_pillow_heif_a_heic_photo_is_refused_in_one_line(tmp_path, no_heif):
    from eva_helpers.predict.pair import load_photo

    for name in ("IMG_0101.HEIC", "renamed.jpg"):  # known by its extension, or by its first bytes
        p = _fake_heic(tmp_path / name)
        with pytest.raises(BadInputError) as e:
            load_photo(p)
        msg = str(e.value)
        assert "\n" not in msg and str(p) in msg and "pillow-heif" in msg and "eva-maskdepth[heic]" in msg, msg


def test_the_install_line_names_an_extra_that_setup_defines():
    from eva_helpers.data.images import HEIF_INSTALL

    extra = re.search(r"eva-maskdepth\[(\w+)\]", HEIF_INSTALL).group(1)
    setup = (ROOT / "setup.py").read_text()
    assert re.search(rf'"{extra}": \["pillow-heif', setup), f"setup.py has no {extra!r} extra with pillow-heif"


def test_folder_mode_gives_every_file_a_row_and_a_count(tmp_path, trained_run, no_heif, capsys):
    """A HEIC pair without pillow-heif fails with the install line, a Live Photo's .MOV is not a photo: both are rows
    of alignment.csv and counted in the summary; the JPEG/PNG pair is predicted."""
    bg_dir, fg_dir = tmp_path / "bg", tmp_path / "fg_bg"
    bg_dir.mkdir()
    fg_dir.mkdir()
    bg, fg = _pair()
    Image.fromarray(bg).save(bg_dir / "desk.jpg", quality=95)
    Image.fromarray(fg).save(fg_dir / "desk.png")
    _fake_heic(bg_dir / "IMG_0101.HEIC")
    _fake_heic(fg_dir / "IMG_0101.HEIC")
    (fg_dir / "IMG_0101.MOV").write_bytes(b"\0\0\0\x14ftypqt  ")
    out = tmp_path / "out"
    assert _predict("--run-dir", trained_run, "--bg", bg_dir, "--fg-bg", fg_dir, "--out", out) == 2
    std = capsys.readouterr()
    rows = _csv(out / "alignment.csv")
    assert rows["desk"]["status"] == "ok"
    assert "pillow-heif" in rows["IMG_0101"]["status"] and str(bg_dir / "IMG_0101.HEIC") in rows["IMG_0101"]["status"]
    assert rows["IMG_0101.MOV"]["fg_bg_file"] == "IMG_0101.MOV" and "not a photo" in rows["IMG_0101.MOV"]["status"]
    assert (out / "IMG_0101_mask.png").exists() is False
    summary = next(ln for ln in std.out.splitlines() if ln.startswith("predicted "))
    assert summary.startswith("predicted 1 of 2 pairs (paired by name)") and "1 not a photo" in summary, summary
    assert any("IMG_0101.MOV" in ln for ln in std.err.splitlines()) and "Traceback" not in std.err


# ---- pairing --------------------------------------------------------------------------------------------------------
def _shoot(tmp_path: Path, bg_names: list[str], fg_names: list[str]) -> tuple[Path, Path]:
    bg_dir, fg_dir = tmp_path / "bg", tmp_path / "fg_bg"
    bg_dir.mkdir()
    fg_dir.mkdir()
    bg, fg = _pair()
    for n in bg_names:
        Image.fromarray(bg).save(bg_dir / n)
    for n in fg_names:
        if n.startswith("."):
            (fg_dir / n).write_bytes(b"\0junk")  # macOS junk: silent, neither a pair nor a row
        else:
            Image.fromarray(fg).save(fg_dir / n)
    return bg_dir, fg_dir


def test_pairing_by_order_and_by_a_csv(tmp_path):
    from eva_helpers.predict.folders import match_folders

    # a phone: backgrounds and shots alternate; IMG_9 comes before IMG_10 (numbers by value, not as text)
    bg_dir, fg_dir = _shoot(tmp_path, ["IMG_9.jpg", "IMG_10.jpg"], ["IMG_11.png", "IMG_12.png", ".DS_Store"])
    m = match_folders(bg_dir, fg_dir, "order")
    assert [(n, b.name, f.name) for n, b, f in m.pairs] == [("IMG_11", "IMG_9.jpg", "IMG_11.png"),
                                                           ("IMG_12", "IMG_10.jpg", "IMG_12.png")]
    assert "order" in m.describe() and m.column() == "order"
    (bg_dir / "IMG_13.jpg").write_bytes((bg_dir / "IMG_9.jpg").read_bytes())
    with pytest.raises(BadInputError, match=r"3 photos but .* has 2.*--pair-by PAIRS.csv") as e:
        match_folders(bg_dir, fg_dir, "order")  # one shot missing would shift every pair after it
    assert "\n" not in str(e.value)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("bg,fg_bg,name\nIMG_9.jpg,IMG_11.png,mug\nIMG_9,IMG_12.png\n")  # one bg for two shots
    m = match_folders(bg_dir, fg_dir, pairs)
    assert [(n, b.name, f.name) for n, b, f in m.pairs] == [("IMG_12", "IMG_9.jpg", "IMG_12.png"),
                                                           ("mug", "IMG_9.jpg", "IMG_11.png")]
    assert m.describe() == f"by {pairs}" and m.column() == "pairs.csv"
    assert {r["bg_file"]: r["status"] for r in m.unmatched_rows()} == {"IMG_10.jpg": "not in pairs.csv",
                                                                       "IMG_13.jpg": "not in pairs.csv"}
    bad = {"IMG_9.jpg,IMG_99.png\n": r"line 1: 'IMG_99.png' is not a photo in .*fg_bg",
           "IMG_9.jpg,IMG_11.png\nIMG_10.jpg,IMG_11.png\n": "line 2: IMG_11.png is already paired on line 1",
           "bg,fg_bg\n": "no pairs in it", "IMG_9.jpg\n": "line 1: expected bg,fg_bg"}
    for text, msg in bad.items():
        pairs.write_text(text)
        with pytest.raises(BadInputError, match=msg) as e:
            match_folders(bg_dir, fg_dir, pairs)
        assert str(pairs) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(BadInputError, match="not name, order or a CSV file"):
        match_folders(bg_dir, fg_dir, tmp_path / "nowhere.csv")


def test_eva_predict_pair_by_order_says_so(tmp_path, trained_run, capsys):
    bg_dir, fg_dir = _shoot(tmp_path, ["IMG_0101.jpg", "IMG_0103.jpg"], ["IMG_0102.png", "IMG_0104.png"])
    out = tmp_path / "out"
    assert _predict("--run-dir", trained_run, "--bg", bg_dir, "--fg-bg", fg_dir, "--out", out,
                    "--pair-by", "order") == 0
    std = capsys.readouterr()
    assert "predicted 2 of 2 pairs (paired by order" in std.out and "no partner" not in std.err
    rows = _csv(out / "alignment.csv")
    assert {n: (r["bg_file"], r["paired_by"], r["status"]) for n, r in rows.items()} == {
        "IMG_0102": ("IMG_0101.jpg", "order", "ok"), "IMG_0104": ("IMG_0103.jpg", "order", "ok")}
    assert (out / "IMG_0102_mask.png").is_file() and (out / "IMG_0104_depth.png").is_file()
    # a single pair has nothing to pair: the flag is refused in one line, nothing written
    before = _state(tmp_path)
    assert _predict("--run-dir", trained_run, "--bg", bg_dir / "IMG_0101.jpg", "--fg-bg", fg_dir / "IMG_0102.png",
                    "--out", tmp_path / "one", "--pair-by", "order") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--pair-by" in err and _state(tmp_path) == before


def test_python_api_pairs_by_a_csv(tmp_path, trained_run):
    from eva_helpers.predict.folders import predict_folders

    bg_dir, fg_dir = _shoot(tmp_path, ["room.jpg"], ["cat.png", "dog.png"])
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("room.jpg,cat.png\n")
    said: list[str] = []
    report = predict_folders(trained_run, bg_dir, fg_dir, tmp_path / "out", progress=False, pair_by=pairs,
                             say=said.append)
    assert report.pairs == 1 and not report.failed
    assert "paired by " + str(pairs) in report.summary(tmp_path / "out") and "1 file(s) without a partner" in \
        report.summary(tmp_path / "out")
    rows = _csv(report.csv)
    assert rows["cat"]["paired_by"] == "pairs.csv" and rows["dog"]["status"] == "not in pairs.csv"
    assert any("not in " + str(pairs) in s and "dog.png" in s for s in said)


# ---- a transparent fg_bg, swapped sizes -----------------------------------------------------------------------------
def test_a_transparent_fg_bg_is_refused_in_one_line(tmp_path, trained_run, capsys):
    bg, fg = _pair()
    Image.fromarray(bg).save(tmp_path / "bg.png")
    rgba = np.dstack([fg, np.full(fg.shape[:2], 255, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "opaque.png")  # an alpha channel, all opaque: a photo like any other
    rgba[:, :8, 3] = 0  # a cut-out's transparent margin: no picture there
    Image.fromarray(rgba).save(tmp_path / "cutout.png")
    before = _state(tmp_path)
    assert _predict("--run-dir", trained_run, "--bg", tmp_path / "bg.png", "--fg-bg", tmp_path / "cutout.png",
                    "--out", tmp_path / "o1") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(tmp_path / "cutout.png") in err and "transparent" in err, err
    assert "fg_bg" in err and _state(tmp_path) == before
    Image.fromarray(rgba[:20, :20]).save(tmp_path / "small.png")  # a cut-out is named as one, not as another size
    assert _predict("--run-dir", trained_run, "--bg", tmp_path / "bg.png", "--fg-bg", tmp_path / "small.png",
                    "--out", tmp_path / "o1") == 2
    assert "transparent" in capsys.readouterr().err
    assert _predict("--run-dir", trained_run, "--bg", tmp_path / "bg.png", "--fg-bg", tmp_path / "opaque.png",
                    "--out", tmp_path / "o2") == 0


def test_swapped_sizes_say_that_one_photo_may_be_rotated(tmp_path, trained_run, capsys):
    bg, fg = _pair(48, 32)
    Image.fromarray(np.ascontiguousarray(bg.transpose(1, 0, 2))).save(tmp_path / "bg.png")  # 32x48: turned
    Image.fromarray(fg).save(tmp_path / "fg.png")  # 48x32
    assert _predict("--run-dir", trained_run, "--bg", tmp_path / "bg.png", "--fg-bg", tmp_path / "fg.png",
                    "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "32x48" in err and "48x32" in err and "rotated" in err, err
    Image.fromarray(_pair(40, 32)[0]).save(tmp_path / "other.png")  # another aspect: no talk of rotation
    assert _predict("--run-dir", trained_run, "--bg", tmp_path / "other.png", "--fg-bg", tmp_path / "fg.png",
                    "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "rotated" not in err and "other aspect ratios" in err


def test_notebook_uploads_refuse_transparency_and_name_a_rotation(tmp_path, monkeypatch):
    from eva_helpers.colab.notebook_train import check_upload

    monkeypatch.chdir(tmp_path)
    bg, fg = _pair(40, 30)
    like = check_upload({"room.png": _png(bg)}, "step 1")
    with pytest.raises(BadInputError, match="rotated"):
        check_upload({"turned.png": _png(np.ascontiguousarray(fg.transpose(1, 0, 2)))}, "step 2", like=like)
    rgba = np.dstack([fg, np.full(fg.shape[:2], 255, np.uint8)])
    rgba[:4, :4, 3] = 0
    with pytest.raises(BadInputError, match=r"cutout.png: .*transparent"):
        check_upload({"cutout.png": _png(rgba)}, "step 2", like=like)


# ---- notebook 05: thumbnails, Drive paths, the zip -------------------------------------------------------------------
def _cfg(sample_dataset, trained_run):
    from eva_helpers.training.config import TrainConfig

    return TrainConfig(task="joint", data=str(sample_dataset), run_dir=str(trained_run), model="unet_small", size=32)


def test_notebook_figure_is_drawn_from_thumbnails(sample_dataset, trained_run, capsys):
    """A photo wider than the figure's 1024 px: every panel is handed to matplotlib as a thumbnail (the full-size
    12 MP pair cost 11 s and +740 MB)."""
    import matplotlib.pyplot as plt

    from eva_helpers.colab.notebook_train import predict_photos

    bg, fg = _pair(64, 40)
    bg, fg = (np.ascontiguousarray(np.tile(a, (1, 17, 1))[:, :1040]) for a in (bg, fg))  # 1040 x 40
    fig = predict_photos(_cfg(sample_dataset, trained_run), bg, fg)
    shapes = [im.get_array().shape for ax in fig.axes for im in ax.get_images()]
    plt.close(fig)
    assert len(shapes) == 4 and all(max(s[:2]) <= 1024 for s in shapes), shapes
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(("aligned", "not aligned"))


def test_notebook_reads_photos_from_drive_paths(tmp_path, sample_dataset, capsys):
    from eva_helpers.colab.notebook_train import upload_photo

    bg, fg = _pair()
    Image.fromarray(bg).save(tmp_path / "bg.jpg", quality=95)
    Image.fromarray(fg).save(tmp_path / "fg.png")
    Image.fromarray(np.ascontiguousarray(fg.transpose(1, 0, 2))).save(tmp_path / "turned.png")
    got = upload_photo("step 1", sample_dataset, upload=True, path=str(tmp_path / "bg.jpg"))
    assert got.shape == (32, 48, 3) and str(tmp_path / "bg.jpg") in capsys.readouterr().out
    assert upload_photo("step 2", sample_dataset, like=got, path=tmp_path / "fg.png").shape == got.shape
    with pytest.raises(BadInputError, match="rotated"):
        upload_photo("step 2", sample_dataset, like=got, path=tmp_path / "turned.png")
    with pytest.raises(BadInputError, match="no such file"):
        upload_photo("step 2", sample_dataset, like=got, path=tmp_path / "missing.jpg")


def test_notebook_results_are_zipped_and_downloaded(tmp_path, sample_dataset, trained_run, fake_colab, capsys):
    import matplotlib.pyplot as plt

    from eva_helpers.colab.notebook_train import predict_photos

    bg, fg = _pair()
    fig = predict_photos(_cfg(sample_dataset, trained_run), bg, fg, out=tmp_path / "own", download=True)
    plt.close(fig)
    archive = tmp_path / "own.zip"
    assert fake_colab == [str(archive)]
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == ["alignment.json", "depth.png", "mask.png", "prediction.png"]
        with Image.open(z.open("mask.png")) as m:
            assert m.size == (48, 32)
        assert json.loads(z.read("alignment.json"))["run"] == str(trained_run)
    assert f"results: {archive}" in capsys.readouterr().out


def test_outside_colab_the_zip_is_named(tmp_path, sample_dataset, trained_run, capsys):
    import matplotlib.pyplot as plt

    from eva_helpers.colab.notebook_train import predict_photos

    bg, fg = _pair()
    plt.close(predict_photos(_cfg(sample_dataset, trained_run), bg, fg, out=tmp_path / "own", download=True))
    assert f"results: {tmp_path / 'own.zip'}" in capsys.readouterr().out and (tmp_path / "own.zip").is_file()


def test_notebook_05_offers_paths_and_the_download():
    nb = json.loads((ROOT / "notebooks" / "05_train_joint.ipynb").read_text())
    params = "".join(nb["cells"][1]["source"])
    assert 'BG_PHOTO = ""' in params and 'FG_BG_PHOTO = ""' in params
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert any("path=BG_PHOTO" in c for c in code) and any("path=FG_BG_PHOTO" in c for c in code)
    assert any("predict_photos(" in c and "download=" in c and "out=" in c for c in code)


# ---- the Colab install adds pillow-heif -----------------------------------------------------------------------------
def _install(monkeypatch, returncodes: dict[str, int]):
    """ensure_installed with pip faked: the package install succeeds; pillow-heif's exits with the code given.
    Returns pip's command lines, their constraints files' text, the log and the result."""
    from eva_helpers.colab import install as ci

    state = {"installed": False}
    calls: list[list[str]] = []
    pins: list[str] = []

    def run(cmd, **kw):
        if cmd[1:3] != ["-m", "pip"]:  # git rev-parse, asked where the code came from: nothing known
            return subprocess.CompletedProcess(cmd, 1, "", "")
        calls.append(cmd)
        pins.append(Path(cmd[cmd.index("-c") + 1]).read_text())
        if "eva-maskdepth" in cmd[-1]:
            state["installed"] = True
        return subprocess.CompletedProcess(cmd, returncodes.get(cmd[-1], 0), "", "ERROR: no matching distribution")

    real_find = importlib.util.find_spec
    monkeypatch.setattr(ci.subprocess, "run", run)
    monkeypatch.setattr(ci, "installed", lambda module=ci.MODULE: state["installed"])
    monkeypatch.setattr(ci.importlib.util, "find_spec",
                        lambda name, *a: None if name == "pillow_heif" else real_find(name, *a))
    log: list[str] = []
    ok = ci.ensure_installed("https://example.invalid/eva.git", "main", "/nonexistent", mount=False, log=log.append,
                             optional=ci.OPTIONAL)
    return calls, pins, log, ok


def test_the_colab_install_adds_heic_support_with_pillow_pinned(monkeypatch):
    for name in ("03_train_mask", "05_train_joint"):  # every install cell asks for the optional extras
        cells = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())["cells"]
        assert any('optional=ns["OPTIONAL"]' in "".join(c["source"]) for c in cells if c["cell_type"] == "code")
    calls, pins, _, ok = _install(monkeypatch, {})
    assert ok and [c[-1] for c in calls] == ["eva-maskdepth @ git+https://example.invalid/eva.git@main", "pillow-heif"]
    assert re.search(r"^pillow==", pins[1], re.M) and re.search(r"^numpy==", pins[1], re.M)  # pip may not upgrade Pillow


def test_a_failed_heic_install_is_one_line_not_a_failed_install(monkeypatch):
    calls, _, log, ok = _install(monkeypatch, {"pillow-heif": 1})
    assert ok and len(calls) == 2
    assert any("pillow-heif not installed: HEIC photos" in line and "JPEG" in line for line in log)
