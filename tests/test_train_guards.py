"""Training guards: a diverging run stops with one line before its weights turn non-finite, and normalisation stats
that would make every input NaN are refused where they are computed and where they are loaded."""
from __future__ import annotations

import json
import math

import pytest
import torch

from _tiny import TinyCriterion, TinyDataset, TinyNet, tiny_config
from eva_helpers.errors import EvaError
from eva_helpers.data.stats import check_stats, load_stats
from eva_helpers.training.trainer import NonFiniteLossError

GOOD = {"bg": {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.2, 0.2]}, "fg_bg": {"mean": [0.4, 0.5, 0.6], "std": [0.2] * 3}}


class NaNAfter(TinyCriterion):
    """The tiny criterion, whose loss turns NaN at call `bad` (a diverging run, made deterministic)."""

    def __init__(self, bad: int) -> None:
        super().__init__()
        self.bad, self.calls = bad, 0

    def forward(self, outputs, targets):
        self.calls += 1
        loss, parts = super().forward(outputs, targets)
        return (loss * math.nan if self.calls == self.bad else loss), parts


def test_a_nan_loss_stops_training_before_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    from eva_helpers.training.trainer import fit
    from eva_helpers.training.trained_run import load_run

    torch.set_num_threads(1)
    cfg = tiny_config(tmp_path, epochs=2, checkpoint_interval_s=0.0)  # a checkpoint after every step
    torch.manual_seed(cfg.seed)
    with pytest.raises(NonFiniteLossError) as e:
        fit(cfg, model=TinyNet(tasks=cfg.tasks), train_set=TinyDataset(24, cfg.size), val_set=None,
            criterion=NaNAfter(bad=4), stats=GOOD)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("step 4 (epoch 1): the loss is nan on samples [")
    assert "lr=0.01" in msg and "last good checkpoint is kept" in msg
    model, _, ckpt = load_run(tmp_path, "last", build_fn=TinyNet)
    assert ckpt["global_step"] == 3
    weights = [v for v in model.state_dict().values() if v.is_floating_point()]
    assert weights and all(torch.isfinite(v).all() for v in weights)


def test_stats_with_a_zero_or_non_finite_std_are_refused():
    assert check_stats(GOOD, "x") is GOOD
    flat = {**GOOD, "fg_bg": {"mean": [0.5] * 3, "std": [0.0, 0.1, 0.1]}}
    with pytest.raises(EvaError, match=r"^here: unusable normalisation stats \(fg_bg.std=\[0.0, 0.1, 0.1\]\)"):
        check_stats(flat, "here")
    with pytest.raises(EvaError, match="bg.mean"):
        check_stats({**GOOD, "bg": {"mean": [float("nan")] * 3, "std": [0.2] * 3}}, "here")
    with pytest.raises(EvaError, match="not normalisation stats"):
        check_stats({"bg": {}}, "here")


def test_zero_std_stats_are_refused_where_they_are_loaded(tmp_path):
    from eva_helpers.data.stats import STATS_SCHEMA

    bad = {"schema": STATS_SCHEMA, **GOOD, "bg": {"mean": [0.5] * 3, "std": [0.0] * 3}}
    (tmp_path / "stats.json").write_text(json.dumps(bad))
    with pytest.raises(EvaError, match=f"{tmp_path / 'stats.json'}: unusable"):
        load_stats(tmp_path)
    # a run folder's frozen copy is checked the same way before training or evaluating with it
    from eva_helpers.training.trained_run import load_run_stats

    with pytest.raises(EvaError, match="unusable"):
        load_run_stats(tmp_path, tmp_path)
