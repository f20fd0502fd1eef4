"""CheckpointManager: atomic files with checksums, fallback past damaged files, refusal of pickled objects, pruning."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from eva_helpers.checkpoint import (BEST, CKPT_DIR, LAST, CheckpointManager, load_checkpoint, rng_state,
                                    set_rng_state)
from eva_helpers.errors import EvaError, IntegrityError


def _state(step: int) -> dict:
    return {"global_step": step, "epoch": 0, "model": {"w": torch.full((4, 4), float(step))},
            "history": [{"epoch": 0, "train_loss": 0.5}], "config": {"task": "mask", "lr": 1e-3, "workers": None}}


class NotPlain:  # a class weights_only=True cannot rebuild
    def __init__(self):
        self.x = 1


def test_save_writes_copies_and_sidecars_and_prunes(tmp_path):
    m = CheckpointManager(tmp_path, keep_last=2, interval_s=1e9)
    for step in (1, 2, 3):
        m.save(_state(step), best=step == 2)
    d = tmp_path / CKPT_DIR
    assert sorted(p.name for p in d.glob("ckpt-*.pt")) == ["ckpt-000000002.pt", "ckpt-000000003.pt"]
    assert not (d / "ckpt-000000001.pt.sha256").exists()  # pruned together with its file
    for name in (LAST, BEST):
        p = d / name
        assert p.is_file() and not p.is_symlink()  # Drive: no symlinks, no hard links
        assert p.stat().st_nlink == 1
    assert load_checkpoint(d / LAST)["global_step"] == 3
    assert load_checkpoint(d / BEST)["global_step"] == 2
    assert json.loads((d / (LAST + ".sha256")).read_text())["global_step"] == 3
    assert m.load_latest()["global_step"] == 3


def test_maybe_save_respects_the_interval(tmp_path):
    m = CheckpointManager(tmp_path, interval_s=3600)
    calls = []
    assert m.maybe_save(lambda: calls.append(1) or _state(1)) is None and not calls  # state not even built
    m.interval_s = 0.0
    assert m.maybe_save(lambda: _state(5)).name == "ckpt-000000005.pt"


def test_truncated_newest_is_skipped_with_a_warning(tmp_path):
    m = CheckpointManager(tmp_path, keep_last=3, interval_s=1e9)
    for step in (10, 20, 30):
        m.save(_state(step))
    d = tmp_path / CKPT_DIR
    for name in (LAST, "ckpt-000000030.pt"):  # the newest state, in both places, cut short
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="truncated or corrupt"):
        state = CheckpointManager(tmp_path).load_latest()
    assert state["global_step"] == 20
    assert torch.equal(state["model"]["w"], torch.full((4, 4), 20.0))


def test_missing_sidecar_means_unfinished_write(tmp_path):
    m = CheckpointManager(tmp_path, interval_s=1e9)
    m.save(_state(1))
    m.save(_state(2))
    d = tmp_path / CKPT_DIR
    (d / "ckpt-000000002.pt.sha256").unlink()
    (d / (LAST + ".sha256")).unlink()
    with pytest.warns(UserWarning, match="no checksum"):
        assert m.load_latest()["global_step"] == 1
    with pytest.raises(IntegrityError):
        load_checkpoint(d / LAST)


def test_stale_temp_files_are_removed(tmp_path):
    d = tmp_path / CKPT_DIR
    d.mkdir()
    (d / ".tmp-last.pt.abc").write_bytes(b"half a checkpoint")
    CheckpointManager(tmp_path)
    assert not list(d.glob(".tmp-*"))


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
