"""Scoring at the photo's size (evaluation/photo_size.py): the run's own composites built larger, predicted as
`eva predict` predicts, the baseline at that size; a dataset that is not the run's composites is refused in one line."""
from __future__ import annotations

import json
import shutil

import pytest

from eva_helpers.errors import EvaError
from eva_helpers.compositing.build import build_larger
from eva_helpers.evaluation.photo_size import check_same_composites, score_at_photo_size
from eva_helpers.paths import sample_assets

pytestmark = pytest.mark.slow  # a second build of the sample and a few dozen predictions: ~10 s


@pytest.fixture(scope="module")
def larger(sample_dataset, tmp_path_factory):
    return build_larger(sample_dataset, 2, sample_assets(), out=tmp_path_factory.mktemp("data") / "sample-64")


def test_the_runs_split_is_scored_at_the_photos_size(tmp_path, trained_run, larger):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    m = score_at_photo_size(run, larger, limit=12, max_fit=8, progress=False)
    assert m["photo_size"] == 64 and m["model_size"] == 32 and m["n_images"] == 12
    for who in ("upsampled", "refined", "baseline"):
        assert 0.0 <= m[f"{who}_mask_iou"] <= 1.0 and 0.0 <= m[f"{who}_boundary_iou"] <= 1.0
    assert json.loads((run / "metrics-photo-64px.json").read_text())["refined_mask_iou"] == m["refined_mask_iou"]
    noisy = score_at_photo_size(run, larger, perturb="noise8", limit=12, max_fit=8, progress=False)
    assert noisy["perturb"] == "noise8" and (run / "metrics-photo-64px-noise8.json").is_file()
    assert noisy["baseline_mask_iou"] != m["baseline_mask_iou"]  # the change reached the scored pairs


def test_another_build_is_refused_in_one_line(sample_dataset, larger, tmp_path):
    from eva_helpers.compositing.build import build_dataset

    other = tmp_path / "other"
    build_dataset(sample_assets() / "bg", sample_assets() / "fg", other, size=64, positions=1, seed=1, shard_size=128,
                  workers=1, progress=False)
    with pytest.raises(EvaError, match="seed differ") as e:
        check_same_composites(sample_dataset, other)
    assert "\n" not in str(e.value)
    with pytest.raises(EvaError, match="not larger"):
        check_same_composites(larger, sample_dataset)
    check_same_composites(sample_dataset, larger)


def test_eva_eval_photo_size(tmp_path, trained_run, sample_dataset, larger, capsys):
    from eva_helpers.cli import main

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert main(["eval", "--run-dir", str(run), "--data", str(sample_dataset), "--photo-size", str(larger),
                 "--split", "val"]) in (0, None)
    m = json.loads(capsys.readouterr().out)
    assert m["split"] == "val" and m["photo_size"] == 64 and (run / "metrics-photo-64px-val.json").is_file()
    assert main(["eval", "--run-dir", str(run), "--data", str(sample_dataset), "--photo-size",
                 str(sample_dataset)]) == 2
    assert "not larger" in capsys.readouterr().err
