"""align_pair never makes a pair worse: failed estimates are "not aligned", flat areas are not JPEG, different scenes
and out-of-bounds fits are left alone, exact pairs come back bit for bit; two sizes of one frame become one."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from eva_helpers.data.compression import estimate_jpeg
from eva_helpers.errors import BadInputError
from eva_helpers.predict import align, registration
from eva_helpers.predict.align import align_pair, alignment_record, describe_alignment
from eva_helpers.paths import sample_assets
from _photos import sample_photo as _photo


def _with_dog(img: np.ndarray) -> np.ndarray:
    """A sample cut-out alpha-blended onto img (its lower left), as an object in fg_bg."""
    rgba = cv2.cvtColor(cv2.imread(str(sample_assets() / "fg" / "dog.png"), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)
    h = img.shape[0] // 2
    r = cv2.resize(rgba, (max(1, round(h * rgba.shape[1] / rgba.shape[0])), h), interpolation=cv2.INTER_AREA)
    a = r[..., 3:].astype(np.float32) / 255.0
    out = img.copy()
    region = out[-h:, 10:10 + r.shape[1]].astype(np.float32)
    out[-h:, 10:10 + r.shape[1]] = np.clip(r[..., :3] * a + region * (1 - a) + 0.5, 0, 255).astype(np.uint8)
    return out


def _untouched(out: np.ndarray, bg: np.ndarray, al: align.Alignment) -> bool:
    return out.tobytes() == bg.tobytes() and not (al.applied or al.tone_applied or al.jpeg_applied)


def _checker(side: int, shift: int) -> tuple[np.ndarray, np.ndarray]:
    cb = np.dstack([((np.indices((side + 8, side + 8)) // 8).sum(0) % 2 * 255).astype(np.uint8)] * 3)
    return cb[4:4 + side, 4:4 + side], cb[4:4 + side, 4 - shift:4 - shift + side]


# ------------------------------------------------------------------------------------------ 1. nothing escapes

@pytest.mark.parametrize("kind,name,side", [("blur", "seeding", 96), ("blur", "picosdeeuropa", 96),
                                            ("defocus", "brushes", 128), ("defocus", "coffee", 160),
                                            ("checker", "", 96)])
def test_degenerate_estimates_never_escape(kind: str, name: str, side: int) -> None:
    """RANSAC on the first four pairs returned a similarity of scale 0 (every match on one point), and fit_linear
    raised an IndexError on the empty overlap it left. Now: no exception, and whatever is applied lies within bounds."""
    if kind == "blur":  # a softly blurred second shot, moved 2-3 px
        big, dx = _photo(name, side + 8), 2 if name == "seeding" else 3
        bg, fg_bg = big[4:-4, 4:-4], cv2.GaussianBlur(big[4:-4, 4 + dx:side + 4 + dx], (0, 0), 2.0)
    elif kind == "defocus":  # strong defocus: a 13 px Gaussian kernel on fg_bg
        bg = _photo(name, side)
        fg_bg = cv2.GaussianBlur(bg, (13, 13), 0)
    else:  # a checkerboard shifted 3 px
        bg, fg_bg = _checker(side, 3)
    out, al = align_pair(bg, fg_bg)
    assert out.shape == bg.shape and out.dtype == np.uint8
    assert al.reason and not al.reason.startswith("estimate failed"), al.reason
    if al.applied:
        assert 0.8 <= al.scale <= 1.25 and abs(al.angle) <= 10, al


def test_a_degenerate_feature_fit_falls_through_to_the_next_estimate(monkeypatch) -> None:
    """Features say "scale 0, 200 inliers" (what RANSAC returned on the pairs above): refused as out of bounds, and
    phase correlation still finds the real 5 px shift."""
    big = _photo("china", 200)
    bg, fg_bg = big[20:180, 20:180], _with_dog(big[20:180, 15:175])  # content moved by (+5, 0)
    degenerate = np.array([[2.8e-20, -1.1e-20, 15.0], [1.1e-20, 2.8e-20, 29.0]])
    monkeypatch.setattr(registration, "_features", lambda *args: (degenerate, 200))
    out, al = align_pair(bg, fg_bg)
    assert al.applied and abs(al.dx - 5) < 0.5 and abs(al.dy) < 0.5 and abs(al.scale - 1) < 0.01, al


def test_a_failed_estimate_is_not_aligned_and_says_why(monkeypatch) -> None:
    def broken(*args):
        raise cv2.error("OpenCV(5.1) error: (-215:Assertion failed) !ssize.empty()\nin function 'resize'")

    monkeypatch.setattr(align, "estimate_geometry", broken)
    bg = _photo("brushes", 96)
    out, al = align_pair(bg, np.roll(bg, 3, axis=1))
    assert _untouched(out, bg, al) and out is not bg
    assert al.reason.startswith("estimate failed (error: OpenCV(5.1) error") and "\n" not in al.reason, al.reason
    assert "not aligned: estimate failed" in describe_alignment(al)
    assert alignment_record(al)["reason"] == al.reason


# ------------------------------------------------------------------------------------------ 2. flat is not JPEG

@pytest.mark.parametrize("level", [30, 60, 100, 160, 200, 250])
@pytest.mark.parametrize("side", [64, 300])
def test_flat_grey_reads_as_no_jpeg(level: int, side: int) -> None:
    """Flat blocks have one coefficient, their mean, which sits on some coarse grid by chance (read as quality 1-32
    before): no texture, no estimate."""
    assert estimate_jpeg(np.full((side, side, 3), level, np.uint8)) is None


def test_exact_lossless_pair_with_a_flat_box_is_left_alone() -> None:
    """A flat box over the centre of a lossless 600 px photo filled the window the estimate reads: bg was saved as
    "JPEG quality 1" and the bg-difference baseline's IoU on this exact pair fell from 1.000 to 0.49."""
    from eva_helpers.evaluation.baseline import bg_difference_mask

    bg = _photo("brushes", 600)
    fg_bg, box = bg.copy(), np.zeros((600, 600), bool)
    fg_bg[150:450, 150:450], box[150:450, 150:450] = 160, True
    assert estimate_jpeg(fg_bg) is None
    out, al = align_pair(bg, fg_bg)
    assert _untouched(out, bg, al), describe_alignment(al)
    iou = [float((p & box).sum() / (p | box).sum()) for p in
           (bg_difference_mask(b, fg_bg, 0.1)[0, 0].numpy() > 0.5 for b in (bg, out))]  # (H, W) masks
    assert iou[1] == iou[0] > 0.999, iou


