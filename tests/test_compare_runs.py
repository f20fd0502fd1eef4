"""Notebook 05's comparison compares like with like: single-task runs are found by their config.json (any RUN_NAME, a
"-2" run after a rebuilt dataset), every field that changes results is compared or shown in the table, and the runs
TRAIN_MISSING trains start cold at one size instead of inheriting the joint run's INIT_FROM and SIZE_STAGES.
Run folders are faked (config.json as fit writes it, summary.json, metrics.json): nothing trains."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from eva_helpers.colab.runs import compare_runs, notebook_config
from eva_helpers.paths import mount_drive

JOINT = {"mask_iou": 0.5, "depth_rmse": 0.2}
SMALL = {"model": "unet_small", "epochs": 3, "batch_size": 4, "size": 32}


@pytest.fixture
def paths(tmp_path, monkeypatch):
    monkeypatch.setenv("EVA_CACHE", str(tmp_path / "cache"))
    return mount_drive(tmp_path / "home")


def _fake_run(cfg, metrics: dict | None = None, identity: str | None = None) -> Path:
    """A finished run folder of `cfg` as fit leaves it: config.json (with the dataset identity), summary, metrics."""
    from eva_helpers.training.run_folder import check_config

    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    config = check_config(run, cfg)[0]
    if identity:
        config["dataset_identity"] = identity
    (run / "config.json").write_text(json.dumps(config))
    (run / "summary.json").write_text(json.dumps({"finished": True, "global_step": 6}))
    (run / "metrics.json").write_text(json.dumps(metrics or {"mask_iou": 0.9, "depth_rmse": 0.1}))
    return run


def _fake_fit(monkeypatch) -> list:
    """fit as compare_runs calls it, recording each config and leaving a finished run behind."""
    trained = []

    def fit(cfg, **kw):
        trained.append(cfg)
        _fake_run(cfg, {"mask_iou": 0.7, "depth_rmse": 0.3})
        return {"finished": True}

    monkeypatch.setattr("eva_helpers.colab.runs.fit", fit)
    return trained


def test_runs_under_any_run_name_are_found_by_their_config(paths, sample_dataset, capsys):
    joint = notebook_config("joint", sample_dataset, paths, **SMALL, run_name="joint-2")
    # the rebuilt-dataset refusal's advice: the old mask run keeps the default name, the new one is "-2"
    old = _fake_run(notebook_config("mask", sample_dataset, paths, **SMALL), {"mask_iou": 0.1}, identity="0" * 64)
    new = _fake_run(notebook_config("mask", sample_dataset, paths, **SMALL, run_name=f"{old.name}-2"))
    mine = _fake_run(notebook_config("depth", sample_dataset, paths, **SMALL, run_name="my depth run"))
    results = compare_runs(joint, JOINT)
    assert results["mask-only unet_small"]["mask_iou"] == 0.9
    assert Path(results["mask-only unet_small"]["run_dir"]) == new
    assert Path(results["depth-only unet_small"]["run_dir"]) == mine
    assert "no finished" not in capsys.readouterr().out


def test_an_unmatched_run_of_the_same_dataset_says_what_differs(paths, sample_dataset, capsys):
    joint = notebook_config("joint", sample_dataset, paths, **SMALL)
    _fake_run(notebook_config("mask", sample_dataset, paths, **SMALL), identity="0" * 64)
    results = compare_runs(joint, JOINT, tasks=("mask",))
    out = capsys.readouterr().out
    assert list(results) == ["joint unet_small"]
    assert "left out" in out and "dataset content: 000000000000 ->" in out and "no finished mask-only run" in out


@pytest.mark.parametrize("field, theirs", [("batch_size", 8), ("lr", 3e-3), ("second_shot", "off"),
                                           ("independent_jitter", True), ("crop_scale", [0.6, 1.0]),
                                           ("model_kwargs", {"stem": "two"})])
def test_every_result_changing_field_is_compared(paths, sample_dataset, capsys, field, theirs):
    joint = notebook_config("joint", sample_dataset, paths, **SMALL)
    _fake_run(replace(notebook_config("mask", sample_dataset, paths, **SMALL), **{field: theirs}))
    results = compare_runs(joint, JOINT, tasks=("mask",))
    out = capsys.readouterr().out
    assert "mask-only unet_small" not in results
    assert "left out" in out and f"{field}: " in out


def test_train_missing_starts_cold_at_one_size(paths, sample_dataset, monkeypatch, capsys):
    trained = _fake_fit(monkeypatch)
    mask_name = Path(notebook_config("mask", sample_dataset, paths, **SMALL).run_dir).name
    # the joint run warm-starts from notebook 03's mask run, which is missing: it must not start from itself
    joint = notebook_config("joint", sample_dataset, paths, **SMALL, init_from=mask_name, size_stages="16:1")
    assert joint.init_from and joint.size_stages
    results = compare_runs(joint, JOINT, train_missing=True)
    assert sorted(c.task for c in trained) == ["depth", "mask"]
    for c in trained:
        assert c.init_from is None and c.size_stages is None and c.loss_weighting == "fixed"
    assert {"mask-only unet_small", "depth-only unet_small", "joint unet_small"} == set(results)


def test_train_missing_does_not_reuse_a_folder_of_other_settings(paths, sample_dataset, monkeypatch, capsys):
    trained = _fake_fit(monkeypatch)
    joint = notebook_config("joint", sample_dataset, paths, **SMALL)
    other = _fake_run(notebook_config("mask", sample_dataset, paths, **{**SMALL, "epochs": 5}))
    results = compare_runs(joint, JOINT, train_missing=True, tasks=("mask",))
    assert [Path(c.run_dir) for c in trained] == [Path(f"{other}-2")]
    assert json.loads((other / "config.json").read_text())["epochs"] == 5  # left as it was
    assert Path(results["mask-only unet_small"]["run_dir"]) == Path(f"{other}-2")


def test_the_table_shows_how_each_run_started(paths, sample_dataset, capsys):
    from eva_helpers.colab.notebook_train import comparison

    joint = notebook_config("joint", sample_dataset, paths, **SMALL, loss_weighting="uncertainty")
    src = _fake_run(notebook_config("mask", sample_dataset, paths, **{**SMALL, "size": 16}, run_name="small"))
    _fake_run(notebook_config("mask", sample_dataset, paths, **SMALL, init_from=src.name, size_stages="16:1"))
    _fake_run(notebook_config("depth", sample_dataset, paths, **SMALL))
    comparison(joint, JOINT)
    table = (Path(joint.run_dir) / "comparison.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:] if line}
    head = table.splitlines()[0]
    assert "run" in head and "trained" in head
    assert "warm start from small" in rows["mask-only unet_small"] and "16 px" in rows["mask-only unet_small"]
    assert "from scratch" in rows["depth-only unet_small"] and "from scratch" in rows["joint unet_small"]
    assert "uncertainty" in rows["joint unet_small"] and "fixed" in rows["depth-only unet_small"]


def test_an_unfinished_matching_run_continues_with_its_own_settings(paths, sample_dataset, monkeypatch, capsys):
    joint = notebook_config("joint", sample_dataset, paths, **SMALL)
    src = _fake_run(notebook_config("mask", sample_dataset, paths, **SMALL, run_name="first"))
    run = _fake_run(notebook_config("mask", sample_dataset, paths, **SMALL, run_name="mine", init_from=src.name))
    os.utime(src / "config.json", (1, 1))  # both match: the newer of two unfinished runs is the one to continue
    (run / "summary.json").write_text(json.dumps({"finished": False, "global_step": 2}))
    assert "mask-only unet_small" in compare_runs(joint, JOINT, tasks=("mask",))  # a finished match comes first
    (src / "summary.json").unlink()
    assert "mask-only unet_small" not in compare_runs(joint, JOINT, tasks=("mask",))
    assert f"({run} is unfinished)" in capsys.readouterr().out
    trained = _fake_fit(monkeypatch)
    compare_runs(joint, JOINT, train_missing=True, tasks=("mask",))
    assert [(Path(c.run_dir), c.init_from) for c in trained] == [(run, str(src))]  # resumed as it was started
