"""Second-shot changes (perturb.py) and scoring under them (`evaluate_run(perturb=, align=)`, `eva eval --perturb`).

The changes are checked for what makes them fair measurements: deterministic bytes, bg and the inputs never written,
labels moved with the photo on a shake and left alone otherwise, a shadow that darkens only outside the object.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from eva_helpers.errors import BadInputError
from eva_helpers.evaluation.perturb import (
    MOVES_LABELS,
    PERTURBATIONS,
    SUITE,
    perturb_sample,
    shadow_map,
    shift_offsets,
)

OBJECT = (255, 0, 255)  # a colour the background below never has


def _sample(size: int = 48, box: tuple[int, int, int, int] | None = None) -> dict:
    """A smooth background (values 40..200, no magenta) with a magenta rectangle of depth 1.0 on it; bg read-only."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    bg = np.stack([40 + 160 * xx / size, 40 + 160 * yy / size, 120 + 20 * np.sin(xx / 3) * np.cos(yy / 4)], -1)
    bg = np.rint(bg).astype(np.uint8)
    y0, x0, h, w = box or (size // 3, size // 3, size // 2, size // 4)
    mask = np.zeros((size, size), np.uint8)
    mask[y0:y0 + h, x0:x0 + w] = 1
    fg_bg = bg.copy()
    fg_bg[mask == 1] = OBJECT
    depth = np.repeat(np.linspace(0.1, 0.6, size, dtype=np.float32)[:, None], size, 1)
    depth[mask == 1] = 1.0
    bg.setflags(write=False)  # as the dataset's background cache
    return {"bg": bg, "fg_bg": fg_bg, "mask": mask, "depth": depth, "meta": {"index": 5, "bg_id": "b"}}


def _copy(sample: dict) -> dict:
    return {k: (v.copy() if isinstance(v, np.ndarray) else dict(v)) for k, v in sample.items()}


# ---------------------------------------------------------------------------------------------- the changes
@pytest.mark.parametrize("size", [32, 64])
def test_every_name_runs_and_keeps_shapes_and_label_ranges(size):
    s = _sample(size)
    for name in SUITE:
        out = perturb_sample(s, name, seed=3)
        assert out["fg_bg"].shape == (size, size, 3) and out["fg_bg"].dtype == np.uint8, name
        assert out["mask"].shape == (size, size) and set(np.unique(out["mask"])) <= {0, 1}, name
        assert out["depth"].dtype == np.float32 and 0.0 <= out["depth"].min() <= out["depth"].max() <= 1.0, name
        assert out["bg"] is s["bg"] and out["meta"] == s["meta"], name
        if not any(kind in MOVES_LABELS for kind, _ in PERTURBATIONS[name].ops):  # only a moved shot moves labels
            assert np.array_equal(out["mask"], s["mask"]) and np.array_equal(out["depth"], s["depth"]), name
        if name != "clean":
            assert not np.array_equal(out["fg_bg"], s["fg_bg"]), f"{name} changed nothing"
    assert SUITE[0] == "clean" and set(SUITE) == set(PERTURBATIONS)
    assert np.array_equal(perturb_sample(s, "clean", 0)["fg_bg"], s["fg_bg"])
    for name, p in PERTURBATIONS.items():  # CLI-friendly names, a one-line description each
        assert name == name.strip() and " " not in name and "/" not in name and p.doc and "\n" not in p.doc


def test_same_name_seed_and_sample_give_the_same_bytes_and_inputs_are_never_written():
    s = _sample(48)
    before = _copy(s)
    for name in SUITE:
        a, b = perturb_sample(s, name, seed=11), perturb_sample(_copy(s), name, seed=11)
        for k in ("fg_bg", "mask", "depth"):
            assert a[k].tobytes() == b[k].tobytes(), (name, k)
    for k in ("bg", "fg_bg", "mask", "depth"):
        assert np.array_equal(s[k], before[k]), k  # nothing written into the inputs (bg is read-only anyway)
    assert s["meta"] == before["meta"]
    seeds = [perturb_sample(s, "noise8", seed)["fg_bg"].tobytes() for seed in range(3)]
    assert len(set(seeds)) == 3  # the seed matters


def test_unknown_name_is_a_bad_input_listing_the_valid_names():
    with pytest.raises(BadInputError) as e:
        perturb_sample(_sample(32), "exposure+15", 0)
    assert "exposure+15" in str(e.value) and "exposure+10" in str(e.value) and "shadow-strong" in str(e.value)


@pytest.mark.parametrize("name,px", [("shift1", 1), ("shift2", 2)])
def test_a_shake_moves_mask_and_depth_with_the_photo(name, px):
    seen = set()
    for seed in range(24):
        s = _sample(48)
        out = perturb_sample(s, name, seed)
        dy, dx = shift_offsets(seed, px)
        assert max(abs(dy), abs(dx)) == px
        seen.add((dy, dx))
        ys, xs = np.nonzero(out["mask"])
        ys0, xs0 = np.nonzero(s["mask"])
        assert (ys.min() - ys0.min(), xs.min() - xs0.min()) == (dy, dx)  # the object's edges moved by the shake
        is_obj = np.all(out["fg_bg"] == OBJECT, -1)
        assert np.array_equal(is_obj, out["mask"] == 1)  # the object's pixels are exactly where the mask says
        assert np.all(out["depth"][out["mask"] == 1] == 1.0) and np.all(out["depth"][out["mask"] == 0] < 0.7)
        assert np.array_equal(out["bg"], s["bg"])  # the first shot stays
    assert len(seen) >= 6  # the direction comes from the seed


def test_a_shadow_darkens_only_outside_the_object_and_keeps_the_labels():
    s = _sample(64, box=(16, 26, 30, 10))  # a tall object standing on row 45
    inside = s["mask"] == 1
    dark = {}
    for name, strength in (("shadow", 0.25), ("shadow-strong", 0.45)):
        out = perturb_sample(s, name, seed=2)
        assert np.array_equal(out["mask"], s["mask"]) and np.array_equal(out["depth"], s["depth"])
        assert np.array_equal(out["fg_bg"][inside], s["fg_bg"][inside])  # the object itself is lit as before
        ratio = out["fg_bg"].astype(np.float64) / np.maximum(s["fg_bg"], 1)
        assert np.all(out["fg_bg"] <= s["fg_bg"])  # only darker, never brighter
        assert ratio[~inside].min() >= 1 - strength - 0.02  # by at most the strength (+ rounding)
        shaded = (ratio.min(-1) < 0.9) & ~inside
        assert shaded.sum() > 20, name  # a visible shadow
        ys, xs = np.nonzero(shaded)
        assert ys.max() <= 45 + 3  # cast on the ground behind the contact row, not below it (soft edge aside)
        assert np.any(np.abs(xs - 31) > 5 + 3)  # and beside the object, not only hidden behind it
        dark[name] = (1 - ratio[~inside]).sum()
    assert dark["shadow-strong"] > 1.5 * dark["shadow"]
    assert not shadow_map(np.zeros((32, 32), np.uint8), 0).any()  # no object, no shadow


@pytest.mark.parametrize("name", ["jpeg60", "jpeg40"])
def test_jpeg_changes_the_bytes_but_keeps_the_mean(name):
    s = _sample(64)
    out = perturb_sample(s, name, seed=0)["fg_bg"]
    assert not np.array_equal(out, s["fg_bg"])
    assert abs(out.astype(np.float64).mean() - s["fg_bg"].mean()) < 1.5
    diff = np.abs(out.astype(np.int16) - s["fg_bg"]).max(-1)
    assert diff.mean() < 12  # a JPEG, not a different image


def test_combinations_reuse_the_single_changes_draws():
    """`phone` shakes a sample the way `shift1` does (one draw per kind of change and sample): rows comparable."""
    s = _sample(48)
    assert np.array_equal(perturb_sample(s, "phone", 4)["mask"], perturb_sample(s, "shift1", 4)["mask"])


# ---------------------------------------------------------------------------------------------- scoring under them
@pytest.fixture
def run_copy(trained_run, tmp_path):
    return shutil.copytree(trained_run, tmp_path / "run")


KEYS = ["mask_iou", "depth_rmse", "baseline_mask_iou", "baseline_depth_rmse", "baseline_threshold", "mask_threshold"]


def test_evaluate_under_a_change_writes_its_own_file_and_keeps_the_clean_one(run_copy, sample_dataset, monkeypatch):
    import eva_helpers.evaluation.heldout as E
    from eva_helpers.evaluation.heldout import evaluate_run

    clean = evaluate_run(run_copy, sample_dataset, which="last", figure=False, progress=False)
    files = {p: (run_copy / p).read_bytes() for p in ("metrics.json", "calibration.json")}
    reuse: dict = {}
    same = evaluate_run(run_copy, sample_dataset, which="last", figure=False, progress=False, perturb="clean",
                        reuse=reuse)
    assert reuse["key"] and reuse["calib"]["threshold"] == clean["mask_threshold"]

    def refit(*a, **k):
        raise AssertionError("fitted again on validation although the caller kept the choices")

    monkeypatch.setattr(E, "fit_on_validation", refit)
    noisy = evaluate_run(run_copy, sample_dataset, which="last", figure=False, progress=False, perturb="noise8",
                         reuse=reuse)
    for p, data in files.items():
        assert (run_copy / p).read_bytes() == data, f"{p} rewritten by a perturbed evaluation"
    on_disk = json.loads((run_copy / "metrics-noise8.json").read_text())
    assert on_disk["perturb"] == "noise8" and on_disk["aligned"] is False
    assert json.loads((run_copy / "metrics-clean.json").read_text())["perturb"] == "clean"
    for k in KEYS:
        assert k in on_disk, k
        assert same[k] == pytest.approx(clean[k], rel=1e-12), k  # "clean" is the plain evaluation
    # thresholds and calibration still chosen on the clean validation split; the baseline scored under the change
    for k in ("baseline_threshold", "mask_threshold", "mask_morph", "n_images"):
        assert noisy[k] == clean[k], k
    assert noisy["baseline_mask_iou"] != clean["baseline_mask_iou"]
    assert noisy["mask_iou"] != clean["mask_iou"] or noisy["depth_rmse"] != clean["depth_rmse"]


def test_a_bad_name_is_refused_before_anything_is_read(run_copy, sample_dataset):
    from eva_helpers.evaluation.heldout import evaluate_run

    with pytest.raises(BadInputError, match="choose from"):
        evaluate_run(run_copy, sample_dataset, perturb="nope", progress=False)
    assert not list(run_copy.glob("metrics-*.json"))


def _fake_align(monkeypatch, calls: list) -> None:
    """A registration that makes bg equal to fg_bg (so the baseline finds nothing) and says it applied on every other
    pair: shows what the model and the baseline were handed."""
    class Alignment:
        def __init__(self, applied):
            self.applied, self.tone_applied, self.jpeg_applied = applied, False, False

        def as_row(self):
            return {"applied": self.applied}

    def align_pair(bg, fg_bg):
        calls.append(bg.shape)
        return fg_bg.copy(), Alignment(len(calls) % 2 == 0)

    monkeypatch.setattr("eva_helpers.evaluation.perturb.align_pair", align_pair)


def test_align_registers_every_scored_pair_for_model_and_baseline(run_copy, sample_dataset, monkeypatch):
    from eva_helpers.evaluation.heldout import evaluate_run

    calls: list = []
    _fake_align(monkeypatch, calls)
    m = evaluate_run(run_copy, sample_dataset, which="last", figure=False, progress=False, perturb="wb", align=True)
    on_disk = json.loads((run_copy / "metrics-wb-aligned.json").read_text())
    assert on_disk["aligned"] is True and on_disk["perturb"] == "wb"
    assert len(calls) == m["n_images"] > 0  # the scored split only, never the validation split
    assert m["align_applied_fraction"] == pytest.approx((m["n_images"] // 2) / m["n_images"])
    assert m["baseline_mask_iou"] < 0.5  # the baseline saw the registered bg (= fg_bg): nothing left to find
    clean_file = run_copy / "metrics.json"
    assert not clean_file.exists() or "aligned" not in json.loads(clean_file.read_text())


def test_align_with_the_real_module(run_copy, sample_dataset):
    from eva_helpers.evaluation.heldout import evaluate_run

    m = evaluate_run(run_copy, sample_dataset, which="last", figure=False, progress=False, perturb="shift1", align=True)
    assert 0.0 <= m["align_applied_fraction"] <= 1.0 and (run_copy / "metrics-shift1-aligned.json").is_file()


# ---------------------------------------------------------------------------------------------- the command line
def test_cli_perturb_flag_writes_its_metrics_and_bad_names_are_one_line(run_copy, sample_dataset, capsys):
    from eva_helpers.cli import main

    base = ["eval", "--run-dir", str(run_copy), "--data", str(sample_dataset), "--which", "last"]
    assert main(base + ["--perturb", "jpeg40"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["perturb"] == "jpeg40" and "baseline_mask_iou" in printed
    assert (run_copy / "metrics-jpeg40.json").is_file() and (run_copy / "eval_best_worst-jpeg40.png").is_file()

    before = sorted(p.name for p in run_copy.iterdir())
    assert main(base + ["--perturb", "jpeg-40"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "jpeg-40" in err[0] and "jpeg40" in err[0] and "--perturb" in err[0]
    assert sorted(p.name for p in run_copy.iterdir()) == before

    with pytest.raises(SystemExit) as e:  # like --help: answered before the required flags are asked for
        main(["eval", "--perturb", "list"])
    assert e.value.code == 0
    listed = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in listed] == list(SUITE)


# ------------------------------------------------------------------------- scene changes of a hand-held second shot
@pytest.mark.parametrize("name", ["shadow-far", "reflection", "moved-object"])
def test_light_and_background_changes_stay_away_from_the_object_and_keep_the_labels(name):
    s = _sample(64, box=(8, 8, 20, 14))
    out = perturb_sample(s, name, seed=5)
    inside = s["mask"] == 1
    assert np.array_equal(out["fg_bg"][inside], s["fg_bg"][inside]), "the object itself is lit as it was"
    changed = np.abs(out["fg_bg"].astype(int) - s["fg_bg"]).max(2) > 2
    assert changed.sum() > 20
    ys, xs = np.nonzero(changed)
    # "far from the object": the change's centre lies well outside the object's box
    cy, cx = ys.mean(), xs.mean()
    assert not (8 - 4 <= cy <= 28 + 4 and 8 - 4 <= cx <= 22 + 4), (cy, cx)
    assert np.array_equal(out["mask"], s["mask"]) and np.array_equal(out["depth"], s["depth"])


@pytest.mark.parametrize("name", ["rotate5", "zoom5", "keystone4", "parallax"])
def test_a_moved_shot_moves_its_labels_with_the_object(name):
    s = _sample(64)
    s["depth"][s["mask"] == 1] = 1.0  # the object is the nearest thing (parallax moves it most)
    out = perturb_sample(s, name, seed=2)
    assert not np.array_equal(out["mask"], s["mask"]), "the object moved, so its label must"
    core = out["mask"] == 1
    core &= np.roll(core, 1, 0) & np.roll(core, -1, 0) & np.roll(core, 1, 1) & np.roll(core, -1, 1)
    assert core.sum() > 20
    # where the moved label says object (away from its resampled rim), the moved photo shows the object's colour
    assert np.abs(out["fg_bg"][core].astype(int) - OBJECT).max() <= 2
    assert abs(int(out["mask"].sum()) - int(s["mask"].sum())) < 0.2 * s["mask"].sum()


def test_phone_hdr_lifts_dark_regions_and_lowers_bright_ones():
    s = _sample(64)
    fg = np.zeros((64, 64, 3), np.uint8)
    fg[:, :32], fg[:, 32:] = 40, 220
    out = perturb_sample({**s, "fg_bg": fg}, "hdr", seed=0)["fg_bg"].astype(int)
    assert out[:, :16].mean() > 40 + 10 and out[:, 48:].mean() < 220 - 10
