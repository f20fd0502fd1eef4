"""Kill a training process at random moments (and in the middle of checkpoint writes), restart it each time, and
check it ends bit-identical to an uninterrupted run: model, optimizer, loss weights, scheduler and history."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eva_helpers.training.checkpoint import load_checkpoint, read_sidecar
from eva_helpers.training.config import TrainConfig
from eva_helpers.errors import EvaError
from eva_helpers.atomic import TMP_PREFIX

sys.path.insert(0, str(Path(__file__).parent))
from _tiny import TinyNet, run_tiny  # noqa: E402

TINY = Path(__file__).parent / "_tiny.py"
N, DELAY = 24, 0.012  # 6 batches per epoch, 3 epochs; the delay stands in for decoding so kills land mid-epoch
STEPS = 18  # optimizer steps of the whole run


def assert_same(a, b, where: str = "") -> None:
    """Recursive bit-identity of two checkpoint sub-trees (torch.equal on every tensor)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"tensor differs at {where}"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"keys differ at {where}: {set(a) ^ set(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"length differs at {where}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_training(ref: dict, got: dict) -> None:
    for key in ("model", "optimizer", "criterion", "scheduler", "global_step", "epoch", "best", "finished"):
        assert_same(ref[key], got[key], key)
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in h]  # noqa: E731
    assert_same(strip(ref["history"]), strip(got["history"]), "history")


def _step_of_last(run_dir: Path) -> int:
    meta = read_sidecar(run_dir / "checkpoints" / "last.pt")
    return int(meta["global_step"]) if meta else -1


def _launch(run_dir: Path, workers: int, fault: str | None) -> subprocess.Popen:
    env = dict(os.environ, EVA_CKPT_FAULT=fault or "", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(TINY), "--run-dir", str(run_dir), "--workers", str(workers), "--samples", str(N),
           "--delay", str(DELAY), "--interval", "0.05"]
    # its own process group: a kill takes the DataLoader workers too, as a runtime disconnect does
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


class KillMissed(Exception):
    """A random-moment kill came after the run had finished: that resume would test nothing."""


def kill_and_resume(run_dir: Path, workers: int, plan: list[str | None], rng: random.Random,
                    scale: float = 0.25) -> list[str]:
    """Each plan entry is one interrupted run: a fault stage ("copy:2" = SIGKILL halfway through copying the 2nd
    checkpoint into the run folder) or None (SIGKILL from outside at a random moment, up to `scale` seconds after new
    progress). Every kill must land mid-run: raises KillMissed when a random one came after the run had finished."""
    log = []
    for fault in plan + ["finish"] * 3:
        before = _step_of_last(run_dir)
        proc = _launch(run_dir, workers, None if fault in (None, "finish") else fault)
        if fault is None:  # random moment, but only once this run has saved something new (guaranteed progress)
            while proc.poll() is None and _step_of_last(run_dir) <= before:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, scale))
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)  # EOF only once every worker is gone too (they die with the parent)
        log.append(f"{fault}: rc={proc.returncode} step {before}->{_step_of_last(run_dir)}")
        if fault == "finish":
            assert proc.returncode == 0, out
            if "DONE" in out:
                break
        elif fault is not None:
            assert proc.returncode == -signal.SIGKILL, f"fault {fault} did not fire:\n{out}"
        else:
            assert proc.returncode in (0, -signal.SIGKILL), out  # killed, or finished first: never crashed
            if proc.returncode != -signal.SIGKILL or _step_of_last(run_dir) >= STEPS:
                raise KillMissed(f"the kill came after the run had finished: {log}")
        assert fault == "finish" or _step_of_last(run_dir) < STEPS, f"{fault} left nothing to resume: {log}"
    assert not list((run_dir / "checkpoints").glob(TMP_PREFIX + "*")), "stale temp files left behind"
    return log


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """One uninterrupted run, in this process (same threads, same deterministic settings as the subprocesses)."""
    threads = torch.get_num_threads()
    run_dir = tmp_path_factory.mktemp("ref")
    try:
        summary = run_tiny(run_dir, n=N, workers=0, checkpoint_interval_s=1e9)
    finally:
        torch.set_num_threads(threads)
    assert summary["finished"] and summary["global_step"] == STEPS
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")


@pytest.mark.slow
@pytest.mark.parametrize("workers,plan", [
    (0, ["copy:3", None, "last-renamed:2", "local:2", None]),
    (2, ["last:3", None]),
])
def test_killed_runs_end_bit_identical(tmp_path, reference, workers, plan):
    rng, missed = random.Random(1234 + workers), []
    for attempt, scale in enumerate((0.25, 0.06, 0.015)):  # a kill that came too late: again, earlier, from scratch
        run_dir = tmp_path / f"run{attempt}"
        try:
            log = kill_and_resume(run_dir, workers, plan, rng, scale)
            break
        except KillMissed as e:
            missed.append(str(e))
    else:
        pytest.fail("no attempt had every random kill land mid-run:\n" + "\n".join(missed))
    got = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert_same_training(reference, got)
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    print(log)
    assert [r["epoch"] for r in history] == [0, 1, 2], log  # one row per epoch, none duplicated by the resumes


