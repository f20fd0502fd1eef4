"""CheckpointManager: fixed names (no Drive trash), atomic files with checksums, a valid file after a kill at any stage
of a save, fallback past damaged files, local-only extras, refusal of pickled objects."""
from __future__ import annotations

import json
import random
import warnings

import numpy as np
import pytest
import torch

from eva_helpers.atomic import TMP_PREFIX
from eva_helpers.training.checkpoint import (BEST, CHECKPOINTS, LAST, PREV, CheckpointManager, load_checkpoint, rng_state,
                                    set_rng_state)
from eva_helpers.errors import EvaError, IntegrityError


def _state(step: int) -> dict:
    return {"global_step": step, "epoch": 0, "model": {"w": torch.full((4, 4), float(step))},
            "history": [{"epoch": 0, "train_loss": 0.5}], "config": {"task": "mask", "lr": 1e-3, "workers": None}}


class NotPlain:  # a class weights_only=True cannot rebuild
    def __init__(self):
        self.x = 1


def test_fixed_names_no_deletions_one_upload_per_save(tmp_path):
    m = CheckpointManager(tmp_path, keep_last=2, interval_s=1e9)
    for step in (1, 2, 3):
        m.save(_state(step), best=step == 2)
    d = tmp_path / CHECKPOINTS
    assert sorted(p.name for p in d.iterdir()) == sorted(
        [BEST, BEST + ".sha256", LAST, LAST + ".sha256", PREV, PREV + ".sha256"])  # no ckpt-N: nothing to delete
    for name in (LAST, PREV, BEST):
        p = d / name
        assert p.is_file() and not p.is_symlink()  # Drive: no symlinks, no hard links
        assert p.stat().st_nlink == 1
    assert load_checkpoint(d / LAST)["global_step"] == 3
    assert load_checkpoint(d / PREV)["global_step"] == 2
    assert load_checkpoint(d / BEST)["global_step"] == 2
    assert json.loads((d / (LAST + ".sha256")).read_text())["global_step"] == 3
    assert m.load_latest()["global_step"] == 3
    size = (d / LAST).stat().st_size
    ckpt_bytes = m.bytes_written - sum(len((d / (n + ".sha256")).read_bytes()) for n in (LAST, PREV, BEST)) * 3
    assert 4 * size <= ckpt_bytes + 3 * 200 and m.bytes_written < 4 * size + 2000  # 3 saves + 1 best: one copy each
    assert m.bytes_dropped < 2 * size + 2000  # only prev.pt was replaced (once per save after the second)


def test_due_respects_the_interval(tmp_path):
    m = CheckpointManager(tmp_path, interval_s=3600)
    assert not m.due()
    m.interval_s = 0.0
    assert m.due() and m.save(_state(5)).name == LAST
    assert load_checkpoint(tmp_path / CHECKPOINTS / LAST)["global_step"] == 5