# ------------------------------------------------------------------------------------------ 3. bounds, scenes

@pytest.mark.parametrize("names", [("china", "rocket"), ("coffee", "sunset"), ("seeding", "wine_room"),
                                   ("brushes", "fig_plate"), ("aitzgorri", "picosdeeuropa")])
def test_different_scenes_are_left_alone(names: tuple[str, str]) -> None:
    """Two photos of different scenes: tone gains that inverted bg (-0.10) or crushed it (0.03) were applied and
    reported "aligned". Now nothing is, and the reason, the record and the CSV row say why."""
    bg, fg_bg = _photo(names[0], 160), _with_dog(_photo(names[1], 160))
    out, al = align_pair(bg, fg_bg)
    assert _untouched(out, bg, al) and al.different_scenes, al
    assert describe_alignment(al).startswith("not aligned: these look like different scenes"), describe_alignment(al)
    assert al.as_row()["align_different_scenes"] is True and alignment_record(al)["different_scenes"] is True


def test_one_scene_with_a_large_object_is_not_different_scenes() -> None:
    big = _photo("life_stream", 200)
    bg, fg_bg = big[20:180, 20:180], big[26:186, 12:172].copy()  # content moved by (+8, -6)
    fg_bg[30:130, 20:120] = cv2.GaussianBlur(_photo("coffee", 100), (0, 0), 2)  # another picture over 39 % of it
    out, al = align_pair(bg, fg_bg)
    assert al.applied and not al.different_scenes and abs(al.dx - 8) < 0.5 and abs(al.dy + 6) < 0.5, al


