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


@pytest.mark.slow  # a fresh interpreter that imports torch
def test_eval_without_checkpoint_is_one_line_error(tmp_path, sample_dataset):
    r = eva("eval", "--run-dir", str(tmp_path / "nothing"), "--data", str(sample_dataset))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_build_then_predict_via_cli(tmp_path, trained_run, monkeypatch, capsys):
    """`eva build` on the embedded sample, then `eva predict` on one of the pairs it built (upscaled: any size in,
    same size out), both through the CLI's entry point."""
    from PIL import Image

    from eva_helpers.data import formats
    from eva_helpers.cli import main
    from eva_helpers.data.dataset import ShardDataset
    from eva_helpers.paths import sample_assets

    monkeypatch.setenv("EVA_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "built"
    assert main(["build", "--bg", str(sample_assets() / "bg"), "--fg", str(sample_assets() / "fg"), "--out",
                 str(data), "--size", "32", "--positions", "1", "--limit", "40", "--workers", "1"]) == 0
    capsys.readouterr()
    m = formats.read_manifest(data)
    assert m["complete"] and m["counts"]["samples"] == 40 and m["params"]["size"] == 32
    ds = ShardDataset(data)
    assert len(ds) == 40
    s = ds[len(ds) - 1]
    assert s["fg_bg"].shape == s["bg"].shape == (32, 32, 3) and s["mask"].any()
    Image.fromarray(s["bg"]).resize((50, 40)).save(tmp_path / "bg.png")
    Image.fromarray(s["fg_bg"]).resize((50, 40)).save(tmp_path / "fg_bg.png")
    pred = tmp_path / "pred"
    assert main(["predict", "--run-dir", str(trained_run), "--bg", str(tmp_path / "bg.png"), "--fg-bg",
                 str(tmp_path / "fg_bg.png"), "--out", str(pred)]) == 0
    printed = capsys.readouterr().out.split()
    for name in ("mask.png", "depth.png", "prediction.png"):
        assert str(pred / name) in printed and (pred / name).stat().st_size > 0
    mask, depth = Image.open(pred / "mask.png"), Image.open(pred / "depth.png")
    mask.load()
    depth.load()  # a truncated or invalid PNG fails here
    assert mask.size == depth.size == (50, 40)
    assert mask.mode == "L" and set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
    assert depth.mode.startswith("I")  # 16-bit
    with Image.open(pred / "prediction.png") as fig:
        fig.load()
        assert fig.width > 50 and fig.height > 40  # the side-by-side figure


@pytest.mark.slow  # a fresh interpreter that imports torch
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


def test_cli_defaults_are_the_code_defaults():
    """`eva train` and `eva build` without options give TrainConfig's and build_dataset's defaults: one source."""
    import inspect

    from eva_helpers.cli.commands import train_config_from_args
    from eva_helpers.cli.parser import build_parser
    from eva_helpers.compositing.build import build_dataset
    from eva_helpers.training.config import TrainConfig

    a = build_parser().parse_args(["train", "--task", "joint", "--data", "d", "--run-dir", "r"])
    assert train_config_from_args(a).to_dict() == TrainConfig(task="joint", data="d", run_dir="r").to_dict()
    b = vars(build_parser().parse_args(["build", "--bg", "b", "--fg", "f", "--out", "o"]))
    for name, p in inspect.signature(build_dataset).parameters.items():
        if name in b and p.default is not inspect.Parameter.empty:
            assert b[name] == p.default, name
