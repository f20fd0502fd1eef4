"""Progressive resizing in one run: small images first, then `size`; the history records the stage, validation stays
at the final size, and a run killed in its second stage resumes to the same final weights as an uninterrupted one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _synthetic import write_synthetic_dataset
from _faults import FAULT_ENV
from eva_helpers.training.checkpoint import load_checkpoint
from eva_helpers.training.config import TrainConfig
from eva_helpers.errors import EvaError
from test_train_resume import assert_same_training

ROOT = Path(__file__).resolve().parents[1]


def _cfg(data: Path, run_dir: Path, **kw) -> dict:
    return {"task": "joint", "data": str(data), "run_dir": str(run_dir), "model": "unet_small", "epochs": 3,
            "batch_size": 4, "size": 32, "size_stages": [[16, 1]], "workers": 0, "progress": False,
            "deterministic": True, "checkpoint_interval_s": 0.0, **kw}


def _fit_in_subprocess(cfg: dict, fault: str | None = None) -> subprocess.CompletedProcess:
    """fit() in a fresh single-threaded process (deterministic on the CPU); `fault` SIGKILLs it mid-save."""
    code = ("import json, sys, torch; torch.set_num_threads(1); import _faults; _faults.install(); "
            "from eva_helpers.training.config import TrainConfig; "
            "from eva_helpers.training.trainer import fit; fit(TrainConfig(**json.loads(sys.argv[1])))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.run([sys.executable, "-c", code, json.dumps(cfg)], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_a_progressive_run_killed_in_stage_two_resumes_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("EVA_CACHE", str(tmp_path / "cache"))
    data = write_synthetic_dataset(tmp_path / "data", size=32)
    whole = _fit_in_subprocess(_cfg(data, tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    ref = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    history = ref["history"]
    assert [(r["stage"], r["size"]) for r in history] == [(0, 16), (1, 32), (1, 32)]
    per_epoch = ref["global_step"] // 3
    # a checkpoint after every step and at each epoch's end: the (per_epoch + 3)-th save is two steps into stage 2
    killed = _fit_in_subprocess(_cfg(data, tmp_path / "parts"), fault=f"copy:{per_epoch + 3}")
    assert killed.returncode == -9, killed.stderr
    left = load_checkpoint(tmp_path / "parts" / "checkpoints" / "last.pt")
    assert left["epoch"] == 1 and 0 < left["global_step"] - per_epoch < per_epoch  # mid stage 2
    again = _fit_in_subprocess(_cfg(data, tmp_path / "parts"))
    assert again.returncode == 0, again.stderr
    assert_same_training(ref, load_checkpoint(tmp_path / "parts" / "checkpoints" / "last.pt"))


def test_stages_are_checked():
    with pytest.raises(EvaError, match="size_stages"):
        TrainConfig(epochs=3, size_stages=[[32, 3]])  # no epoch left at the final size
    with pytest.raises(EvaError, match="size_stages"):
        TrainConfig(epochs=3, size_stages=[[4, 1]])
    cfg = TrainConfig(epochs=15, size=64, size_stages=[(32, 5), (48, 2)])
    assert cfg.size_stages == [[32, 5], [48, 2]]
    assert [cfg.stage_at(e) for e in (0, 4, 5, 6, 7, 14)] == [(0, 32), (0, 32), (1, 48), (1, 48), (2, 64), (2, 64)]


def test_a_stage_size_the_model_cannot_take_is_one_line_before_anything(tmp_path, monkeypatch):
    from eva_helpers.training.trainer import fit

    monkeypatch.setenv("EVA_CACHE", str(tmp_path / "cache"))
    data = write_synthetic_dataset(tmp_path / "data", size=32)
    with pytest.raises(EvaError, match="size=24 does not suit"):
        fit(TrainConfig(**_cfg(data, tmp_path / "run", size_stages=[[24, 1]])))
    assert not (tmp_path / "run").exists()


def test_cli_size_stages(tmp_path):
    from eva_helpers.cli.commands import train_config_from_args
    from eva_helpers.cli.parser import build_parser
    from eva_helpers.errors import UsageError

    args = build_parser().parse_args(["train", "--task", "joint", "--data", "d", "--run-dir", str(tmp_path / "r"), "--size", "64",
                                      "--epochs", "15", "--size-stages", "32:5", "48:2"])
    assert train_config_from_args(args).size_stages == [[32, 5], [48, 2]]
    for word in ("32:5,48:2", ""):  # one stage per word on the command line: never the first of two silently
        with pytest.raises(UsageError, match="SIZE:EPOCHS"):
            build_parser().parse_args(["train", "--data", "d", "--run-dir", "r", "--size-stages", word])
    cmd = [sys.executable, "-m", "eva_helpers.cli", "train", "--task", "joint", "--data", "d", "--run-dir", "r",
           "--size-stages", "32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode != 0 and "SIZE:EPOCHS" in proc.stderr and "Traceback" not in proc.stderr


def test_notebook_parameters(tmp_path):
    from types import SimpleNamespace

    from eva_helpers.colab.runs import notebook_config
    from eva_helpers.training.config import parse_stages

    assert parse_stages("32:5 48:2") == [[32, 5], [48, 2]] and parse_stages("32:5,48:2") == [[32, 5], [48, 2]]
    with pytest.raises(EvaError, match="SIZE:EPOCHS"):
        parse_stages("32")
    paths = SimpleNamespace(runs=tmp_path / "runs")
    cfg = notebook_config("joint", tmp_path / "data", paths, epochs=15, size=64, init_from="mask-unet_small-64px-x",
                          size_stages="32:5")
    assert cfg.init_from == str(tmp_path / "runs" / "mask-unet_small-64px-x") and cfg.size_stages == [[32, 5]]
    smoke = notebook_config("joint", tmp_path / "data", paths, True, size_stages="32:5")
    assert smoke.size_stages is None


def test_fit_leaves_no_loader_worker_behind(tmp_path, monkeypatch):
    """A notebook or a bench trains several runs in one process: each fit's (and each stage's) loader workers stop
    when they are done, not when the garbage collector gets round to the run."""
    import gc

    from eva_helpers.training import trainer as train

    def children() -> int:
        tasks = Path(f"/proc/{os.getpid()}/task")
        return sum(len((t / "children").read_text().split()) for t in tasks.iterdir())

    if not Path(f"/proc/{os.getpid()}/task").is_dir():
        pytest.skip("needs Linux's /proc")
    monkeypatch.setenv("EVA_CACHE", str(tmp_path / "cache"))
    data = write_synthetic_dataset(tmp_path / "data", size=32)
    during = []
    real = train.validate  # called at each epoch's end
    monkeypatch.setattr(train, "validate", lambda *a, **k: (during.append(children()), real(*a, **k))[1])
    gc.disable()  # what the collector would hide
    try:
        train.fit(TrainConfig(**_cfg(data, tmp_path / "run", workers=2, deterministic=False, epochs=3,
                                     checkpoint_interval_s=300.0)))
        after = children()
    finally:
        gc.enable()
    assert max(during) <= 4 and after == 0, (during, after)  # 2 training + 2 validation workers at most, then none
