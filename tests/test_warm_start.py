"""Warm starts: a new run starts from another run's weights where they fit, records where from, and refuses an
incompatible source in one line before anything is created."""
from __future__ import annotations

import json

import pytest
import torch

from _synthetic import write_synthetic_dataset
from eva_helpers.training import warm_start
from eva_helpers.training.checkpoint import load_checkpoint
from eva_helpers.training.config import TrainConfig
from eva_helpers.errors import EvaError
from eva_helpers.training.trainer import fit


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EVA_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("ws") / "data", n_bg=6, n_fg=2, positions=1, size=32)


def _cfg(data, run_dir, task="mask", size=32, **kw):
    return TrainConfig(**{"task": task, "data": str(data), "run_dir": str(run_dir), "model": "unet_small", "epochs": 1,
                          "batch_size": 8, "size": size, "seed": 0, "workers": 0, "max_steps": 2, "progress": False,
                          **kw})


@pytest.fixture(scope="module")
def mask_run(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("ws") / "mask"
    fit(_cfg(data, run))
    return run


def test_joint_run_from_a_mask_run_loads_the_shared_weights(data, mask_run, tmp_path, monkeypatch, capsys):
    seen = {}
    real = warm_start.load_into

    def spy(model, record):
        out = real(model, record)
        seen["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return out

    monkeypatch.setattr("eva_helpers.training.trainer.load_into", spy)
    run = tmp_path / "joint"
    summary = fit(_cfg(data, run, task="joint", size=64, init_from=str(mask_run)))  # another size: convs do not mind
    source = load_checkpoint(mask_run / "checkpoints" / "best.pt")["model"]
    state = seen["state"]
    shared = [k for k in source if k in state]
    assert shared and all(torch.equal(state[k], source[k]) for k in shared)
    assert any(k.startswith("heads.depth") for k in state) and not any(k.startswith("heads.depth") for k in source)
    out = capsys.readouterr().out
    assert "starting fresh: heads.depth" in out and str(mask_run / "checkpoints" / "best.pt") in out
    init = json.loads((run / "config.json").read_text())["init"]
    sidecar = json.loads((mask_run / "checkpoints" / "best.pt.sha256").read_text())
    assert init["run_dir"] == str(mask_run.resolve()) and init["checkpoint"].endswith("best.pt")
    assert init["sha256"] == sidecar["sha256"] and len(init["sha256"]) == 64
    assert summary["init"] == init and json.loads((run / "summary.json").read_text())["init"] == init
    # resuming the finished run neither reloads the source nor rewrites where it started
    seen.clear()
    fit(_cfg(data, run, task="joint", size=64, init_from=str(mask_run)))
    assert not seen and json.loads((run / "config.json").read_text())["init"] == init


@pytest.mark.parametrize("change, words", [
    ({"model_kwargs": {"inputs": "diff"}}, "inputs 'tolerant' there, 'diff' here"),
    ({"model": "unet_medium"}, "name 'unet_small' there, 'unet_medium' here"),
    ({"task": "depth"}, "share nothing"),
])
def test_an_incompatible_start_is_one_line_and_creates_nothing(data, mask_run, tmp_path, change, words):
    run = tmp_path / "new"
    kw = {"task": change.pop("task", "mask"), **change}
    with pytest.raises(EvaError) as e:
        fit(_cfg(data, run, init_from=str(mask_run), **kw))
    msg = str(e.value)
    assert words in msg and "\n" not in msg and str(mask_run) in msg
    assert not run.exists()


def test_a_source_that_trained_on_since_is_refused(mask_run, tmp_path):
    record = warm_start.source_record(str(mask_run), "best")
    model = torch.nn.Module()
    with pytest.raises(EvaError, match="sha256"):
        warm_start.load_into(model, {**record, "sha256": "0" * 64})


def test_a_missing_source_run_is_one_line(data, tmp_path):
    with pytest.raises(EvaError) as e:
        fit(_cfg(data, tmp_path / "new", init_from=str(tmp_path / "nowhere")))
    assert "no such run folder" in str(e.value) and not (tmp_path / "new").exists()


def test_config_checks_init_which():
    with pytest.raises(EvaError, match="init_which"):
        TrainConfig(init_which="first")


def test_a_run_from_before_warm_starts_resumes(data, tmp_path):
    run = tmp_path / "old"
    first = fit(_cfg(data, run))
    cfg_path = run / "config.json"
    old = json.loads(cfg_path.read_text())
    for k in ("init_from", "init_which"):
        old.pop(k)
    cfg_path.write_text(json.dumps(old))
    assert fit(_cfg(data, run))["global_step"] == first["global_step"]  # finished: nothing refused or retrained