def test_finished_run_returns_summary_without_training(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    try:
        first = run_tiny(tmp_path, n=8, val=4, epochs=1)
        mtime = (tmp_path / "checkpoints" / "last.pt").stat().st_mtime_ns
        again = run_tiny(tmp_path, n=8, val=4, epochs=1)
    finally:
        torch.set_num_threads(threads)
    assert again["finished"] and again["global_step"] == first["global_step"] == 2
    assert (tmp_path / "checkpoints" / "last.pt").stat().st_mtime_ns == mtime  # nothing was trained or saved
    assert again["best_metrics"]["epoch"] == 0 and "val_loss" in again["best_metrics"]


def test_max_steps_stops_with_checkpoint_then_continues(tmp_path):
    threads = torch.get_num_threads()
    try:
        part = run_tiny(tmp_path, n=16, val=4, epochs=2, max_steps=3)
        assert not part["finished"] and part["global_step"] == 3
        ck = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
        assert ck["global_step"] == 3 and ck["epoch"] == 0 and ck["global_consumed"] == 12  # mid-epoch position
        full = run_tiny(tmp_path, n=16, val=4, epochs=2)
    finally:
        torch.set_num_threads(threads)
    assert full["finished"] and full["global_step"] == 8


def test_resume_with_result_changing_config_is_refused(tmp_path):
    threads = torch.get_num_threads()
    try:
        run_tiny(tmp_path, n=8, val=4, epochs=1, max_steps=1)
        with pytest.raises(EvaError, match=r"config\.json.*lr"):
            run_tiny(tmp_path, n=8, val=4, epochs=1, lr=0.5)
        run_tiny(tmp_path, n=8, val=4, epochs=1, checkpoint_interval_s=3.0, keep_last=5)  # harmless changes resume
    finally:
        torch.set_num_threads(threads)


def test_load_run_rebuilds_the_model(tmp_path):
    from eva_helpers.training.trained_run import load_run

    threads = torch.get_num_threads()
    try:
        run_tiny(tmp_path, n=8, val=4, epochs=2)
    finally:
        torch.set_num_threads(threads)
    model, cfg, ckpt = load_run(tmp_path, "best", build_fn=TinyNet)
    assert isinstance(cfg, TrainConfig) and cfg.task == "joint" and not model.training
    assert_same(model.state_dict(), ckpt["model"], "model")
    with pytest.raises(EvaError, match="which"):
        load_run(tmp_path, "newest")


def test_config_round_trip_and_unknown_keys():
    cfg = TrainConfig(task="depth", epochs=2)
    assert cfg.tasks == ("depth",) and TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(EvaError, match="unknown TrainConfig field.*'epoch'"):
        TrainConfig.from_dict({"epoch": 3}, source="config.json")
    with pytest.raises(EvaError, match="schedule"):
        TrainConfig(schedule="cosine")


def test_plateau_schedule_tensorboard_and_live_plot_outside_a_notebook(tmp_path):
    """Options that must not break a plain script: live_plot is a no-op, missing tensorboard only warns."""
    import importlib.util
    import warnings

    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            s = run_tiny(tmp_path, n=8, val=4, epochs=2, schedule="plateau", live_plot=True, tensorboard=True,
                         progress=True)
    finally:
        torch.set_num_threads(threads)
    assert s["finished"] and len(s["history"]) == 2
    if importlib.util.find_spec("tensorboard") is None:
        assert any("tensorboard" in str(w.message) for w in caught)


@pytest.mark.slow
def test_real_data_path_resumes_exactly(tmp_path):
    """fit() building everything itself (ShardDataset + make_splits + resize_transform + make_loader + unet_small +
    build_criterion): stopped twice by max_steps and resumed, it ends equal to an uninterrupted run."""
    from _synthetic import write_synthetic_dataset

    from eva_helpers.training.trainer import fit

    data = write_synthetic_dataset(tmp_path / "data", size=32)

    def cfg(run: str, **kw) -> TrainConfig:
        return TrainConfig(task="joint", data=str(data), run_dir=str(tmp_path / run), model="unet_small", epochs=2,
                           batch_size=4, size=32, workers=0, progress=False, loss_weighting="uncertainty",
                           deterministic=True, checkpoint_interval_s=1e9, **kw)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        whole = fit(cfg("whole"))
        fit(cfg("parts", max_steps=2))
        fit(cfg("parts", max_steps=4))
        parts = fit(cfg("parts"))
    finally:
        torch.set_num_threads(threads)
    assert whole["finished"] and parts["finished"] and "mask_iou" in parts["best_metrics"]
    assert_same_training(load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt"),
                         load_checkpoint(tmp_path / "parts" / "checkpoints" / "last.pt"))
