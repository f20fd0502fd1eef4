"""Artefacts written by the code from before the package redesign (commit 9a9bbea, the flat `eva_helpers/*.py` layout)
still load with the current code: a dataset folder opens, verifies and reads the same samples, and a run folder is
scored the same, predicts the same and resumes where it stopped (then extends).

The artefacts are checked in (tests/fixtures/old_layout/, written by tests/fixtures/make_old_layout.py with that
commit's code): a dataset of 48 composites at 32 px and a joint unet_small run with small widths, one epoch and one
step into the second. The current code is driven through its public entry points (`eva_helpers.cli.main`, `fit`,
`ShardDataset`), so the test survives further internal moves.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "old_layout"
BATCH = 8
MODEL_KWARGS = {"widths": [4, 8, 8, 16, 16]}  # the fixture's run (make_old_layout.py): small checkpoints
# the same settings for the old run and for the current code that resumes it
TRAIN = dict(task="joint", model="unet_small", batch_size=BATCH, size=32, seed=0, workers=0, model_kwargs=MODEL_KWARGS)


@pytest.fixture(scope="module")
def old() -> dict:
    """old.json's record (what the old code saw and wrote) plus the fixture's paths (read-only for the tests: a test
    that writes copies first)."""
    rec = json.loads((FIXTURE / "old.json").read_text())
    return {**rec, "data": FIXTURE / "ds", "run": FIXTURE / "run", "pair": FIXTURE / "pair", "pred": FIXTURE / "pred"}


@pytest.fixture
def eva(capsys, one_thread):
    """`eva ARGS...` through the current CLI's main, in this process -> (exit code, stdout)."""
    from eva_helpers.cli import main

    def call(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        rc = main([str(a) for a in args])
        return rc, capsys.readouterr().out

    return call


def _digest(s: dict) -> dict:
    return {k: hashlib.sha256(np.ascontiguousarray(s[k]).tobytes()).hexdigest() + str(s[k].dtype) + str(s[k].shape)
            for k in ("bg", "fg_bg", "mask", "depth")}


def _same_numbers(new, old, path="") -> None:
    """new == old, floats to 1e-6 (relative), recursively over dicts and lists."""
    if isinstance(old, dict):
        assert isinstance(new, dict) and set(new) == set(old), (path, sorted(set(new) ^ set(old)))
        for k in old:
            _same_numbers(new[k], old[k], f"{path}.{k}")
    elif isinstance(old, list):
        assert isinstance(new, list) and len(new) == len(old), path
        for i, (a, b) in enumerate(zip(new, old)):
            _same_numbers(a, b, f"{path}[{i}]")
    elif isinstance(old, float) and not isinstance(new, bool):
        assert new == pytest.approx(old, rel=1e-6, abs=1e-9, nan_ok=True), path
    else:
        assert new == old, path


def test_old_dataset_opens_verifies_and_reads_the_same(old, eva, tmp_path):
    from eva_helpers.data.dataset import ShardDataset  # the dataset reader, wherever the layout puts it next

    ds = ShardDataset(old["data"])  # verify=True: sha256 of every shard and backgrounds.zip, member CRCs, shapes
    assert len(ds) == len(old["samples"]) == 48
    assert {str(i): _digest(ds.load(i)) for i in range(len(ds))} == old["samples"]
    assert len({r["bg_id"] for r in ds.records}) == 3

    # `eva stats` on a copy (it rewrites stats.json) gives the numbers the old code wrote
    copy = tmp_path / "ds"
    shutil.copytree(old["data"], copy)
    rc, _ = eva("stats", "--data", copy)
    assert rc == 0
    _same_numbers(json.loads((copy / "stats.json").read_text()), old["stats"])


def test_old_run_evaluates_and_predicts_as_before(old, eva, tmp_path):
    from PIL import Image

    run = tmp_path / "run"
    shutil.copytree(old["run"], run)
    (run / "metrics.json").unlink()  # written again by the current code below

    rc, out = eva("eval", "--run-dir", run, "--data", old["data"])
    assert rc == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert json.loads(out) == metrics
    assert metrics["checkpoint"] == "best" and metrics["n_images"] == len(old["splits"]["test"]) == 16
    assert metrics["checkpoint_step"] == old["metrics"]["checkpoint_step"] == old["per_epoch"]
    # the same checkpoint on the same held-out split scores the same (every numeric field the old code wrote)
    where = lambda d: {k: v for k, v in d.items() if k != "path"} if isinstance(d, dict) else d  # noqa: E731
    for key, was in old["metrics"].items():
        if not key.endswith("_per_s"):  # speeds are timings; the dataset's folder moved into tests/fixtures
            assert key in metrics, key
            _same_numbers(where(metrics[key]), where(was), key)
    assert all(math.isfinite(metrics[k]) for k in ("mask_iou", "depth_rmse"))

    rc, _ = eva("predict", "--run-dir", run, "--bg", old["pair"] / "bg.png", "--fg-bg", old["pair"] / "fg_bg.png",
                "--out", tmp_path / "pred")
    assert rc == 0
    for name in ("mask.png", "depth.png"):
        with Image.open(tmp_path / "pred" / name) as new_img, Image.open(old["pred"] / name) as old_img:
            assert new_img.size == old_img.size == (48, 36) and new_img.mode == old_img.mode, name
            assert np.array_equal(np.asarray(new_img), np.asarray(old_img)), name
    assert (tmp_path / "pred" / "prediction.png").stat().st_size > 0


@pytest.fixture
def train(capsys, one_thread):
    """`fit` (the public Python entry point: the CLI has no flag for the fixture's model widths) on the old run with
    the old settings -> (what it printed, its summary)."""
    from eva_helpers.training.config import TrainConfig
    from eva_helpers.training.trainer import fit

    def call(run: Path, data: Path, epochs: int) -> tuple[str, dict]:
        capsys.readouterr()
        summary = fit(TrainConfig(**TRAIN, data=str(data), run_dir=str(run), epochs=epochs, progress=False))
        return capsys.readouterr().out, summary

    return call


def test_old_run_resumes_then_extends(old, eva, train, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(old["run"], run)
    spe, was = old["per_epoch"], old["summary"]
    assert was["global_step"] == spe + 1 and was["epochs_completed"] == 1 and not was["finished"]
    config_before = json.loads((run / "config.json").read_text())

    # the same settings, without max_steps: the old config.json and checkpoint are accepted, training continues
    # from step spe + 1 (mid second epoch) to the end of epoch 2
    out, s = train(run, old["data"], 2)
    assert "resumed from" in out and f"step {spe + 1}" in out, out
    assert s["global_step"] == 2 * spe and s["epochs_completed"] == 2 and s["finished"], s
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [0, 1] and history[1]["global_step"] == 2 * spe
    _same_numbers(history[0], old["history"][0])  # the old epoch's row is kept as the old code wrote it
    config_after = json.loads((run / "config.json").read_text())
    same = ("task", "model", "model_kwargs", "size", "batch_size", "seed", "lr", "schedule", "second_shot", "split_by",
            "val_fraction", "test_fraction", "epochs", "dataset_identity")
    assert {k: config_after.get(k) for k in same} == {k: config_before.get(k) for k in same}

    # and a finished old run extends to more epochs
    out, s = train(run, old["data"], 3)
    assert "from 2 to 3 epochs" in out, out
    assert s["global_step"] == 3 * spe and s["epochs_completed"] == 3 and s["finished"], s
    assert json.loads((run / "extensions.json").read_text()) == [
        {"from_epochs": 2, "to_epochs": 3, "at_epoch": 2, "global_step": 2 * spe}]
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [0, 1, 2]

    rc, _ = eva("eval", "--run-dir", run, "--data", old["data"])
    assert rc == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_images"] == 16 and metrics["checkpoint_step"] > spe
