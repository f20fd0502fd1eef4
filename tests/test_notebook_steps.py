"""The notebook steps as plain functions: dataset choice (SMOKE alone, after 01, missing, unfinished), teacher "auto"
on a resumed build, run-folder names, SMOKE configs, the comparison's explicit choice, upload validation, the Drive
flush and the environment banner."""
from __future__ import annotations

import json
import shutil
import sys
import types

import numpy as np
import pytest

from eva_helpers.errors import BadInputError, EvaError
from eva_helpers.paths import mount_drive


@pytest.fixture
def paths(tmp_path, monkeypatch):
    monkeypatch.setenv("EVA_CACHE", str(tmp_path / "cache"))
    return mount_drive(tmp_path / "home")


def test_smoke_alone_uses_the_shipped_sample_and_after_01_its_build(paths, sample_dataset, capsys):
    from eva_helpers.colab.notebook import dataset_for

    alone = dataset_for("my-dataset", paths, smoke=True)
    assert alone.name == "sample" and (alone / "manifest.json").is_file()
    assert "shipped 64 px sample" in capsys.readouterr().out
    shutil.copytree(sample_dataset, paths.data / "my-dataset-smoke")  # what notebook 01 with SMOKE leaves
    (paths.data / "my-dataset-smoke" / "stats.json").write_text(json.dumps({"schema": "x"}))
    after = dataset_for("my-dataset", paths, smoke=True)
    assert after == paths.data / "my-dataset-smoke" and "shipped" not in capsys.readouterr().out


def test_missing_or_unfinished_dataset_says_run_01(paths, sample_dataset):
    from eva_helpers.colab.notebook import dataset_for

    with pytest.raises(EvaError, match="run notebook 01 first") as e:
        dataset_for("my-dataset", paths)
    assert str(paths.data / "my-dataset") in str(e.value) and "min" in str(e.value)  # where, and how long
    half = paths.data / "my-dataset"
    shutil.copytree(sample_dataset, half)
    m = json.loads((half / "manifest.json").read_text())
    (half / "manifest.json").write_text(json.dumps({**m, "complete": False}))
    with pytest.raises(EvaError, match="not finished; run notebook 01 again"):
        dataset_for("my-dataset", paths)


def test_stats_on_drive_follow_the_dataset_into_the_cache(paths, sample_dataset, monkeypatch):
    from eva_helpers.colab import notebook

    origin = paths.data / "mine"
    shutil.copytree(sample_dataset, origin)
    (origin / "stats.json").write_text('{"schema": "eva-stats/1"}')
    cache = paths.cache / "mine"
    monkeypatch.setattr("eva_helpers.colab.notebook.resolve_dataset",
                        lambda name, p: shutil.copytree(origin, cache, ignore=shutil.ignore_patterns("stats.json"))
                        or cache)  # a Drive folder copied to the cache (without stats.json, as fetch does)
    assert notebook.dataset_for("mine", paths) == cache
    assert (cache / "stats.json").read_text() == '{"schema": "eva-stats/1"}'
    stats = notebook.explore_stats(cache, limit=20)  # notebook 02 in a later session: the new stats go back to Drive
    assert json.loads((origin / "stats.json").read_text())["samples"] == stats["samples"] == 20


def test_auto_teacher_keeps_the_recorded_one(tmp_path, capsys):
    import torch

    from eva_helpers.colab.notebook import resolve_teacher

    assert resolve_teacher("geometric", tmp_path) == "geometric"
    if torch.cuda.is_available():
        assert resolve_teacher("auto", tmp_path / "new") == "depth-anything-v2-small"
    else:  # never the geometric teacher unasked (tests/test_honest_labels.py)
        with pytest.raises(EvaError, match="no GPU"):
            resolve_teacher("auto", tmp_path / "new")
    (tmp_path / "manifest.json").write_text(json.dumps({"params": {"teacher": "depth-anything-v2-small"}}))
    assert resolve_teacher("auto", tmp_path) == "depth-anything-v2-small"  # a reconnect to a CPU runtime keeps it
    if not torch.cuda.is_available():
        assert "Change runtime type > GPU" in capsys.readouterr().out


def test_build_plan_smoke(paths):
    from eva_helpers.colab.notebook import SMOKE_BUILD, build_plan

    plan = build_plan(paths, True, dataset="d", size=224, positions=20)
    assert plan.out_dir == paths.data / "d-smoke" and plan.size == SMOKE_BUILD["size"] and plan.positions == 1
    assert plan.teacher == "geometric" and (plan.bg_dir / "..").resolve().name == "sample_assets"


def test_notebook_config_defaults_smoke_and_run_folder(paths, tmp_path):
    from eva_helpers.training.config import TrainConfig
    from eva_helpers.colab.runs import SMOKE_TRAIN, notebook_config

    d = TrainConfig()
    cfg = notebook_config("mask", tmp_path / "ds-a", paths, model="", epochs=0)
    assert cfg.model == d.model and cfg.epochs == d.epochs and cfg.size == d.size  # empty/0 = TrainConfig's default
    assert cfg.run_dir == str(paths.runs / f"mask-{d.model}-{d.size}px-ds-a")
    other = notebook_config("mask", tmp_path / "ds-b", paths)
    assert other.run_dir != cfg.run_dir  # another dataset never lands in the same run folder
    smoke = notebook_config("joint", tmp_path / "ds-a", paths, True, model="resnet34_unet", epochs=50,
                            loss_weighting="uncertainty")
    assert {k: getattr(smoke, k) for k in SMOKE_TRAIN} == SMOKE_TRAIN and smoke.loss_weighting == "uncertainty"
    assert notebook_config("mask", "x", paths, run_name="mine").run_dir == str(paths.runs / "mine")


