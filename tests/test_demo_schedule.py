"""The demo's schedule: the joint model first, the mask and depth models fine-tuned from it; a plan with a time per
part printed first, a line per part, and a second run that reuses what the first finished."""
from __future__ import annotations

import json
import re

import pytest

from eva_helpers.demo import DEFAULT_MINUTES, DEMO_RUNS, DemoRun, describe, run_demo


def test_minutes_scale_every_epoch_count_and_keep_stages_shorter_than_their_run():
    joint = DemoRun("joint", 24, ((32, 12),))
    assert joint.scaled(1.0) == joint
    assert joint.scaled(0.5) == DemoRun("joint", 12, ((32, 6),))
    tiny = joint.scaled(0.01)  # each count at least 1, and at least one epoch at the demo's size after the stages
    assert tiny.size_stages == ((32, 1),) and tiny.epochs == 2
    assert DemoRun("mask", 3, start_from="joint").scaled(0.01).epochs == 1
    assert describe(joint, 64) == "joint model: 12 epochs at 32 px, then 12 at 64 px, from scratch"
    assert describe(DEMO_RUNS[1], 64) == "mask model: 3 epochs at 64 px, from the joint model's best.pt"


def test_every_start_names_an_earlier_run():
    for i, run in enumerate(DEMO_RUNS):
        assert run.start_from is None or run.start_from in [r.task for r in DEMO_RUNS[:i]]


@pytest.mark.slow
def test_the_demo_prints_its_plan_trains_in_order_and_reuses_finished_runs(tmp_path, capsys):
    out = tmp_path / "demo"
    small = dict(size=48, positions=1, workers=0, train_overrides={"progress": False})
    minutes = DEFAULT_MINUTES / 100  # one epoch per training (and one at 32 px for the joint model)
    report = run_demo(out, minutes=minutes, **small)
    text = capsys.readouterr().out
    plan = text[:text.index("[1/5]")]
    assert re.search(r"eva demo: 5 parts, about \d+(\.\d)? (s|min) on this machine", plan)
    assert len(re.findall(r"^  [1-5]\. .*: about \d+(\.\d)? (s|min)$", plan, re.M)) == 5
    assert "joint model: 1 epoch at 32 px, then 1 at 48 px, from scratch" in plan
    assert len(re.findall(r"^\[[1-5]/5\] done in \d+ s \(estimated ", text, re.M)) == 5

    runs = out / "runs"
    configs = {name: json.loads((runs / f"{name}-unet_small" / "config.json").read_text()) for name in
               ("joint", "mask", "depth")}
    assert configs["joint"]["init_from"] is None and configs["joint"]["size_stages"] == [[32, 1]]
    for name in ("mask", "depth"):
        assert configs[name]["init_from"] == str(runs / "joint-unet_small")
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["joint-unet_small"]["mask_iou"] is not None and metrics["depth-unet_small"]["depth_rmse"] is not None
    assert metrics["photo_size"]["run"] == "joint-unet_small"
    body = report.read_text()
    assert "- mask model: 1 epoch at 48 px, from the joint model's best.pt." in body
    footage = metrics["footage"]  # the clip: every frame predicted and scored, the strip drawn
    assert footage["run"] == "joint-unet_small" and footage["frames"] == 60 and 0 <= footage["mask_iou"] <= 1
    assert "## Footage from a fixed camera" in body and (out / "report" / "footage.png").stat().st_size > 1000

    run_demo(out, minutes=minutes, **small)  # again: the three trainings are reused, not repeated
    again = capsys.readouterr().out
    assert again.count("finished before, reused") == 3
