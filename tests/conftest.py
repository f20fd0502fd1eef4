"""Shared fixtures: a tiny dataset built from the embedded sample and a tiny trained run (session-scoped, CPU)."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TQDM_DISABLE", "1")
# verification records and rebuilt indexes go to a throw-away cache, never the user's ~/.cache/eva-maskdepth
_TEST_CACHE = None if os.environ.get("EVA_CACHE") else tempfile.mkdtemp(prefix="eva-test-cache-")
if _TEST_CACHE:
    os.environ["EVA_CACHE"] = _TEST_CACHE
# the temp folder of the processes the tests start: a child killed mid-save (the kill-and-resume tests) cannot remove
# its eva-ckpt-* copy, so each run of the suite would leave ~1 GB of them in /tmp. This process keeps the usual one.
_CHILD_TMP = tempfile.mkdtemp(prefix="eva-test-tmp-")
os.environ["TMPDIR"] = _CHILD_TMP


def pytest_sessionfinish(session, exitstatus) -> None:
    shutil.rmtree(_CHILD_TMP, ignore_errors=True)
    if _TEST_CACHE:
        shutil.rmtree(_TEST_CACHE, ignore_errors=True)


@pytest.fixture
def one_thread():
    """torch on one thread for the test (deterministic CPU training, and no stall on a busy shared machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory) -> Path:
    """The embedded sample at 32 px, one position per (bg, fg, flip): 384 composites, geometric teacher."""
    from eva_helpers.compositing.build import build_dataset
    from eva_helpers.paths import sample_assets

    out = tmp_path_factory.mktemp("data") / "sample-32"
    build_dataset(sample_assets() / "bg", sample_assets() / "fg", out, size=32, positions=1, seed=0, shard_size=128,
                  workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, sample_dataset) -> Path:
    """A joint unet_small trained for a few steps: enough to exercise eval, predict and the CLI."""
    import torch

    from eva_helpers.training.config import TrainConfig
    from eva_helpers.training.trainer import fit

    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("runs") / "joint"
    fit(TrainConfig(task="joint", data=str(sample_dataset), run_dir=str(run_dir), model="unet_small", epochs=1,
                    batch_size=16, size=32, seed=0, workers=0, max_steps=3, progress=False))
    return run_dir
