"""The `eva` command: every sub-command has --help; user errors are one line, exit code 2, no traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

COMMANDS = ["build", "fetch", "stats", "train", "eval", "predict", "demo"]


def eva(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eva_helpers.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(cmd):
    r = eva(cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert "usage: eva " + cmd in r.stdout


def test_build_empty_folder_is_one_line_error(tmp_path):
    (tmp_path / "bg").mkdir()
    (tmp_path / "fg").mkdir()
    r = eva("build", "--bg", str(tmp_path / "bg"), "--fg", str(tmp_path / "fg"), "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert str(tmp_path / "bg") in r.stderr


def test_eval_without_checkpoint_is_one_line_error(tmp_path, sample_dataset):
    r = eva("eval", "--run-dir", str(tmp_path / "nothing"), "--data", str(sample_dataset))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_build_then_predict_via_cli(tmp_path, trained_run, sample_dataset):
    from PIL import Image

    from eva_helpers.dataset import ShardDataset

    s = ShardDataset(sample_dataset)[5]
    # any size in, same size out: upscale the 32 px sample pair to 50x40
    Image.fromarray(s["bg"]).resize((50, 40)).save(tmp_path / "bg.png")
    Image.fromarray(s["fg_bg"]).resize((50, 40)).save(tmp_path / "fg_bg.png")
    r = eva("predict", "--run-dir", str(trained_run), "--bg", str(tmp_path / "bg.png"), "--fg-bg",
            str(tmp_path / "fg_bg.png"), "--out", str(tmp_path / "pred"))
    assert r.returncode == 0, r.stderr
    mask = Image.open(tmp_path / "pred" / "mask.png")
    depth = Image.open(tmp_path / "pred" / "depth.png")
    assert mask.size == (50, 40) and depth.size == (50, 40)
    assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
    assert depth.mode.startswith("I")  # 16-bit
    assert (tmp_path / "pred" / "prediction.png").stat().st_size > 0


def test_predict_size_mismatch_is_clear(tmp_path, trained_run):
    from PIL import Image

    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    Image.new("RGB", (41, 30)).save(tmp_path / "b.png")
    r = eva("predict", "--run-dir", str(trained_run), "--bg", str(tmp_path / "a.png"), "--fg-bg",
            str(tmp_path / "b.png"), "--out", str(tmp_path / "pred"))
    assert r.returncode == 2 and "same size" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "pred").exists()


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_flag_is_described_with_its_default(cmd):
    import argparse

    from eva_helpers.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[cmd]
    text = sub.format_help()
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"eva {cmd} {action.option_strings or action.dest}: no help text"
        if action.option_strings and not action.required:
            assert f"(default: {action.default})" in " ".join(text.split()), f"{action.option_strings}: no default"