def test_truncated_newest_is_skipped_with_a_warning(tmp_path):
    m = CheckpointManager(tmp_path, keep_last=3, interval_s=1e9)
    for step in (10, 20, 30):
        m.save(_state(step))
    d = tmp_path / CHECKPOINTS
    data = (d / LAST).read_bytes()
    (d / LAST).write_bytes(data[: len(data) // 2])  # the newest state cut short
    with pytest.warns(UserWarning, match="truncated or corrupt"):
        state = CheckpointManager(tmp_path).load_latest()
    assert state["global_step"] == 20
    assert torch.equal(state["model"]["w"], torch.full((4, 4), 20.0))


def test_missing_sidecar_means_unfinished_write(tmp_path):
    m = CheckpointManager(tmp_path, interval_s=1e9)
    m.save(_state(1))
    m.save(_state(2))
    d = tmp_path / CHECKPOINTS
    (d / (LAST + ".sha256")).unlink()
    with pytest.warns(UserWarning, match="checksum file .* is missing"):
        assert m.load_latest()["global_step"] == 1
    with pytest.raises(IntegrityError):
        load_checkpoint(d / LAST)
    m.save(_state(3))  # an unverified last.pt is not rotated into prev.pt: prev keeps the last good one
    assert load_checkpoint(d / PREV)["global_step"] == 1 and m.load_latest()["global_step"] == 3


KILL = """
import sys, torch
sys.path[:0] = [sys.argv[2], sys.argv[2] + "/tests"]
import _faults
_faults.install()
from eva_helpers.training.checkpoint import CheckpointManager
m = CheckpointManager(sys.argv[1], keep_last=2, interval_s=1e9)
for step in (1, 2, 3):
    m.save({"global_step": step, "epoch": 0, "model": {"w": torch.full((64, 64), float(step))}}, best=step == 3)
print("SURVIVED")
"""


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["local", "copy", "last", "rotate", "last-renamed", "best", "best-renamed"])
def test_killed_at_any_stage_of_a_save_leaves_a_valid_checkpoint(tmp_path, stage):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "EVA_CKPT_FAULT": f"{stage}:{3 if stage in ('local', 'copy', 'last') else 1 if 'best' in stage else 2}"}
    r = subprocess.run([sys.executable, "-c", KILL, str(tmp_path), root], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == -9 and "SURVIVED" not in r.stdout, r.stderr  # SIGKILLed mid-save
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = CheckpointManager(tmp_path).load_latest()
    expect = {"local": 2, "copy": 2, "last": 2, "rotate": 2, "last-renamed": 1, "best": 3, "best-renamed": 3}[stage]
    assert state is not None and state["global_step"] == expect
    assert torch.equal(state["model"]["w"], torch.full((64, 64), float(expect)))
    CheckpointManager(tmp_path)  # the next run clears the half-written temp file
    assert not list((tmp_path / CHECKPOINTS).glob(TMP_PREFIX + "*"))


def test_extra_history_is_kept_only_locally(tmp_path):
    local = tmp_path / "local"
    m = CheckpointManager(tmp_path / "run", keep_last=4, interval_s=1e9, local_dir=local)
    for step in (1, 2, 3, 4, 5):
        m.save(_state(step))
    assert sorted(p.name for p in local.glob("*.pt")) == ["ckpt-000000004.pt", "ckpt-000000005.pt"]
    assert not list((tmp_path / "run" / CHECKPOINTS).glob("ckpt-*"))
    d = tmp_path / "run" / CHECKPOINTS
    for name in (LAST, PREV):  # both run-folder copies damaged: the local history still resumes
        (d / name).write_bytes(b"damaged")
    with pytest.warns(UserWarning):
        assert CheckpointManager(tmp_path / "run", local_dir=local).load_latest()["global_step"] == 5


def test_run_folder_of_the_older_layout_still_loads(tmp_path):
    d = tmp_path / CHECKPOINTS
    d.mkdir()
    for step in (7, 8):  # ckpt-N.pt files as older versions wrote them, no last.pt
        torch.save(_state(step), d / f"ckpt-{step:09d}.pt")
        data = (d / f"ckpt-{step:09d}.pt").read_bytes()
        import hashlib

        (d / f"ckpt-{step:09d}.pt.sha256").write_text(json.dumps(
            {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "global_step": step}))
    assert CheckpointManager(tmp_path).load_latest()["global_step"] == 8


def test_stale_temp_files_are_removed(tmp_path):
    d = tmp_path / CHECKPOINTS
    d.mkdir()
    (d / f"{TMP_PREFIX}last.pt.abc").write_bytes(b"half a checkpoint")
    CheckpointManager(tmp_path)
    assert not list(d.glob(TMP_PREFIX + "*"))


def test_pickled_object_is_refused(tmp_path):
    m = CheckpointManager(tmp_path, interval_s=1e9)
    bad = _state(7)
    bad["extra"] = NotPlain()
    m.save(bad)  # written with a valid checksum: the refusal must come from weights_only, not from corruption
    with pytest.raises(EvaError, match="refusing to load") as e:
        m.load_latest()
    assert not isinstance(e.value, IntegrityError)
    assert "ckpt-000000007.pt" in str(e.value) or LAST in str(e.value)


def test_no_checkpoint_gives_none(tmp_path):
    assert CheckpointManager(tmp_path).load_latest() is None


def test_rng_state_round_trip_and_weights_only(tmp_path):
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's legacy state
    state = rng_state()
    expect = (random.random(), np.random.standard_normal(), torch.rand(3))
    torch.save({"rng": state}, tmp_path / "r.pt")
    loaded = torch.load(tmp_path / "r.pt", weights_only=True)["rng"]
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(loaded)
    got = (random.random(), np.random.standard_normal(), torch.rand(3))
    assert got[0] == expect[0] and got[1] == expect[1] and torch.equal(got[2], expect[2])


def test_full_training_state_loads_weights_only(tmp_path):
    """Optimizer, OneCycle/Plateau schedulers and GradScaler states are plain containers (weights_only loads them)."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    one = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=10)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    m = CheckpointManager(tmp_path, interval_s=1e9)
    m.save({"global_step": 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "onecycle": one.state_dict(), "plateau": plateau.state_dict(), "scaler": scaler.state_dict(),
            "rng": rng_state()})
    back = m.load_latest()
    assert torch.equal(back["model"]["weight"], model.weight.detach())
    assert back["onecycle"]["total_steps"] == 10


def _big_state(step: int, kb: int = 400) -> dict:
    return {**_state(step), "blob": torch.full((kb * 256,), float(step))}  # kb KiB of float32


def _saves_failing_at(m: CheckpointManager, stage: str, step: int) -> str:
    """Save once so that the copy onto `stage` ("last" or "best") is the one that finds the disk full; the message."""
    from eva_helpers.errors import WriteError

    with pytest.raises(WriteError) as e:
        m.save(_big_state(step), best=stage == "best")
    return str(e.value)


def _check_full_disk_left_things_whole(d, message: str, last_step: int, best_step: int) -> None:
    assert "\n" not in message and str(d) in message and "full" in message, message
    assert not [p.name for p in d.iterdir() if p.name.startswith(TMP_PREFIX)]  # the disk is not kept full
    assert load_checkpoint(d / LAST)["global_step"] == last_step
    assert load_checkpoint(d / BEST)["global_step"] == best_step


def test_a_full_disk_at_each_save_names_the_folder_and_leaves_no_temp_file(tmp_path, monkeypatch):
    """Issue 28: a disk that fills while training said "the disk is full" without the folder and left
    checkpoints/.eva-tmp-best.pt.new (or last) behind. Simulated here (ENOSPC once the copy has begun)."""
    import errno
    import shutil as real_shutil
    import types

    from eva_helpers.training import checkpoint

    for stage in ("last", "best"):
        m = CheckpointManager(tmp_path / stage, keep_last=2, interval_s=1e9)
        m.save(_state(1), best=True)
        m.save(_state(2))
        calls = []

        def full(fin, fout, length=0, calls=calls, nth=1 if stage == "last" else 2):
            calls.append(1)
            if len(calls) == nth:
                fout.write(b"x" * 100)
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_shutil.copyfileobj(fin, fout, length)

        monkeypatch.setattr(checkpoint, "shutil", types.SimpleNamespace(copyfileobj=full))
        message = _saves_failing_at(m, stage, 3)
        monkeypatch.undo()
        _check_full_disk_left_things_whole(m.dir, message, 3 if stage == "best" else 2, 1)
        assert load_checkpoint(m.dir / PREV)["global_step"] == (2 if stage == "best" else 1)


def test_a_full_local_temp_folder_is_one_line_naming_it(tmp_path, monkeypatch):
    from eva_helpers.errors import WriteError
    from eva_helpers.training import checkpoint

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0\nmore lines")

    m = CheckpointManager(tmp_path, keep_last=2, interval_s=1e9)
    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(WriteError) as e:
        m.save(_state(1))
    assert "\n" not in str(e.value) and "TMPDIR" in str(e.value) and "eva-ckpt-" in str(e.value)
    assert not (tmp_path / CHECKPOINTS / LAST).exists()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 1 MB tmpfs (where this machine lets the tests mount one: root on Linux), else skipped."""
    import subprocess

    where = tmp_path / "small"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (the simulated full disk above runs everywhere)")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_small_tmpfs_fills_at_each_save_and_no_temp_file_is_left(small_tmpfs):
    m = CheckpointManager(small_tmpfs, keep_last=2, interval_s=1e9)
    m.save(_big_state(1), best=True)  # last + best: 800 KB of 1 MB
    _check_full_disk_left_things_whole(m.dir, _saves_failing_at(m, "last", 2), 1, 1)
    (m.dir / BEST).unlink()
    m.save(_big_state(2))  # last 2, prev 1
    (m.dir / PREV).unlink()
    message = _saves_failing_at(m, "best", 3)  # last 3 and prev 2 fit, best does not
    assert "\n" not in message and str(m.dir) in message and "full" in message, message
    assert not [p.name for p in m.dir.iterdir() if p.name.startswith(TMP_PREFIX)]
    assert load_checkpoint(m.dir / LAST)["global_step"] == 3


def test_resume_refuses_a_checkpoint_written_under_an_older_lease_than_another(tmp_path):
    """A writer that lost the folder between confirming its lease and writing (the one window the lease cannot close)
    leaves a newer-by-step checkpoint under an older lease number: resume refuses it in one line, naming both."""
    m = CheckpointManager(tmp_path, keep_last=2, interval_s=1e9)
    m.writer = {"fence": 1, "host": "old-runtime", "pid": 11}
    m.save(_state(1))
    m.writer = {"fence": 2, "host": "new-runtime", "pid": 22}
    m.save(_state(2))  # the new holder resumed from step 1
    assert m.load_latest()["writer"]["fence"] == 2  # a normal takeover loads the new holder's checkpoint
    m.writer = {"fence": 1, "host": "old-runtime", "pid": 11}
    m.save(_state(5))  # the paused writer, waking
    with pytest.raises(EvaError) as e:
        CheckpointManager(tmp_path, keep_last=2, interval_s=1e9, is_main=False).load_latest()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / CHECKPOINTS / LAST))
    assert "lease #1 (host old-runtime, pid 11)" in msg and "lease #2 (host new-runtime, pid 22)" in msg
    assert "prev.pt" in msg
