"""Every file the package reads back is checked on load (calibration.json, stats.json, config.json, history.jsonl),
JSON it writes is strict, the dataset path in config.json resolves from anywhere, a missing normalisation is an error,
and a full disk names the folder and leaves no temp file."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from eva_helpers import atomic
from eva_helpers.evaluation.calibrate import fit_postprocess, save_calibration
from eva_helpers.training.trained_run import load_calibration
from eva_helpers.errors import EvaError, WriteError


@pytest.mark.parametrize("text", ['{"threshold": 5, "morph": false}', '{"threshold": NaN, "morph": false}',
                                  '{"threshold": -1, "morph": false}', '{"threshold": Infinity, "morph": false}',
                                  '{"threshold": "yes", "morph": false}', '{"threshold": 0.5, "morph": "yes"}',
                                  '{"threshold": 1.0, "morph": false}', '[0.5]', '\xff\xfe'])
def test_a_damaged_calibration_is_one_line_saying_to_recalibrate(tmp_path, text):
    (tmp_path / "calibration.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(EvaError) as e:
        load_calibration(tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "calibration.json") in msg and "eva eval" in msg and "\n" not in msg


def test_calibration_is_written_as_strict_json_and_reads_back(tmp_path):
    logits = torch.randn(4, 1, 8, 8)
    target = (torch.rand(4, 1, 8, 8) > 0.5).float()
    calib = fit_postprocess([(logits, target, ["one"] * 4)])  # one background: t_needed would be infinite
    save_calibration(tmp_path, calib)
    text = (tmp_path / "calibration.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in calibration.json"))
    assert load_calibration(tmp_path)["threshold"] == calib["threshold"]
    with pytest.raises(EvaError):
        save_calibration(tmp_path, {**calib, "threshold": float("nan")})
    assert json.loads(text) == json.loads((tmp_path / "calibration.json").read_text())  # the refused one not written


def test_strict_json_replaces_non_finite_numbers():
    assert json.loads(atomic.json_text({"a": float("inf"), "b": [float("nan"), 1.5], "c": Path("x")})) == \
        {"a": None, "b": [None, 1.5], "c": "x"}


def test_history_with_non_utf8_bytes_skips_the_line(tmp_path):
    from eva_helpers.evaluation.heldout import training_speed
    from eva_helpers.training.run_folder import read_history

    (tmp_path / "history.jsonl").write_bytes(b'{"epoch": 1, "samples_per_s": 10.0}\n\xff\xfe\x80garbage\n'
                                             b'{"epoch": 2, "samples_per_s": 20.0}\n{"epoch": 3, "samp')
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        rows = read_history(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2] and "2 damaged line(s)" in str(w[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert training_speed(tmp_path) == 15.0


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "\xff"])
def test_a_damaged_config_json_is_one_line(tmp_path, text):
    from eva_helpers.training.run_folder import read_run_config

    (tmp_path / "config.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(EvaError) as e:
        read_run_config(tmp_path)
    assert str(tmp_path / "config.json") in str(e.value) and "\n" not in str(e.value)


def test_stats_with_two_channels_or_zero_std_are_refused(tmp_path):
    from eva_helpers.data.stats import read_stats_file

    good = {"mean": [0.5] * 3, "std": [0.2] * 3}
    for bad in ({"bg": {"mean": [0.5] * 2, "std": [0.2] * 2}, "fg_bg": good},
                {"bg": good, "fg_bg": {"mean": [0.5] * 3, "std": [0.2, 0.0, 0.2]}}):
        (tmp_path / "stats.json").write_text(json.dumps(bad))
        with pytest.raises(EvaError, match="unusable normalisation stats"):
            read_stats_file(tmp_path / "stats.json")


def test_relative_dataset_paths_resolve_from_the_run_folder_then_the_current_one(tmp_path, monkeypatch):
    from eva_helpers.training.config import TrainConfig
    from eva_helpers.training.run_folder import resolve_data

    (tmp_path / "run" / "ds").mkdir(parents=True)
    (tmp_path / "cwd" / "other").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "cwd")
    assert resolve_data("ds", tmp_path / "run") == tmp_path / "run" / "ds"
    assert resolve_data("other", tmp_path / "run") == Path("other")
    assert resolve_data(str(tmp_path / "x"), tmp_path / "run") == tmp_path / "x"
    assert TrainConfig(data="rel/ds").to_dict()["data"] == str(tmp_path / "cwd" / "rel" / "ds")


def test_missing_normalisation_is_an_error_saying_how_to_get_it_back(tmp_path):
    from eva_helpers.training.trained_run import load_run_stats

    with pytest.raises(EvaError) as e:
        load_run_stats(tmp_path, tmp_path / "gone")
    msg = str(e.value)
    assert "stats.json" in msg and "eva stats --data" in msg and "\n" not in msg


@pytest.mark.slow
def test_predict_from_another_folder_finds_the_datasets_stats(tmp_path, sample_dataset):
    """A run trained with a relative --data, its stats.json deleted, predicted from another folder: the dataset's
    stats are found (config.json holds the path absolute), and the depth map equals the one with the run's copy."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(sample_dataset, work / "ds")
    env = {**os.environ, "MPLBACKEND": "Agg"}
    eva = [sys.executable, "-m", "eva_helpers.cli"]
    subprocess.run(eva + ["train", "--task", "depth", "--data", "ds", "--run-dir", "run", "--epochs", "1",
                          "--batch-size", "16", "--size", "32", "--max-steps", "1", "--workers", "0"],
                   cwd=work, env=env, check=True, capture_output=True)
    rng = np.random.default_rng(0)
    from PIL import Image

    bg = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(bg).save(tmp_path / "bg.png")
    Image.fromarray(np.clip(bg.astype(int) + 40, 0, 255).astype(np.uint8)).save(tmp_path / "fg.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def predict(out: str) -> bytes:
        subprocess.run(eva + ["predict", "--run-dir", str(work / "run"), "--bg", str(tmp_path / "bg.png"), "--fg-bg",
                              str(tmp_path / "fg.png"), "--out", out], cwd=elsewhere, env=env, check=True,
                       capture_output=True)
        return (elsewhere / out / "depth.png").read_bytes()

    with_copy = predict("a")
    (work / "run" / "stats.json").unlink()
    assert predict("b") == with_copy
    (work / "ds" / "stats.json").unlink()
    res = subprocess.run(eva + ["predict", "--run-dir", str(work / "run"), "--bg", str(tmp_path / "bg.png"),
                                "--fg-bg", str(tmp_path / "fg.png"), "--out", "c"], cwd=elsewhere, env=env,
                         capture_output=True, text=True)
    assert res.returncode != 0 and "eva stats --data" in res.stderr and "Traceback" not in res.stderr
    assert not (elsewhere / "c").exists()


def test_a_full_disk_names_the_folder_and_leaves_no_temp_file(tmp_path, monkeypatch):
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(atomic.os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    folder = tmp_path / "run"
    with pytest.raises(WriteError) as e:
        atomic.atomic_write_text(folder / "config.json", "{}")
    msg = str(e.value)
    assert str(folder) in msg and "MB free" in msg and "full" in msg and "\n" not in msg
    assert list(folder.iterdir()) == []
