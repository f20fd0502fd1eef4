"""`eva predict` on folders (a shoot): pairs matched by file name, junk skipped, a damaged pair named and skipped
(exit 2 at the end), alignment.csv, photos of different sizes, --no-align, nothing written outside --out, and every
mask and depth map byte-identical to the single-pair command's. Tiny and offline (32-160 px, the tiny trained run)."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eva_helpers.cli import main


def _state(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(root.rglob("*"))}


def _csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return {r["name"]: r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def pairs(sample_dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    """Four (bg, fg_bg) pairs of the 32 px sample with an object in them."""
    from eva_helpers.data.dataset import ShardDataset

    ds = ShardDataset(sample_dataset)
    out = []
    for i in range(0, len(ds), 37):
        s = ds[i]
        if s["mask"].sum() > 20:
            out.append((s["bg"], s["fg_bg"]))
        if len(out) == 4:
            return out
    raise AssertionError("the sample has too few objects")


def _shaken_pair() -> tuple[np.ndarray, np.ndarray]:
    """A textured 160x120 photo, the bg shot 3 px right and 2 px down of the fg_bg, and a square pasted on fg_bg:
    something for the alignment to find."""
    from eva_helpers.paths import sample_assets

    big = np.asarray(Image.open(sample_assets() / "bg" / "coffee.jpg").convert("RGB").resize((172, 130)))
    fg_bg = big[5:125, 6:166].copy()
    bg = big[3:123, 3:163].copy()
    fg_bg[40:80, 60:100] = (230, 40, 40)
    return bg, fg_bg


@pytest.fixture
def shoot(tmp_path, pairs) -> tuple[Path, Path]:
    """bg/ and fg_bg/ folders: pairs of different sizes and formats (bg .jpg with fg_bg .png), a name without a
    partner on each side, and Drive/macOS junk."""
    bg_dir, fg_dir = tmp_path / "shoot" / "bg", tmp_path / "shoot" / "fg_bg"
    bg_dir.mkdir(parents=True)
    fg_dir.mkdir()
    sizes = {"kitchen": (32, 32), "garden": (48, 40), "desk": (64, 64), "hall": (40, 56)}
    for (name, wh), (bg, fg) in zip(sizes.items(), pairs):
        Image.fromarray(bg).resize(wh).save(bg_dir / f"{name}.jpg", quality=95)
        Image.fromarray(fg).resize(wh).save(fg_dir / f"{name}.png")
    bg, fg = _shaken_pair()
    Image.fromarray(bg).save(bg_dir / "shaken.png")
    Image.fromarray(fg).save(fg_dir / "shaken.png")
    Image.fromarray(pairs[0][0]).save(bg_dir / "lonely.jpg")
    Image.fromarray(pairs[0][1]).save(fg_dir / "stray.png")
    for d in (bg_dir, fg_dir):
        for junk in (".DS_Store", "Thumbs.db", "desktop.ini", "._kitchen.jpg"):
            (d / junk).write_bytes(b"\0junk")
        (d / "sub").mkdir()
    return bg_dir, fg_dir


@pytest.fixture
def run(tmp_path, trained_run) -> Path:
    """A copy of the tiny run with a calibration that opens/closes the mask (the post-processing path both commands
    must share); the session's run is left as it was."""
    dst = tmp_path / "run"
    shutil.copytree(trained_run, dst)
    (dst / "calibration.json").write_text(json.dumps({"threshold": 0.45, "morph": True, "chosen_on": "val"}))
    return dst


def _predict(*args: str) -> int:
    return main(["predict", *map(str, args)])