def test_a_negative_is_not_inverted_back() -> None:
    """A tone fit of gain -1 lowers the residual of a photo and its negative, but no second shot needs it."""
    photo = _photo("coffee", 128)
    out, al = align_pair(255 - photo, _with_dog(photo))
    assert _untouched(out, 255 - photo, al), al
    assert all(0.5 <= g <= 2 for g in al.gain)


def test_bounds() -> None:
    from eva_helpers.predict.align_guard import geometry_problem, keystone_problem, tone_problem

    assert geometry_problem(5.0, -3.0, 1.5, 1.03, 160, 120) is None
    assert "scale 0.000" in geometry_problem(0.0, 0.0, 0.0, 3e-20, 160, 120)
    assert "rotation" in geometry_problem(0.0, 0.0, 12.0, 1.0, 160, 120)
    assert "shift" in geometry_problem(0.0, 30.0, 0.0, 1.0, 160, 120)  # 25 % of 120 px
    assert "finite" in geometry_problem(float("nan"), 0.0, 0.0, 1.0, 160, 120)
    assert tone_problem(np.array([1.1, 1.0, 0.9]), np.array([2.0, 0.0, -3.0])) is None
    assert "gain" in tone_problem(np.array([-0.1, 1.0, 1.0]), np.zeros(3))
    assert "offset" in tone_problem(np.ones(3), np.array([0.0, 90.0, 0.0]))
    hom = np.array([[1.0, 0.0, 4.0], [0.0, 1.0, -2.0], [5e-5, 0.0, 1.0]])  # 0.8 % keystone over 160 px
    assert keystone_problem(hom, 160, 120) is None
    hom[2, 0] = 5e-4  # 8 %
    assert "perspective" in keystone_problem(hom, 160, 120)


# ------------------------------------------------------------------------------------------ 4. exact pairs

@pytest.mark.parametrize("content", ["photo", "noise", "flat", "checker", "gradient"])
def test_exact_pairs_come_back_bit_for_bit(content: str) -> None:
    rng = np.random.default_rng(7)
    if content == "photo":
        bg = _photo("rocket", 160)
    elif content == "noise":
        bg = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    elif content == "flat":
        bg = np.full((120, 160, 3), 90, np.uint8)
    elif content == "checker":
        bg = _checker(120, 0)[0]
    else:
        bg = np.broadcast_to(np.linspace(0, 255, 160, dtype=np.float32)[None, :, None], (120, 160, 3)).astype(np.uint8)
    for obj in (np.full((50, 60, 3), 200, np.uint8), rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)):
        fg_bg = bg.copy()
        fg_bg[40:90, 50:110] = obj
        out, al = align_pair(bg, fg_bg)
        assert _untouched(out, bg, al) and al.reason.startswith("exact pair"), al


# ------------------------------------------------------------------------------------------ 5. two sizes

def test_two_sizes_of_one_frame_are_brought_to_one() -> None:
    small = _photo("china", 240)[:180]  # 240 x 180, 4:3
    big = cv2.resize(small, (800, 600), interpolation=cv2.INTER_CUBIC)
    bg, fg_bg, note = align.to_common_size(big, small)
    assert bg.shape == fg_bg.shape == small.shape and fg_bg is small and note == "bg 800x600 resized to fg_bg's 240x180"
    assert np.abs(bg.astype(int) - small).mean() < 3  # the same frame, area-averaged back
    bg, fg_bg, note = align.to_common_size(small, big)  # the outputs belong to fg_bg: bg comes to its size
    assert bg.shape == big.shape and fg_bg is big and note == "bg 240x180 resized to fg_bg's 800x600"
    assert align.to_common_size(small, small)[2] is None
    bg, _, note = align.to_common_size(cv2.resize(small, (801, 600)), small)  # aspect 0.1 % apart: one frame
    assert bg.shape == small.shape and note


