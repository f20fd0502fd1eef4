"""build_dataset: byte-reproducible, resumable after SIGKILL, verified manifest, labels consistent with provenance."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from _build_helpers import (all_bytes, build_killed_at_shard, folder_state, object_contrast, placed_alpha, read_shard,
                            sample_inputs)
from eva_helpers.data import formats
from eva_helpers.atomic import TMP_PREFIX, sha256_file
from eva_helpers.compositing.build import BuildConflictError, build_dataset
from eva_helpers.errors import BadInputError, EvaError
from eva_helpers.data.images import load_sources
from eva_helpers.compositing.labels import MIN_CONTRAST, layer_object

pytestmark = pytest.mark.timeout(120)
KW = dict(size=48, positions=2, seed=0, shard_size=10, workers=1, progress=False)  # 3*3*2*2 = 36 samples, 4 shards


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return sample_inputs(tmp_path_factory.mktemp("in"))


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    """An uninterrupted build every other build is compared with."""
    out = tmp_path_factory.mktemp("ref") / "ds"
    build_dataset(*inputs, out, **KW)
    return out


def test_layout_counts_and_manifest_checksums(reference):
    m = formats.read_manifest(reference)
    assert m["complete"] is True and m["params"]["seed"] == 0 and m["params"]["teacher"] == "geometric"
    assert m["counts"]["samples"] == 36 and m["counts"]["backgrounds"] == 3 and m["counts"]["foregrounds"] == 3
    assert m["counts"]["skipped_bg"]["junk"] == 1 and m["counts"]["skipped_fg"]["junk"] == 1
    assert [e["first_index"] for e in m["shards"]] == [0, 10, 20, 30]
    assert [e["samples"] for e in m["shards"]] == [10, 10, 10, 6]
    for e in m["shards"] + [m["backgrounds"]]:
        p = reference / e["file"]
        assert sha256_file(p) == e["sha256"] and p.stat().st_size == e["bytes"]
    assert sorted(p.name for p in reference.iterdir()) == [  # the fence file: the number of the last build's lease
        ".eva-lease-fence", "backgrounds.zip", "index.npz", "manifest.json", "shards"]
    rows, zf = read_shard(reference / m["shards"][3]["file"])
    assert [r["index"] for r in rows] == list(range(30, 36))
    sid = formats.sample_id(30)
    assert zf.namelist()[:3] == [f"fg_bg/{sid}.jpg", f"mask/{sid}.png", f"depth/{sid}.png"]
    assert zf.namelist()[-1] == formats.INDEX and len(zf.namelist()) == 3 * 6 + 1
    assert set(rows[0]) == {"id", "index", "bg_id", "fg_id", "flip", "scale", "x", "y", "w", "h", "depth_min",
                            "depth_max"}
    bg_rows = formats.read_jsonl(zipfile.ZipFile(reference / formats.BACKGROUNDS).read(formats.INDEX))
    assert [r["kind"] for r in bg_rows] == ["bg"] * 3 + ["fg"] * 3 and all(len(r["sha256"]) == 64 for r in bg_rows)


def test_same_seed_is_byte_identical_and_workers_do_not_matter(inputs, reference, tmp_path):
    build_dataset(*inputs, tmp_path / "a", **KW)
    build_dataset(*inputs, tmp_path / "b", **{**KW, "workers": 2})
    ref = all_bytes(reference)
    assert all_bytes(tmp_path / "a") == ref
    assert all_bytes(tmp_path / "b") == ref
    build_dataset(*inputs, tmp_path / "c", **{**KW, "seed": 1})
    assert all_bytes(tmp_path / "c")["shards/shard-00000.zip"] != ref["shards/shard-00000.zip"]


def test_labels_match_provenance(inputs, reference):
    """mask == placed alpha re-derived from the source cut-out; fg_bg == bg outside it; layered depth as documented."""
    fgs = {s.id: s.array for s in load_sources(inputs[1], "fg")[0]}
    bgz = zipfile.ZipFile(reference / formats.BACKGROUNDS)
    m = formats.read_manifest(reference)
    n_far = 0
    for e in m["shards"]:
        rows, zf = read_shard(reference / e["file"])
        for r in rows:
            bg = formats.decode_image(bgz.read(formats.member("bg", r["bg_id"])))
            bg_depth = formats.decode_depth(bgz.read(formats.member("bg_depth", r["bg_id"])))
            fg_bg = formats.decode_image(zf.read(formats.member("fg_bg", r["id"])))
            mask = formats.decode_mask(zf.read(formats.member("mask", r["id"])))
            depth = formats.decode_depth(zf.read(formats.member("depth", r["id"])))
            x, y, w, h = r["x"], r["y"], r["w"], r["h"]
            expect = np.zeros_like(mask)
            expect[y:y + h, x:x + w] = placed_alpha(fgs[r["fg_id"]], r["flip"], w, h, m["params"]["size"])
            assert np.array_equal(mask, expect)
            out = mask == 0
            bg_jpeg = formats.decode_image(formats.encode_jpeg(bg, 95))  # the same photo through the same codec
            jpeg_err = np.abs(bg_jpeg[out].astype(float) - bg[out]).mean()
            assert np.abs(fg_bg[out].astype(float) - bg[out]).mean() < jpeg_err + 1.0  # no worse than JPEG itself
            far = np.ones_like(out)  # pixels whose 16 px JPEG blocks and their neighbours never see the object
            far[max(0, (y // 16 - 1) * 16):(y + h + 15) // 16 * 16 + 16, max(0, (x // 16 - 1) * 16):
                (x + w + 15) // 16 * 16 + 16] = False
            assert np.array_equal(fg_bg[far], bg_jpeg[far])
            n_far += int(far.sum())
            obj = mask >= formats.MASK_THRESHOLD
            assert np.array_equal(depth[~obj], bg_depth[~obj])
            # the object stands on the bg map as teachers.layer_object says, and never vanishes into it
            assert np.allclose(depth[obj], layer_object(bg_depth, obj)[obj], atol=1 / formats.DEPTH_MAX)
            assert abs(object_contrast(depth, obj)) >= MIN_CONTRAST - 1e-4
            assert r["depth_min"] < r["depth_max"]
    assert n_far > 1000  # the exact check above did run on real pixels


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_band_png_encoder_is_lossless(dtype):
    from eva_helpers.data.formats import BandPNG

    rng = np.random.default_rng(0)
    top = np.iinfo(dtype).max
    base = rng.integers(0, top, (37, 29), dtype=dtype, endpoint=True)
    enc = BandPNG(base)
    for _ in range(20):
        y0 = int(rng.integers(0, 37))
        y1 = int(rng.integers(y0 + 1, 38))
        img = base.copy()
        img[y0:y1] = rng.integers(0, top, (y1 - y0, 29), dtype=dtype, endpoint=True)
        back = formats.decode_image(enc.encode(img, y0, y1))
        assert back.dtype == dtype and np.array_equal(back, img)


def test_per_composite_mode_and_limit(inputs, tmp_path):
    m = build_dataset(*inputs, tmp_path / "pc", **{**KW, "mode": "per-composite", "limit": 13})
    assert m["counts"]["samples"] == 13 and [e["samples"] for e in m["shards"]] == [10, 3]
    rows, zf = read_shard(tmp_path / "pc" / m["shards"][1]["file"])
    bgz = zipfile.ZipFile(tmp_path / "pc" / formats.BACKGROUNDS)
    bg_rows = {b["bg_id"]: b for b in formats.read_jsonl(bgz.read(formats.INDEX)) if b["kind"] == "bg"}
    for r in rows:
        d = formats.decode_depth(zf.read(formats.member("depth", r["id"])))
        obj = formats.decode_mask(zf.read(formats.member("mask", r["id"]))) >= formats.MASK_THRESHOLD
        bg_d = formats.decode_depth(bgz.read(formats.member("bg_depth", r["bg_id"])))
        # aligned to the background's map at build time: its normalisation, and close to it off the object
        assert (r["depth_min"], r["depth_max"]) == (bg_rows[r["bg_id"]]["depth_min"], bg_rows[r["bg_id"]]["depth_max"])
        assert np.abs(d[~obj] - bg_d[~obj]).mean() < 0.02
        assert abs(object_contrast(d, obj)) >= MIN_CONTRAST - 1e-4
    # teacher batches of 3 inside shards of 10: same bytes (batching is not a build parameter)
    build_dataset(*inputs, tmp_path / "pc3", **{**KW, "mode": "per-composite", "limit": 13,
                                               "teacher_kwargs": {"batch_size": 3}})
    assert all_bytes(tmp_path / "pc3") == all_bytes(tmp_path / "pc")


def test_inputs_never_modified(inputs, tmp_path):
    before = [folder_state(f) for f in inputs]
    build_dataset(*inputs, tmp_path / "x", **{**KW, "limit": 5})
    assert [folder_state(f) for f in inputs] == before


def test_refusals(inputs, reference, tmp_path):
    with pytest.raises(BuildConflictError, match="different parameters.*seed"):
        build_dataset(*inputs, reference, **{**KW, "seed": 9})
    with pytest.raises(BuildConflictError, match="positions"):
        build_dataset(*inputs, reference, **{**KW, "positions": 3})
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.docx").write_bytes(b"precious")
    with pytest.raises(BuildConflictError, match="not empty"):
        build_dataset(*inputs, foreign, **KW)
    assert (foreign / "thesis.docx").read_bytes() == b"precious"
    # same parameters, different input images: refused too
    bg2, fg2 = sample_inputs(tmp_path / "in2")
    (fg2 / "zebra.png").unlink()
    with pytest.raises(BuildConflictError, match="different input"):
        build_dataset(bg2, fg2, reference, **KW)


def test_bad_inputs_error_or_skip(tmp_path):
    bg, fg = sample_inputs(tmp_path / "in", n_bg=2, n_fg=2)
    (bg / "broken.jpg").write_bytes((bg / "coffee.jpg").read_bytes()[:3000])  # truncated download
    with pytest.raises(BadInputError, match="broken.jpg"):
        build_dataset(bg, fg, tmp_path / "out", **KW)
    assert not (tmp_path / "out" / formats.MANIFEST).exists()
    m = build_dataset(bg, fg, tmp_path / "out", **{**KW, "on_bad": "skip"})
    assert m["counts"]["backgrounds"] == 2 and m["counts"]["skipped_bg"]["bad"] == 1
    assert "broken.jpg" in m["skipped"]["bg"]


def test_cutout_larger_than_background(tmp_path):
    from _build_helpers import rgba_disc, save

    bg, fg = tmp_path / "bg", tmp_path / "fg"
    bg.mkdir()
    fg.mkdir()
    save(np.full((20, 30, 3), 90, np.uint8), bg / "small.png")  # tiny photo, upscaled to 48
    save(rgba_disc(400, 300), fg / "huge.png")
    m = build_dataset(bg, fg, tmp_path / "out", **KW)
    rows, _ = read_shard(tmp_path / "out" / m["shards"][0]["file"])
    assert len(rows) == 4 and all(r["h"] <= 0.7 * 48 + 1 and r["x"] + r["w"] <= 48 for r in rows)  # flips, positions


def test_resume_skips_verified_and_rebuilds_damaged(inputs, reference, tmp_path):
    out = tmp_path / "r"
    build_dataset(*inputs, out, **KW)
    shard1 = out / "shards" / "shard-00001.zip"
    data = bytearray(shard1.read_bytes())
    data[100] ^= 0xFF
    shard1.write_bytes(bytes(data))  # damaged
    (out / "shards" / "shard-00003.zip").unlink()  # missing
    keep = (out / "shards" / "shard-00000.zip").stat().st_mtime_ns
    (out / "shards" / f"{TMP_PREFIX}shard-00002.zip.abc123").write_bytes(b"half a shard")
    build_dataset(*inputs, out, **KW)
    assert all_bytes(out) == all_bytes(reference)
    assert (out / "shards" / "shard-00000.zip").stat().st_mtime_ns == keep  # verified, not rewritten


def test_resume_does_not_rehash_shards_it_wrote(inputs, tmp_path, monkeypatch):
    """A resumed 400k build must not re-read 20 GB before going on: shards are recorded (size, mtime, ctime, inode) as
    they are written, so a resume stats them; one touched since is hashed again (and rebuilt if it changed)."""
    import eva_helpers.data.verify as verify

    monkeypatch.setenv("EVA_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "r"
    build_dataset(*inputs, out, **KW)
    hashed = []
    real = verify.sha256_file
    monkeypatch.setattr(verify, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    build_dataset(*inputs, out, **KW)
    assert hashed == []
    os.utime(out / "shards" / "shard-00002.zip")  # touched: the record no longer vouches for it
    build_dataset(*inputs, out, **KW)
    assert hashed == ["shard-00002.zip"]


def test_crash_before_first_shard_resumes(inputs, reference, tmp_path, monkeypatch):
    import eva_helpers.compositing.build as build_mod

    def boom(*a, **k):
        raise RuntimeError("killed while the teacher runs")

    with monkeypatch.context() as mp:  # the teacher loads (before the claim), then dies on the backgrounds
        mp.setattr(build_mod, "normalise", boom)
        with pytest.raises(RuntimeError):
            build_dataset(*inputs, tmp_path / "d", **KW)
    assert formats.read_manifest(tmp_path / "d")["complete"] is False  # the folder is claimed as ours
    build_dataset(*inputs, tmp_path / "d", **KW)
    assert all_bytes(tmp_path / "d") == all_bytes(reference)


def test_a_teacher_that_cannot_load_claims_nothing(inputs, tmp_path, monkeypatch):
    """A teacher that fails to load (a missing package, a typo in its folder) must not claim the output folder, or the
    corrected command would be refused as a build with other parameters."""
    import eva_helpers.compositing.build as build_mod

    def boom(*a, **k):
        raise EvaError("cannot load depth model 'x'")

    with monkeypatch.context() as mp:
        mp.setattr(build_mod, "get_teacher", boom)
        with pytest.raises(EvaError):
            build_dataset(*inputs, tmp_path / "d", **{**KW, "teacher_kwargs": {"model_dir": "/nowhere"}})
    assert not (tmp_path / "d").exists()
    build_dataset(*inputs, tmp_path / "d", **KW)
    assert formats.read_manifest(tmp_path / "d")["complete"] is True


_KILL_SCRIPT = """
import sys
from eva_helpers.compositing.build import build_dataset
build_dataset(sys.argv[1], sys.argv[2], sys.argv[3], size=64, positions=6, seed=0, shard_size=2, workers=1,
              progress=False)
