"""`predict_video` on tiny generated clips (64 px, 20 frames, lossless FFV1 written here): frames stream with
every/start/end, the plate is the background where the object lingers less than half the time, short and unreadable
clips are refused in one line with nothing written, the mask video reads back equal to the per-frame masks (and to
`eva predict` on the plate and that frame), frames.csv has a row per frame, the running plate follows the light, and
the plate is aligned at video rates as align_pair would."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from eva_helpers.errors import EvaError
from eva_helpers.predict.clip import Selection, open_clip, read_frames
from eva_helpers.predict.plate import RunningPlate, estimate_plate, median_plate

SIZE, N, FPS = 64, 20, 10.0


def scene(size: int = SIZE, seed: int = 0) -> np.ndarray:
    """A smooth textured background (H, W, 3) uint8."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(40, 215, (size // 8, size // 8, 3), dtype=np.uint8)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)


def object_at(bg: np.ndarray, x: int, y: int, k: int = 14) -> np.ndarray:
    out = bg.copy()
    out[y:y + k, x:x + k] = (20, 200, 40)
    return out


def lingering(bg: np.ndarray) -> tuple[list[np.ndarray], tuple[slice, slice]]:
    """20 frames: the object stands at the top left for 9 frames (less than half), then walks along the bottom."""
    frames = [object_at(bg, 4, 4) for _ in range(9)] + [object_at(bg, 2 + 4 * j, 44) for j in range(N - 9)]
    return frames, (slice(4, 18), slice(4, 18))


def write_clip(path: Path, frames: list[np.ndarray], fps: float = FPS) -> Path:
    """Lossless (FFV1) so a test can compare pixels exactly; frames are RGB."""
    import cv2

    h, w = frames[0].shape[:2]
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (w, h))
    assert wr.isOpened()
    for f in frames:
        wr.write(np.ascontiguousarray(f[..., ::-1]))
    wr.release()
    return path


def read_video(path: Path) -> list[np.ndarray]:
    import cv2

    cap, out = cv2.VideoCapture(str(path)), []
    while True:
        ok, f = cap.read()
        if not ok:
            return out
        out.append(f[..., 0])


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """Frame i carries its index in its top-left pixel (for the selection test) and the lingering object."""
    frames, _ = lingering(scene())
    for i, f in enumerate(frames):
        f[0, 0] = (10 * i, 0, 0)
    return write_clip(tmp_path_factory.mktemp("clip") / "walk.mkv", frames)


def one_line(e: pytest.ExceptionInfo, *names: object) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    for n in names:
        assert str(n) in msg
    return msg


def test_frames_stream_with_start_end_every(clip):
    info = open_clip(clip)
    assert (info.width, info.height, info.frames, info.fps) == (SIZE, SIZE, N, FPS)
    got = list(read_frames(info, Selection(start=3, end=15, every=4)))
    assert [i for i, _, _ in got] == [3, 7, 11]
    assert [int(f[0, 0, 0]) for _, _, f in got] == [30, 70, 110]  # the frames themselves, not neighbours
    assert [round(t, 3) for _, t, _ in got] == [0.3, 0.7, 1.1]
    assert [i for i, _, _ in read_frames(info, Selection(start=17))] == [17, 18, 19]


@pytest.mark.parametrize("kw, flag", [({"every": 0}, "--every"), ({"start": -1}, "--start"),
                                      ({"start": 5, "end": 5}, "--end")])
def test_bad_selection_one_line(kw, flag):
    with pytest.raises(EvaError) as e:
        Selection(**kw).check()
    one_line(e, flag)


def test_plate_is_the_background_where_the_object_lingers(tmp_path):
    bg = scene(seed=1)
    frames, where = lingering(bg)
    noisy = [np.clip(f + np.random.default_rng(i).normal(0, 2, f.shape), 0, 255).astype(np.uint8)
             for i, f in enumerate(frames)]
    plate = estimate_plate(open_clip(write_clip(tmp_path / "c.mkv", noisy)), Selection())
    diff = np.abs(plate.image.astype(int) - bg)
    assert diff[where].max() <= 4  # the object stood there 9 of 20 frames: gone from the plate
    assert diff.max() <= 6 and plate.frames == list(range(N))
    assert plate.image.dtype == np.uint8 and plate.image.shape == bg.shape