def test_different_aspects_are_a_one_line_refusal() -> None:
    with pytest.raises(BadInputError, match=r"bg is 400x300 but fg_bg is 400x225: different aspect") as e:
        align.to_common_size(np.zeros((300, 400, 3), np.uint8), np.zeros((225, 400, 3), np.uint8))
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ 7. keystone

def _keystoned(name: str, keystone: float, side: int = 224) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bg, fg_bg, object mask): fg_bg is the scene moved by (+3, -2) px with a horizontal keystone (depth scale
    varying by `keystone` across the frame, about its centre), a cut-out pasted, both saved as JPEG q90."""
    big, pad = _photo(name, side + 80), 40
    c = np.array([[1, 0, -(side - 1) / 2 - pad], [0, 1, -(side - 1) / 2 - pad], [0, 0, 1]])  # big -> centred
    hom = np.linalg.inv(c) @ np.array([[1, 0, 3], [0, 1, -2], [keystone / side, 0, 1]]) @ c
    moved = cv2.warpPerspective(big, hom, big.shape[1::-1], flags=cv2.INTER_LINEAR)[pad:-pad, pad:-pad]
    fg_bg = _with_dog(moved)
    mask = np.abs(fg_bg.astype(int) - moved).max(axis=2) > 0  # (side, side) bool: where the cut-out changed it
    jpeg = [cv2.imdecode(cv2.imencode(".jpg", im[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1],
                         cv2.IMREAD_COLOR)[..., ::-1] for im in (big[pad:-pad, pad:-pad], fg_bg)]
    return np.ascontiguousarray(jpeg[0]), np.ascontiguousarray(jpeg[1]), mask


def _outside(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    keep = ~cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    keep[:24], keep[-24:], keep[:, :24], keep[:, -24:] = False, False, False, False
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32))[keep].mean())


@pytest.mark.parametrize("name", ["china", "life_stream"])
def test_a_keystone_is_fixed_by_a_homography(name: str, monkeypatch) -> None:
    bg, fg_bg, mask = _keystoned(name, 0.04)
    out, al = align_pair(bg, fg_bg)
    assert al.applied and len(al.homography) == 9 and "keystone" in describe_alignment(al), al.reason
    monkeypatch.setattr(align, "estimate_keystone", lambda *args: (None, "off"))
    similarity_only = align_pair(bg, fg_bg)[0]
    assert _outside(out, fg_bg, mask) < 0.7 * _outside(similarity_only, fg_bg, mask)
    ref = cv2.warpPerspective(bg, al.matrix(224, 224), (224, 224), flags=cv2.INTER_LINEAR)
    assert np.array_equal(out[10:-10, 10:-10], ref[10:-10, 10:-10])
    assert al.as_row()["align_homography"].count(" ") == 8


@pytest.mark.parametrize("name", ["china", "life_stream", "seeding"])
def test_no_keystone_no_homography(name: str) -> None:
    """A plain shift: the homography fits as well as the similarity, and never clearly better, so it is not used."""
    _, al = align_pair(*_keystoned(name, 0.0)[:2])
    assert al.applied and al.homography == () and al.as_row()["align_homography"] == "", al.reason


def test_folder_summary_counts_different_scenes() -> None:
    from eva_helpers.predict.folders import summarize_alignments

    other = align_pair(_photo("china", 96), _photo("sunset", 96))[1]
    line = summarize_alignments([("a", other), ("b", align.IDENTITY)])
    assert line.startswith("alignment: 0 of 2 pairs registered, 0 tone-matched, 0 compressed like fg_bg, 1 look like "
                           "different scenes"), line