@pytest.mark.slow  # every pair of a shoot predicted twice
def test_folders_match_by_name_and_equal_the_single_pair_command(tmp_path, shoot, run, capsys):
    bg_dir, fg_dir = shoot
    out = tmp_path / "out"
    before = _state(tmp_path / "shoot")
    assert _predict("--run-dir", run, "--bg", bg_dir, "--fg-bg", fg_dir, "--out", out, "--batch-size", "2") == 0
    std = capsys.readouterr()
    assert _state(tmp_path / "shoot") == before  # inputs only read
    unmatched = [ln for ln in std.err.splitlines() if "no partner" in ln]
    assert len(unmatched) == 1 and "lonely.jpg" in unmatched[0] and "stray.png" in unmatched[0]
    assert ".DS_Store" not in std.err + std.out and "Thumbs.db" not in std.err + std.out
    assert "predicted 5 of 5 pairs" in std.out and "alignment: " in std.out
    names = ["desk", "garden", "hall", "kitchen", "shaken"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{n}_{k}.png" for n in names for k in ("mask", "depth")] + ["alignment.csv"])
    rows = _csv(out / "alignment.csv")
    assert sorted(rows) == sorted(names + ["lonely", "stray"])
    assert rows["lonely"]["status"] == "no partner in --fg-bg" and rows["stray"]["status"] == "no partner in --bg"
    for name in names:
        r = rows[name]
        assert r["status"] == "ok" and r["fg_bg_file"] == f"{name}.png"
        assert r["bg_file"] == (f"{name}.png" if name == "shaken" else f"{name}.jpg")
        with Image.open(bg_dir / r["bg_file"]) as im:
            assert (int(r["width"]), int(r["height"])) == im.size
        with Image.open(out / f"{name}_mask.png") as m, Image.open(out / f"{name}_depth.png") as d:
            assert m.size == d.size == im.size and m.mode == "L" and d.mode.startswith("I")  # 8-bit, 16-bit
        # the single-pair command on the same two files: the same bytes, the same alignment
        single = tmp_path / "single" / name
        assert _predict("--run-dir", run, "--bg", bg_dir / r["bg_file"], "--fg-bg", fg_dir / r["fg_bg_file"],
                        "--out", single) == 0
        line = capsys.readouterr().out.splitlines()[0]
        assert line.startswith(("aligned: ", "not aligned: "))
        assert (single / "mask.png").read_bytes() == (out / f"{name}_mask.png").read_bytes(), name
        assert (single / "depth.png").read_bytes() == (out / f"{name}_depth.png").read_bytes(), name
        rec = json.loads((single / "alignment.json").read_text())
        assert rec["summary"] == line
        assert str(rec["applied"]) == r["align_applied"] and float(r["align_dx"]) == pytest.approx(rec["dx"])
    assert rows["shaken"]["align_applied"] == "True"  # 3 px of shake on a textured photo is registered
    assert float(rows["shaken"]["align_dx"]) == pytest.approx(-3, abs=0.5)


def test_a_damaged_pair_is_named_and_the_rest_are_written(tmp_path, shoot, run, capsys):
    bg_dir, fg_dir = shoot
    data = (fg_dir / "garden.png").read_bytes()
    (fg_dir / "garden.png").write_bytes(data[: len(data) // 3])  # truncated
    Image.new("RGB", (33, 32)).save(bg_dir / "kitchen.jpg")  # another size than its fg_bg
    out = tmp_path / "out"
    assert _predict("--run-dir", run, "--bg", bg_dir, "--fg-bg", fg_dir, "--out", out) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    skipped = [ln for ln in err.splitlines() if ln.startswith("skipped ")]
    assert len(skipped) == 2
    assert any(str(fg_dir / "garden.png") in ln for ln in skipped)
    assert any(str(bg_dir / "kitchen.jpg") in ln and "same size" in ln for ln in skipped)
    assert err.strip().splitlines()[-1] == f"eva predict: error: 2 of 5 pairs failed: see {out / 'alignment.csv'}"
    rows = _csv(out / "alignment.csv")
    assert [rows[n]["status"] for n in ("desk", "hall", "shaken")] == ["ok"] * 3
    assert str(fg_dir / "garden.png") in rows["garden"]["status"] and "same size" in rows["kitchen"]["status"]
    for n in ("desk", "hall", "shaken"):
        assert (out / f"{n}_mask.png").is_file() and (out / f"{n}_depth.png").is_file()
    assert not list(out.glob("garden_*")) and not list(out.glob("kitchen_*"))


def test_a_decompression_bomb_is_one_pair_failing(tmp_path, shoot, run, capsys):
    import struct
    import zlib

    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))
    bg_dir, fg_dir = shoot
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\0" * 90001 * 4)) + chunk(b"IEND", b""))
    (bg_dir / "desk.jpg").unlink()
    (bg_dir / "desk.png").write_bytes(png)
    out = tmp_path / "out"
    assert _predict("--run-dir", run, "--bg", bg_dir, "--fg-bg", fg_dir, "--out", out) == 2
    err = capsys.readouterr().err
    assert any(ln.startswith("skipped desk: ") and "decompression bomb" in ln for ln in err.splitlines())
    assert "1 of 5 pairs failed" in err and len(list(out.glob("*_mask.png"))) == 4


def test_no_align_leaves_bg_as_it_is(tmp_path, shoot, run, capsys):
    from eva_helpers.predict.pair import NO_ALIGN_REASON

    bg_dir, fg_dir = shoot
    out = tmp_path / "out"
    assert _predict("--run-dir", run, "--bg", bg_dir, "--fg-bg", fg_dir, "--out", out, "--no-align") == 0
    assert "alignment: 0 of 5 pairs registered, 0 tone-matched" in capsys.readouterr().out
    rows = _csv(out / "alignment.csv")
    assert all(r["align_applied"] == "False" and r["align_reason"] == NO_ALIGN_REASON
               for r in rows.values() if r["status"] == "ok")
    assert sum(r["status"] == "ok" for r in rows.values()) == 5
    single = tmp_path / "single"
    assert _predict("--run-dir", run, "--bg", bg_dir / "shaken.png", "--fg-bg", fg_dir / "shaken.png", "--out",
                    single, "--no-align") == 0
    assert capsys.readouterr().out.splitlines()[0] == f"not aligned: {NO_ALIGN_REASON}"
    assert json.loads((single / "alignment.json").read_text())["reason"] == NO_ALIGN_REASON
    assert (single / "mask.png").read_bytes() == (out / "shaken_mask.png").read_bytes()


def test_nothing_is_written_outside_out(tmp_path, shoot, run, capsys):
    out = tmp_path / "results" / "out"
    before = _state(tmp_path)
    assert _predict("--run-dir", run, "--bg", shoot[0], "--fg-bg", shoot[1], "--out", out) == 0
    after = _state(tmp_path)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed and all(k == "results" or k.startswith("results/out") for k in changed), sorted(changed)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_folder_mode_refusals_are_one_line_and_write_nothing(tmp_path, shoot, run, capsys):
    bg_dir, fg_dir = shoot
    empty = tmp_path / "other"
    empty.mkdir()
    Image.new("RGB", (32, 32)).save(empty / "nobody.png")
    cases = [
        (["--bg", bg_dir, "--fg-bg", fg_dir / "desk.png", "--out", tmp_path / "o1"], str(bg_dir)),  # folder + file
        (["--bg", bg_dir, "--fg-bg", empty, "--out", tmp_path / "o2"], "no file name is in both"),
        (["--bg", bg_dir, "--fg-bg", fg_dir, "--out", bg_dir / "out"], "inside the input folder"),
        (["--bg", bg_dir, "--fg-bg", fg_dir, "--out", tmp_path / "o3", "--batch-size", "0"], "--batch-size"),
    ]
    for args, named in cases:
        before = _state(tmp_path)
        assert _predict("--run-dir", run, *args) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and named in err and "Traceback" not in err, err
        assert _state(tmp_path) == before


def test_notebook_own_photos_says_what_alignment_did(sample_dataset, trained_run, capsys):
    """Notebook 05's "your own photos" step prints the alignment's one line before its figure."""
    from eva_helpers.training.config import TrainConfig
    from eva_helpers.colab.notebook_train import predict_photos

    bg, fg_bg = _shaken_pair()
    cfg = TrainConfig(task="joint", data=str(sample_dataset), run_dir=str(trained_run), model="unet_small", size=32)
    fig = predict_photos(cfg, bg, fg_bg)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("aligned: shift (-3.0, -2.0) px") and "confidence" in line, line
    assert fig is not None


def test_a_copy_of_bg_at_another_size_is_brought_to_fg_bgs_size(tmp_path, run):
    """A chat app's smaller copy of one photo (same aspect) is one frame: bg is resized to fg_bg's size (the masks
    belong to fg_bg) and the CSV says so; another aspect stays a one-line refusal."""
    bg, fg = _shaken_pair()  # 160 x 120
    bg_dir, fg_dir = tmp_path / "bg", tmp_path / "fg"
    bg_dir.mkdir()
    fg_dir.mkdir()
    Image.fromarray(bg).resize((80, 60), Image.LANCZOS).save(bg_dir / "copy.png")
    Image.fromarray(fg).save(fg_dir / "copy.png")
    Image.fromarray(bg).resize((80, 70)).save(bg_dir / "other.png")
    Image.fromarray(fg).save(fg_dir / "other.png")
    out = tmp_path / "out"
    assert _predict("--run-dir", run, "--bg", bg_dir, "--fg-bg", fg_dir, "--out", out) == 2  # "other" failed
    rows = _csv(out / "alignment.csv")
    assert rows["copy"]["status"] == "ok" and rows["copy"]["bg_resized"] == "bg 80x60 resized to fg_bg's 160x120"
    assert Image.open(out / "copy_mask.png").size == (160, 120)
    assert "other aspect ratios" in rows["other"]["status"] and "\n" not in rows["other"]["status"]
