"""A run folder is tied to its dataset's content identity: the same dataset at another path resumes, another is refused
with a message naming both (issue 11 item 3)."""
from __future__ import annotations

import json
import shutil

import pytest

from _synthetic import write_synthetic_dataset
from eva_helpers.data import formats
from eva_helpers.training.config import TrainConfig
from eva_helpers.errors import EvaError
from eva_helpers.data.verify import dataset_identity
from eva_helpers.training.trainer import fit


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EVA_CACHE", str(tmp_path / "cache"))


def _cfg(data, run_dir):
    return TrainConfig(task="mask", data=str(data), run_dir=str(run_dir), model="unet_small", epochs=1, batch_size=8,
                       size=32, seed=0, workers=0, max_steps=1, progress=False)


def test_identity_follows_content_not_path(tmp_path):
    a = write_synthetic_dataset(tmp_path / "a", n_bg=6, n_fg=2, positions=1, size=32)
    b = write_synthetic_dataset(tmp_path / "b", n_bg=6, n_fg=3, positions=1, size=32)
    moved = tmp_path / "drive" / "a"
    shutil.copytree(a, moved)
    ida, idb = (dataset_identity(formats.read_manifest(d)) for d in (a, b))
    assert ida == dataset_identity(formats.read_manifest(moved)) and ida != idb

    run = tmp_path / "run"
    fit(_cfg(a, run))
    assert json.loads((run / "config.json").read_text())["dataset_identity"] == ida
    assert fit(_cfg(moved, run))["global_step"] == 1  # same dataset elsewhere: resumes (here: already finished)
    with pytest.raises(EvaError) as e:
        fit(_cfg(b, run))
    msg = str(e.value)
    assert ida[:12] in msg and idb[:12] in msg and str(b) in msg and "\n" not in msg