def test_plate_samples_stay_bounded_and_even(tmp_path):
    bg = scene(seed=2)
    frames = [object_at(bg, 2 + (i % 12) * 4, 20) for i in range(40)]
    plate = estimate_plate(open_clip(write_clip(tmp_path / "c.mkv", frames)), Selection(), samples=8)
    assert 8 <= len(plate.frames) < 16
    steps = np.diff(plate.frames)
    assert len(set(steps.tolist())) == 1  # evenly spaced across the clip
    assert np.abs(plate.image.astype(int) - bg).max() <= 1


def test_too_short_for_a_plate_refused_in_one_line(tmp_path, trained_run):
    from eva_helpers.predict.footage import predict_video

    short = write_clip(tmp_path / "short.mkv", [object_at(scene(), 4 * i, 20) for i in range(5)])
    out = tmp_path / "out"
    with pytest.raises(EvaError) as e:
        predict_video(trained_run, short, out, progress=False)
    assert "too few" in one_line(e, short, "--bg")
    assert not out.exists()
    with pytest.raises(EvaError) as e:  # a long clip, but a short range
        predict_video(trained_run, write_clip(tmp_path / "long.mkv", lingering(scene())[0]), out, start=16,
                      progress=False)
    one_line(e, "--start 16")
    assert not out.exists()


@pytest.mark.parametrize("content", [b"not a video at all", b""])
def test_unreadable_clip_refused_in_one_line(tmp_path, trained_run, content):
    from eva_helpers.predict.footage import predict_video

    bad = tmp_path / "broken.mp4"
    bad.write_bytes(content)
    out = tmp_path / "out"
    for path in (bad, tmp_path / "missing.mp4", tmp_path):
        with pytest.raises(EvaError) as e:
            predict_video(trained_run, path, out, progress=False)
        one_line(e, path)
    assert not out.exists()


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, trained_run, clip):
    from eva_helpers.predict.footage import predict_video

    out = tmp_path_factory.mktemp("pred") / "out"
    return out, predict_video(trained_run, clip, out, every=2, end=15, frames_png=True, progress=False)