"""


@pytest.mark.slow
def test_sigkill_mid_build_then_resume_is_byte_identical(inputs, tmp_path):
    """Kill a real build process at random moments; each rerun must end byte-identical to an uninterrupted one.

    Every kill must land mid-build (the process still running, the manifest incomplete): a build that finished before
    its kill tested nothing, so the sequence starts over from an empty folder with earlier moments (bounded)."""
    import shutil

    kw = dict(size=64, positions=6, seed=0, shard_size=2, workers=1, progress=False)  # 108 samples, 54 shards
    ref = tmp_path / "ref"
    t0 = time.perf_counter()
    build_dataset(*inputs, ref, **kw)
    t_build = time.perf_counter() - t0  # how long the shard loop takes on this machine, roughly
    n_shards = len(formats.read_manifest(ref)["shards"])
    out = tmp_path / "killed"
    manifest = out / formats.MANIFEST
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    rng = random.Random(1234)
    scale, landed, log = 0.6, 0, []
    for launch in range(8):
        if landed == 3:
            break
        done = len(formats.read_manifest(out)["shards"]) if manifest.exists() else 0
        proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, *map(str, inputs), str(out)], env=env,
                                start_new_session=True)
        stamp = manifest.stat().st_mtime_ns if manifest.exists() else None
        deadline = time.time() + 60
        while proc.poll() is None and time.time() < deadline and (
                not manifest.exists() or manifest.stat().st_mtime_ns == stamp):
            time.sleep(0.002)  # until this run has written its first manifest (after imports and inputs)
        # a random moment inside what is left of the shard loop
        time.sleep(rng.uniform(0.0, scale * t_build * (n_shards - done) / n_shards))
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # already gone
            pass
        proc.wait()
        after = formats.read_manifest(out) if manifest.exists() else None
        log.append(f"launch {launch}: rc={proc.returncode} shards {done}->{len(after['shards']) if after else 0}")
        assert proc.returncode in (0, -signal.SIGKILL), log  # finished, or killed: never crashed
        if proc.returncode == -signal.SIGKILL and after is not None and not after["complete"]:
            landed += 1  # killed mid-build: the next launch has something to resume
        else:  # it finished before the kill: nothing was interrupted; start over, killing earlier
            shutil.rmtree(out)
            landed, scale = 0, scale / 4
    print("\n".join(log))
    assert landed == 3, f"no three kills in a row landed mid-build: the test did not test anything: {log}"
    build_dataset(*inputs, out, **kw)
    assert all_bytes(out) == all_bytes(ref)
    assert not [p for p in out.rglob(TMP_PREFIX + "*")]  # stale temp files cleaned


def test_an_upgrade_that_keeps_the_sample_generator_resumes(inputs, reference, tmp_path):
    """The package version changes with every release; only the sample generator decides whether a build resumes."""
    import json
    import shutil

    from eva_helpers.data import formats

    out = tmp_path / "ds"
    shutil.copytree(reference, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["generator"] == formats.GENERATOR
    (out / "shards" / "shard-00002.zip").unlink()  # a half-built dataset, as a disconnect leaves it
    (out / "manifest.json").write_text(json.dumps({**manifest, "eva_helpers": "0.0.1"}))  # built by an older release
    build_dataset(*inputs, out, **KW)
    assert sha256_file(out / "shards" / "shard-00002.zip") == sha256_file(reference / "shards" / "shard-00002.zip")
    (out / "manifest.json").write_text(json.dumps({**manifest, "generator": formats.GENERATOR - 1}))
    with pytest.raises(BuildConflictError, match="sample generator 1 .*this is generator 2"):
        build_dataset(*inputs, out, **KW)


class _OtherGPU:
    """A teacher like the geometric one whose maps differ a little (another GPU, another precision); counts its calls."""

    def __init__(self):
        from eva_helpers.compositing.teachers import GeometricTeacher

        self.inner, self.background_calls = GeometricTeacher(), 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict(self, images):
        self.background_calls += 1
        return [m * 1.01 + 0.003 for m in self.inner.predict(images)]


def _half_build(inputs, out, monkeypatch):
    """A build killed after its first two shards, as a disconnect leaves it."""
    build_killed_at_shard(*inputs, out, monkeypatch, 2, **KW)
    assert len(formats.read_manifest(out)["shards"]) == 2


def test_resume_keeps_the_recorded_background_maps(inputs, reference, tmp_path, monkeypatch):
    """A resume on another machine whose teacher maps the backgrounds differently keeps backgrounds.zip byte for byte
    and labels the remaining shards from the recorded maps: no dataset mixes labels from two sets of maps."""
    import eva_helpers.compositing.build as build_mod

    out = tmp_path / "ds"
    _half_build(inputs, out, monkeypatch)
    bgz = (out / formats.BACKGROUNDS).read_bytes()
    other = _OtherGPU()
    assert not np.allclose(other.predict([np.zeros((8, 8, 3), np.uint8)])[0],
                           other.inner.predict([np.zeros((8, 8, 3), np.uint8)])[0])  # it does map differently
    other.background_calls = 0
    monkeypatch.setattr(build_mod, "get_teacher", lambda *a, **k: other)
    build_dataset(*inputs, out, **KW)
    assert (out / formats.BACKGROUNDS).read_bytes() == bgz
    assert other.background_calls == 0  # the recorded backgrounds are not labelled again
    assert all_bytes(out) == all_bytes(reference)  # every shard from the same maps as an uninterrupted build


def test_resume_without_its_recorded_maps_refuses_to_mix(inputs, tmp_path, monkeypatch):
    """backgrounds.zip lost, and the teacher here maps differently than the one the built shards used: one line,
    nothing rewritten. The same teacher rebuilds the lost file as it was."""
    import eva_helpers.compositing.build as build_mod

    out = tmp_path / "ds"
    _half_build(inputs, out, monkeypatch)
    bgz = (out / formats.BACKGROUNDS).read_bytes()
    (out / formats.BACKGROUNDS).unlink()
    before = all_bytes(out)
    with monkeypatch.context() as mp:
        mp.setattr(build_mod, "get_teacher", lambda *a, **k: _OtherGPU())
        with pytest.raises(BuildConflictError, match="2 shards built so far") as e:
            build_dataset(*inputs, out, **KW)
    assert "\n" not in str(e.value) and all_bytes(out) == before
    build_dataset(*inputs, out, **KW)
    assert (out / formats.BACKGROUNDS).read_bytes() == bgz and formats.read_manifest(out)["complete"]