def test_comparison_never_trains_without_the_explicit_choice(paths, tmp_path, monkeypatch, capsys):
    from eva_helpers.colab.runs import compare_runs, notebook_config

    monkeypatch.setattr("eva_helpers.colab.runs.fit", lambda *a, **k: pytest.fail("must not train"))
    cfg = notebook_config("joint", tmp_path / "ds", paths)
    results = compare_runs(cfg, {"mask_iou": 0.5}, train_missing=False)
    assert list(results) == [f"joint {cfg.model}"]
    out = capsys.readouterr().out
    assert "no finished mask-only run" in out and "TRAIN_MISSING = True" in out and "notebook 04" in out


def test_upload_validation(tmp_path, monkeypatch):
    import cv2

    from eva_helpers.colab.notebook_train import check_upload

    monkeypatch.chdir(tmp_path)
    png = lambda w, h: cv2.imencode(".png", np.zeros((h, w, 3), np.uint8))[1].tobytes()  # noqa: E731
    bg = check_upload({"room.png": png(40, 30)}, "step 1")
    assert bg.shape == (30, 40, 3) and (tmp_path / "uploads" / "room.png").is_file()
    with pytest.raises(BadInputError, match="exactly one photo"):
        check_upload({"a.png": png(4, 4), "b.png": png(4, 4)}, "step 1")
    with pytest.raises(BadInputError, match="exactly one photo"):
        check_upload({}, "step 2")
    with pytest.raises(BadInputError, match="notes.txt"):
        check_upload({"notes.txt": b"not an image"}, "step 2", like=bg)
    with pytest.raises(BadInputError, match="41x30 but the background is 40x30"):
        check_upload({"cat.png": png(41, 30)}, "step 2", like=bg)
    # a browser's name never leaves the uploads folder: "..", "", a Windows path, a drive letter
    for name in ("..", "", "C:\\Users\\me\\..", "a:b.PNG"):
        assert check_upload({name: png(40, 30)}, "step 2", like=bg).shape == (30, 40, 3)
    assert sorted(p.name for p in (tmp_path / "uploads").iterdir()) == ["cat.png", "notes.txt", "room.png",
                                                                          "upload-step-2", "upload-step-2.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["uploads"]


def test_finish_flushes_drive_in_colab_only(paths, monkeypatch):
    from eva_helpers.paths import Paths
    from eva_helpers.colab.session import finish

    assert "nothing to flush" in finish(paths)
    calls = []
    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(flush_and_unmount=lambda: calls.append("flush"))
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    on_drive = Paths(**{**paths.__dict__, "on_drive": True})
    assert "flushed" in finish(on_drive) and calls == ["flush"]


def test_environment_banner():
    from eva_helpers.colab.session import environment

    env = environment()
    assert set(env) == {"gpu", "ram", "disk", "cpus", "versions", "code"}
    assert "torch" in env["versions"] and "eva_helpers" in env["versions"] and "GiB" in env["disk"]
    assert env["code"].startswith("eva_helpers ") and "commit" in env["code"]  # which code runs: seen after a reconnect


def test_user_errors_in_a_notebook_are_one_line_and_stop_run_all(paths, capsys, monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell

    from eva_helpers.colab.session import start

    shell = InteractiveShell.instance()
    try:
        start(paths.root)
        res = shell.run_cell("from eva_helpers.errors import EvaError\nraise EvaError('/x/data: run notebook 01 first')")
        err = capsys.readouterr().err
        assert res.error_in_exec is not None  # the cell fails, so "Run all" stops here
        assert err.strip() == "error: /x/data: run notebook 01 first" and "Traceback" not in err
    finally:
        InteractiveShell.clear_instance()


def test_browsers_build_and_redraw(sample_dataset, monkeypatch):
    """The widgets themselves (the headless notebook runs draw only their first item)."""
    import matplotlib

    matplotlib.use("Agg")
    from eva_helpers.data.dataset import ShardDataset, make_splits
    from eva_helpers.colab.widgets import sample_browser

    ds = ShardDataset(sample_dataset)
    splits = make_splits(ds)
    monkeypatch.delenv("EVA_NO_WIDGETS", raising=False)
    box = sample_browser(ds, splits)
    choice, slider = box.children[0].children
    assert list(choice.options) == ["all", "train", "val", "test"] and slider.max == len(ds) - 1
    choice.value = "test"  # redraws: the slider now spans the test split
    assert slider.max == len(splits["test"]) - 1
    slider.value = slider.max
    monkeypatch.setenv("EVA_NO_WIDGETS", "1")
    assert sample_browser(ds, splits).__class__.__name__ == "Figure"
