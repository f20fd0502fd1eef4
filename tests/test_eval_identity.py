"""`eva eval` on another dataset than the run's: scored whole as unseen data, with the run's own thresholds, into
metrics-data-<name>-<identity>.json (calibration.json and metrics.json untouched); one sharing a training background is refused in one
line; every metrics file names the dataset it scored."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from eva_helpers.errors import EvaError


def _state(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, trained_run, sample_dataset):
    """A copy of the tiny run, evaluated on its own dataset, and the run's split of the sample's backgrounds."""
    from eva_helpers.evaluation.heldout import evaluate_run
    from eva_helpers.training.trained_run import load_run

    root = tmp_path_factory.mktemp("ident")
    run = root / "run"
    shutil.copytree(trained_run, run)
    own = evaluate_run(run, sample_dataset, figure=False, progress=False)
    cfg = load_run(run)[1]
    ids = cfg.splits(sample_dataset)["info"]["bg_ids"]
    return root, run, own, ids


def _build(root: Path, name: str, bg_ids: list[str]) -> Path:
    """A dataset built (32 px, like the sample) from the sample's backgrounds `bg_ids` and all of its cut-outs."""
    from eva_helpers.compositing.build import build_dataset
    from eva_helpers.paths import sample_assets

    bg = root / f"{name}-bg"
    bg.mkdir()
    for p in (sample_assets() / "bg").iterdir():
        if p.stem in bg_ids:
            shutil.copy(p, bg / p.name)
    out = root / name
    build_dataset(bg, sample_assets() / "fg", out, size=32, positions=1, seed=1, shard_size=128, workers=1,
                  progress=False)
    return out


def test_metrics_json_names_the_dataset_it_scored(setup, sample_dataset):
    from eva_helpers.training.run_folder import recorded_identity

    _, run, own, _ = setup
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["dataset"]["path"] == str(sample_dataset.resolve())
    assert saved["dataset"]["identity"] == recorded_identity(run) == own["dataset"]["identity"]


def test_another_dataset_is_scored_whole_with_the_runs_own_thresholds(setup):
    from eva_helpers.data.dataset import ShardDataset
    from eva_helpers.evaluation.heldout import evaluate_run

    root, run, own, ids = setup
    other = _build(root, "unseen", ids["val"] + ids["test"])
    before = _state(run)
    m = evaluate_run(run, other, figure=False, progress=False)
    after = _state(run)
    name = f"metrics-data-unseen-{m['dataset']['identity'][:8]}.json"
    assert set(after) - set(before) == {name}
    assert {k: v for k, v in after.items() if k in before} == before  # calibration.json, metrics.json untouched
    assert m["n_images"] == len(ShardDataset(other)) and m["split"] == "all (unseen dataset)"
    assert m["mask_threshold"] == own["mask_threshold"] and m["baseline_threshold"] == own["baseline_threshold"]
    assert m["dataset"]["path"] == str(other.resolve()) and m["dataset"]["identity"] != own["dataset"]["identity"]
    assert json.loads(after[name]) == json.loads(json.dumps(m))


def test_a_dataset_sharing_a_training_background_is_refused_and_nothing_written(setup):
    from eva_helpers.evaluation.heldout import evaluate_run

    root, run, _, ids = setup
    leaky = _build(root, "leaky", [ids["train"][0]] + ids["test"])
    before = _state(run)
    with pytest.raises(EvaError) as e:
        evaluate_run(run, leaky, figure=False, progress=False)
    msg = str(e.value)
    assert str(leaky) in msg and "not unseen data" in msg and ids["train"][0] in msg and "\n" not in msg
    assert _state(run) == before
