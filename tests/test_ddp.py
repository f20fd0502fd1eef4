"""DDP under torchrun on CPU (gloo, 2 processes): trains, checkpoints, resumes; checkpoints cross world sizes."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eva_helpers.training.checkpoint import load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from _tiny import run_tiny  # noqa: E402
from test_train_resume import assert_same_training  # noqa: E402

TINY = Path(__file__).parent / "_tiny.py"
N = 24  # 12 samples per rank, batch 4: 3 steps per epoch under DDP, 6 in one process

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")]


def torchrun(run_dir: Path, *args: str) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(TINY),
           "--run-dir", str(run_dir), "--samples", str(N), "--epochs", "2", "--interval", "1e9", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def single(run_dir: Path, **kw) -> dict:
    threads = torch.get_num_threads()
    try:
        return run_tiny(run_dir, n=N, epochs=2, checkpoint_interval_s=1e9, **kw)
    finally:
        torch.set_num_threads(threads)


def test_ddp_trains_checkpoints_and_resumes_exactly(tmp_path):
    interrupted, whole = tmp_path / "interrupted", tmp_path / "whole"
    out = torchrun(interrupted, "--max-steps", "4")  # stops inside epoch 1
    assert out.count("DONE 4 False") == 2  # both ranks stopped at the same step
    mid = load_checkpoint(interrupted / "checkpoints" / "last.pt")
    assert mid["world_size"] == 2 and mid["epoch"] == 1 and mid["global_consumed"] == 8
    shutil.copytree(interrupted, tmp_path / "mid-copy")
    out = torchrun(interrupted)
    assert "resumed from" in out and out.count("DONE 6 True") == 2
    torchrun(whole)
    assert_same_training(load_checkpoint(whole / "checkpoints" / "last.pt"),
                         load_checkpoint(interrupted / "checkpoints" / "last.pt"))
    assert len((interrupted / "history.jsonl").read_text().splitlines()) == 2  # only rank 0 wrote it

    # one process resumes the DDP checkpoint: 8 of epoch 1's 24 samples are done, 16 remain (4 steps of 4)
    s = single(tmp_path / "mid-copy")
    assert s["finished"] and s["global_step"] == 4 + 4 and len(s["history"]) == 2


def test_ddp_resumes_a_single_process_checkpoint(tmp_path):
    s = single(tmp_path, max_steps=3)  # 12 of epoch 0's samples consumed in one process
    assert not s["finished"] and load_checkpoint(tmp_path / "checkpoints" / "last.pt")["global_consumed"] == 12
    out = torchrun(tmp_path)  # 2 ranks continue at 6 samples each: 6 left per rank (2 steps), then 3 in epoch 1
    assert out.count("DONE 8 True") == 2
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["world_size"] == 2
