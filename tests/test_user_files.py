"""Only the package's own temp files are ever removed: a user's look-alike `.tmp-*` file survives build, train, fetch
and extract, while our stale `TMP_PREFIX` files are cleaned (issue 11 item 4)."""
from __future__ import annotations

import pytest
import torch

from _build_helpers import sample_inputs
from _tiny import run_tiny
from eva_helpers.atomic import TMP_PREFIX
from eva_helpers.compositing.build import BuildConflictError, build_dataset

LOOKALIKE = ".tmp-my-notes.txt"  # what the first round deleted as "stale temp files"
KW = dict(size=32, positions=1, seed=0, shard_size=10, workers=1, progress=False)


def _plant(*folders):
    for d in folders:
        d.mkdir(parents=True, exist_ok=True)
        (d / LOOKALIKE).write_text("mine")
        (d / f"{TMP_PREFIX}stale.abc").write_text("ours, from a killed run")


def _survived(*folders) -> bool:
    assert folders, "no folder to check"
    return all((d / LOOKALIKE).read_text() == "mine" and not (d / f"{TMP_PREFIX}stale.abc").exists() for d in folders)


def test_build_resume_keeps_a_users_lookalike_file(tmp_path):
    inputs = sample_inputs(tmp_path / "in")
    out = tmp_path / "ds"
    build_dataset(*inputs, out, **KW)
    _plant(out, out / "shards")
    build_dataset(*inputs, out, **KW)  # a resume: verifies, cleans our temp files, touches nothing else
    assert _survived(out, out / "shards")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / LOOKALIKE).write_text("mine")
    with pytest.raises(BuildConflictError, match="not empty"):  # a user's file is not ours to build over
        build_dataset(*inputs, fresh, **KW)
    assert (fresh / LOOKALIKE).read_text() == "mine"


def test_training_keeps_a_users_lookalike_file(tmp_path):
    threads = torch.get_num_threads()
    try:
        _plant(tmp_path, tmp_path / "checkpoints")
        run_tiny(tmp_path, n=8, val=4, epochs=1)
    finally:
        torch.set_num_threads(threads)
    assert _survived(tmp_path, tmp_path / "checkpoints")


def test_fetch_and_extract_keep_a_users_lookalike_file(tmp_path):
    from eva_helpers.data.extract import extract_dataset
    from eva_helpers.fetching.fetch import fetch_dataset

    cache = tmp_path / "cache"
    path = fetch_dataset("sample", cache=cache, progress=False)
    (path / LOOKALIKE).write_text("mine")
    (cache / LOOKALIKE).write_text("mine")
    fetch_dataset("sample", cache=cache, progress=False)  # verified, nothing fetched again
    assert (path / LOOKALIKE).read_text() == "mine" and (cache / LOOKALIKE).read_text() == "mine"
    target = tmp_path / "extracted"
    (tmp_path / LOOKALIKE).write_text("mine")  # beside the target, where extraction makes its temp folder
    extract_dataset(path, target)
    assert (tmp_path / LOOKALIKE).read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)]
