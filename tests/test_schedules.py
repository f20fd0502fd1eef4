"""schedule="plateau": the learning rate halves once the validation loss has not improved for `patience` (2) epochs,
and only then; the halved rate is what the optimizer (and the checkpoint) carries on with."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from _tiny import TinyDataset, TinyNet, tiny_config
from eva_helpers.training.checkpoint import load_checkpoint
from eva_helpers.training.trainer import fit


class ScriptedLoss(nn.Module):
    """A loss whose value follows a script, not the model: flat (1.0 on every call) or falling (1 / calls). Its
    gradient is zero (0 * outputs), so the weights never move and the loss is exactly what the script says."""

    def __init__(self, falling: bool) -> None:
        super().__init__()
        self.falling, self.calls = falling, 0

    def forward(self, outputs, targets):
        self.calls += 1
        value = 1.0 / self.calls if self.falling else 1.0
        loss = sum(0.0 * o.float().sum() for o in outputs.values()) + value
        return loss, {}


def _lrs(run_dir, falling: bool, epochs: int) -> list[float]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = tiny_config(run_dir, schedule="plateau", epochs=epochs, lr=0.01, checkpoint_interval_s=1e9)
        torch.manual_seed(cfg.seed)
        fit(cfg, model=TinyNet(tasks=cfg.tasks), train_set=TinyDataset(8, cfg.size), val_set=TinyDataset(4, cfg.size),
            criterion=ScriptedLoss(falling))
    finally:
        torch.set_num_threads(threads)
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == list(range(epochs))
    if not falling:
        assert {r["val_loss"] for r in history} == {1.0}  # the plateau really is flat
    else:
        assert all(a["val_loss"] > b["val_loss"] for a, b in zip(history, history[1:])) and len(history) == epochs
    return [r["lr"] for r in history]


def test_plateau_halves_the_lr_after_two_flat_epochs(tmp_path):
    lrs = _lrs(tmp_path, falling=False, epochs=5)
    # epoch 0 sets the best; epochs 1 and 2 are within patience; epoch 3 is the third without improvement
    assert lrs == pytest.approx([0.01, 0.01, 0.01, 0.005, 0.005], rel=1e-12)
    ck = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert [g["lr"] for g in ck["optimizer"]["param_groups"]] == pytest.approx([0.005], rel=1e-12)
    assert ck["scheduler"]["num_bad_epochs"] == 1  # reset by the cut at epoch 3, one flat epoch since


def test_plateau_keeps_the_lr_while_val_loss_improves(tmp_path):
    assert _lrs(tmp_path, falling=True, epochs=5) == pytest.approx([0.01] * 5, rel=1e-12)


@pytest.mark.parametrize("total", [1, 2, 3, 7, 10, 33, 96, 1000])
def test_lr_at_is_torch_onecycle_to_the_last_bit(total):
    """lr_at(step) against OneCycleLR stepped `step` times: the same learning rate and AdamW beta1, as floats, at
    every step and past the end (a resumed run positions itself by the step alone)."""
    from eva_helpers.training.config import TrainConfig
    from eva_helpers.training.trainer import lr_at

    for max_lr in (1e-2, 3e-4):
        cfg = TrainConfig(lr=max_lr)
        opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=max_lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total)
        for step in range(total + 1):
            group = opt.param_groups[0]
            assert lr_at(step, total, cfg) == (group["lr"], group["betas"][0]), (total, step)
            opt.step()
            if step < total:
                sched.step()
        assert lr_at(total + 5, total, cfg) == lr_at(total, total, cfg)


def test_plateau_lr_replays_reduce_lr_on_plateau():
    """plateau_lr over a history against ReduceLROnPlateau stepped with the same losses (val_loss, else train)."""
    from eva_helpers.training.config import TrainConfig
    from eva_helpers.training.trainer import plateau_lr

    gen = torch.Generator().manual_seed(0)
    losses = (1.0 / torch.arange(1, 41) + 0.02 * torch.rand(40, generator=gen)).tolist()
    losses[10:20] = [losses[9]] * 10  # a flat stretch: several cuts
    cfg = TrainConfig(schedule="plateau", lr=0.01)
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2)
    history = []
    for i, loss in enumerate(losses):
        ref.step(loss)
        history.append({"train_loss": 9.0, "val_loss": loss} if i % 2 else {"train_loss": loss})
        lr, record = plateau_lr(history, cfg)
        assert lr == opt.param_groups[0]["lr"] and record == {"best": ref.best, "num_bad_epochs": ref.num_bad_epochs}
    assert opt.param_groups[0]["lr"] < cfg.lr / 4  # the stretch did cut it, more than once