def test_outputs_mask_video_equals_masks_and_csv_rows(predicted, trained_run, clip):
    from eva_helpers.data.formats import decode_mask
    from eva_helpers.predict.pair import predict_pair
    from eva_helpers.training.trained_run import load_trained_run

    out, rep = predicted
    assert rep.frames == 8 and {"masks", "depth", "csv", "plate", "frames", "summary"} <= set(rep.outputs)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["bg_plate.png", "depth.mkv", "footage.json", "frames", "frames.csv", "masks.mkv"]  # no temps
    video = read_video(out / "masks.mkv")
    pngs = [decode_mask((out / "frames" / f"{i:06d}_mask.png").read_bytes()) for i in range(0, 15, 2)]
    assert len(video) == len(pngs) == 8
    for v, m in zip(video, pngs):
        assert set(np.unique(m)) <= {0, 255}
        assert np.array_equal(v, m)  # lossless: the video is the masks
    assert len(read_video(out / "depth.mkv")) == 8
    with open(out / "frames.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["frame"]) for r in rows] == list(range(0, 15, 2))
    assert [float(r["time_s"]) for r in rows] == [i / FPS for i in range(0, 15, 2)]
    for r, m in zip(rows, pngs):
        assert float(r["object_share"]) == pytest.approx(np.count_nonzero(m) / m.size, abs=1e-6)
        assert r["align_applied"] in ("True", "False") and r["align_reason"] and r["plate"].startswith("median")
    # each frame's mask is eva predict's on (bg_plate.png, that frame)
    from eva_helpers.data.images import read_image

    t = load_trained_run(trained_run, "best", None)
    model, cfg, stats, calib, dev = t.model, t.cfg, t.stats, t.calibration, t.device
    plate = read_image(out / "bg_plate.png")
    frames = {i: f for i, _, f in read_frames(open_clip(clip), Selection(end=15, every=2))}
    for k in (0, 3, 7):
        i = 2 * k
        want = predict_pair(model, plate, frames[i], cfg.size, stats, dev, calib)
        assert np.array_equal(pngs[k], want["mask"])


def test_strip_figure(predicted):
    from eva_helpers.predict.footage import footage_strip

    fig = footage_strip(predicted[0], k=4)
    assert len(fig.axes) == 8 and fig.axes[0].get_title() == "frame 0" and fig.axes[3].get_title() == "frame 14"


def test_synthetic_clip_and_its_ground_truth(tmp_path):
    """bench/footage.py's clips: readable, one mask per frame, the object on stage mid-clip, scored by mask_ious."""
    from eva_helpers.predict.clip import VideoOut
    from eva_helpers.demo.clips import ClipSpec, load_gt, make_clip, mask_ious
    from eva_helpers.paths import sample_assets

    spec = ClipSpec("tiny", "rocket", ("bear", "sheep"), frames=N, size=(64, 48), seed=1)
    path, gt_path = make_clip(spec, sample_assets(), tmp_path)
    info, gt = open_clip(path), load_gt(gt_path)
    assert (info.width, info.height, info.frames) == (64, 48, N) and gt.shape == (N, 48, 64)
    assert gt[N // 2].mean() > 0.05 and make_clip(spec, sample_assets(), tmp_path) == (path, gt_path)
    video = VideoOut(tmp_path, "truth", (64, 48), 25.0)
    for g in gt:
        video.write(g.astype(np.uint8) * 255)
    assert mask_ious(video.commit(), gt) == [1.0] * N


def test_demo_clip_uses_the_runs_held_out_background(tmp_path, trained_run):
    from eva_helpers.demo.clips import ClipSpec, demo_clip, make_clip
    from eva_helpers.paths import sample_assets
    from eva_helpers.training.trained_run import load_run

    _, cfg, _ = load_run(trained_run)
    test_bg = cfg.splits(cfg.data)["info"]["bg_ids"]["test"][0]
    path, _ = demo_clip(trained_run, tmp_path, frames=10, size=(64, 48))
    # split by background only: any cut-outs (the sample's first two); the same spec names the same file
    want = ClipSpec("demo", test_bg, ("bear", "camel"), frames=10, size=(64, 48))
    assert make_clip(want, sample_assets(), tmp_path)[0] == path and open_clip(path).frames == 10


def test_given_bg_photo_and_clip_never_overwritten(tmp_path, trained_run, clip):
    from eva_helpers.data.formats import encode_png
    from eva_helpers.predict.footage import predict_video

    photo = tmp_path / "empty.png"
    photo.write_bytes(encode_png(scene()))
    rep = predict_video(trained_run, clip, tmp_path / "out", bg=photo, end=4, progress=False, align=False)
    assert rep.frames == 4 and "plate" not in rep.outputs and rep.plate.startswith("photo")
    inside = tmp_path / "o2" / "masks.mkv"
    inside.parent.mkdir()
    inside.write_bytes(clip.read_bytes())
    with pytest.raises(EvaError) as e:
        predict_video(trained_run, inside, inside.parent, bg=photo, progress=False)
    one_line(e, "--out")
    assert inside.read_bytes() == clip.read_bytes()


def test_running_plate_follows_the_light(tmp_path, trained_run):
    from eva_helpers.predict.footage import predict_video

    bg = scene(seed=3).astype(np.float32)
    frames = [np.clip(object_at(bg, 2 + 2 * i, 40) * (1.0 - 0.02 * i), 0, 255).astype(np.uint8) for i in range(N)]
    path = write_clip(tmp_path / "fade.mkv", frames)
    info = open_clip(path)
    rp = RunningPlate(info, Selection(), window=16, samples=16)
    rp.check()
    early, late = rp.at(0), rp.at(19)
    assert early.frames == list(range(16)) and late.frames == list(range(4, 20))  # full windows at both ends
    all_frames = [f for _, _, f in read_frames(info)]
    assert np.array_equal(late.image, median_plate(all_frames[4:20]))
    assert late.image.mean() < early.image.mean() - 5  # darker: it followed the fade
    with pytest.raises(EvaError) as e:
        RunningPlate(info, Selection(), window=4)
    one_line(e, "--plate-window")
    rep = predict_video(trained_run, path, tmp_path / "out", plate_window=16, progress=False)
    with open(rep.outputs["csv"], newline="", encoding="utf-8") as f:
        plates = [r["plate"] for r in csv.DictReader(f)]
    assert len(plates) == N and plates[0].startswith("running median") and plates[0] != plates[-1]


def test_frame_aligner_matches_align_pair_at_full_size():
    """Above ALIGN_SIDE the estimate is made on smaller copies and applied at full size: the same shift as align_pair
    gives at full size, within a tenth of a pixel."""
    import cv2

    from eva_helpers.predict.align import align_pair
    from eva_helpers.predict.frame_align import FrameAligner

    rng = np.random.default_rng(0)
    plate = cv2.resize(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8), (640, 480), interpolation=cv2.INTER_CUBIC)
    m = np.float32([[1, 0, 1.6], [0, 1, -0.9]])
    frame = cv2.warpAffine(plate, m, (640, 480), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    frame[200:300, 300:380] = 30
    aligned, al = FrameAligner(plate, frame)(plate, frame)
    _, full = align_pair(plate, frame)
    assert al.applied and full.applied
    assert abs(al.dx - full.dx) < 0.1 and abs(al.dy - full.dy) < 0.1
    assert abs(al.dx - 1.6) < 0.15 and abs(al.dy + 0.9) < 0.15
    inner = (slice(10, 470), slice(10, 630))
    before = np.abs(plate[inner].astype(int) - frame[inner]).mean()
    after = np.abs(aligned[inner].astype(int) - frame[inner]).mean()
    assert after < 0.3 * before


def test_eva_predict_video_writes_the_outputs_and_says_so(tmp_path, trained_run, clip, capsys):
    from eva_helpers.cli import main

    out = tmp_path / "out"
    assert main(["predict", "--run-dir", str(trained_run), "--video", str(clip), "--out", str(out), "--every", "2"]) == 0
    said = capsys.readouterr().out
    assert "frames" in said and str(out) in said
    assert {"masks.mkv", "depth.mkv", "frames.csv", "bg_plate.png", "footage.json"} <= {p.name for p in out.iterdir()}
    assert len(read_video(out / "masks.mkv")) == 10  # 20 frames, every 2nd


@pytest.mark.parametrize("extra, words", [
    (["--fg-bg", "{clip}"], ("--video", "--fg-bg", "give one")),
    (["--pair-by", "order"], ("--pair-by",)),
    (["--every", "0"], ("--every",)),
    (["--end", "2000000000"], ("--end", "1000000000")),
])
def test_eva_predict_video_misuse_is_one_line_and_writes_nothing(tmp_path, trained_run, clip, capsys, extra, words):
    from eva_helpers.cli import main

    out = tmp_path / "out"
    args = ["predict", "--run-dir", str(trained_run), "--video", str(clip), "--out", str(out)]
    assert main(args + [e.format(clip=clip) for e in extra]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), lines
    assert not out.exists()


def test_video_flags_without_video_are_refused(tmp_path, trained_run, capsys):
    from eva_helpers.cli import main

    assert main(["predict", "--run-dir", str(trained_run), "--bg", "a.png", "--fg-bg", "b.png", "--out",
                 str(tmp_path / "o"), "--every", "3"]) == 2
    assert "go with --video" in capsys.readouterr().err
    assert main(["predict", "--run-dir", str(trained_run), "--bg", "a.png", "--out", str(tmp_path / "o")]) == 2
    assert "--video CLIP" in capsys.readouterr().err


@pytest.mark.slow  # a notebook cell end to end: a clip made, predicted, shown
def test_notebook_05s_footage_cell_predicts_a_held_out_clip(tmp_path, trained_run, capsys):
    from types import SimpleNamespace

    from eva_helpers.colab.photos import predict_footage

    fig = predict_footage(SimpleNamespace(run_dir=str(trained_run)), "", out=tmp_path / "f", smoke=True)
    assert fig is not None and (tmp_path / "f" / "predicted" / "masks.mkv").is_file()
    assert "frames" in capsys.readouterr().out
    with pytest.raises(EvaError, match="nope.mp4"):
        predict_footage(SimpleNamespace(run_dir=str(trained_run)), str(tmp_path / "nope.mp4"), out=tmp_path / "g")
