"""A finished run trained for more epochs (N -> N+k): it continues, the OneCycle schedule is re-timed to the new end,
the extension is recorded and said; fewer epochs is refused."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tiny import run_tiny  # noqa: E402

from eva_helpers.training.checkpoint import load_checkpoint  # noqa: E402
from eva_helpers.errors import EvaError  # noqa: E402


def _onecycle_lr_after(steps: int, total: int, max_lr: float) -> float:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=max_lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total)
    for _ in range(steps):
        opt.step()
        sched.step()
    return sched.get_last_lr()[0]


def test_finished_run_extended_from_2_to_4_epochs(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        first = run_tiny(tmp_path, n=16, val=4, epochs=2)
        assert first["finished"] and first["extensions"] == []
        spe = first["global_step"] // 2  # steps per epoch (16 samples, batch 4)
        capsys.readouterr()
        ext = run_tiny(tmp_path, n=16, val=4, epochs=4)
        out = capsys.readouterr().out
        again = run_tiny(tmp_path, n=16, val=4, epochs=4)  # finished at 4: nothing more to do, recorded once
    finally:
        torch.set_num_threads(threads)
    assert "extending" in out and "from 2 to 4 epochs" in out and "re-timed" in out
    assert ext["finished"] and ext["global_step"] == 4 * spe and again["global_step"] == 4 * spe
    assert [r["epoch"] for r in ext["history"]] == [0, 1, 2, 3]
    record = {"from_epochs": 2, "to_epochs": 4, "at_epoch": 2, "global_step": 2 * spe}
    assert json.loads((tmp_path / "extensions.json").read_text()) == [record]
    assert ext["extensions"] == again["extensions"] == [record]
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] == 4
    ck = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ck["scheduler"]["total_steps"] == 4 * spe  # the schedule now ends with epoch 4
    # after the extension the learning rate follows a OneCycle over 4 epochs (not the old 2-epoch one, which had ended)
    lr_epoch3 = ext["history"][2]["lr"]
    assert lr_epoch3 == pytest.approx(_onecycle_lr_after(3 * spe, 4 * spe, 1e-2), rel=1e-6)
    assert ext["history"][3]["lr"] < lr_epoch3  # and anneals towards the new end


def test_fewer_epochs_is_refused(tmp_path):
    threads = torch.get_num_threads()
    try:
        run_tiny(tmp_path, n=8, val=4, epochs=2)
        with pytest.raises(EvaError, match="extended to more epochs, not shortened"):
            run_tiny(tmp_path, n=8, val=4, epochs=1)
    finally:
        torch.set_num_threads(threads)
