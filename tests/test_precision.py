"""Mixed precision: bf16 only on GPUs that run it natively (compute capability 8+), fp16 with a grad scaler on older
ones (Colab's free T4 is 7.5 and only emulates bf16), float32 on the CPU; training and the teachers share the choice."""
from __future__ import annotations

import pytest
import torch

from eva_helpers import precision


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA device of the given compute capability that claims bf16 support, as torch does on a T4."""

    def make(capability: tuple[int, int]) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)

    return make


def test_a_t4_trains_in_fp16_with_a_scaler(fake_gpu):
    fake_gpu((7, 5))
    dtype = precision.amp_dtype(torch.device("cuda"))
    assert dtype == torch.float16 and precision.needs_grad_scaler(dtype)


def test_ampere_and_later_train_in_bf16_without_a_scaler(fake_gpu):
    for capability in ((8, 0), (8, 9), (9, 0)):
        fake_gpu(capability)
        dtype = precision.amp_dtype("cuda:0")
        assert dtype == torch.bfloat16 and not precision.needs_grad_scaler(dtype)


def test_the_cpu_runs_in_float32(fake_gpu):
    assert precision.amp_dtype("cpu") is None and not precision.needs_grad_scaler(None)
    fake_gpu((8, 0))
    assert precision.amp_dtype(torch.device("cpu")) is None


def test_the_teachers_use_the_same_choice(fake_gpu):
    from eva_helpers.compositing.teachers import _autocast

    fake_gpu((7, 5))
    ctx = _autocast(torch.device("cuda"))
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.float16
    fake_gpu((8, 0))
    assert _autocast(torch.device("cuda")).fast_dtype == torch.bfloat16


def test_training_asks_the_shared_helper(monkeypatch, tmp_path):
    """fit's precision comes from precision.amp_dtype (not torch.cuda.is_bf16_supported, true on a T4)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _tiny import run_tiny

    import eva_helpers.training.trainer as train

    asked = []
    monkeypatch.setattr(train.precision, "amp_dtype", lambda device: asked.append(torch.device(device)) or None)
    threads = torch.get_num_threads()
    try:
        run_tiny(tmp_path, n=8, val=0, epochs=1, amp=True)
    finally:
        torch.set_num_threads(threads)
    assert asked == [torch.device("cpu")]
