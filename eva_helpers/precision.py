"""Which reduced precision a device runs natively: the one choice training and the depth teachers share.

bf16 only where the GPU computes it natively (compute capability 8 or more: A100, L4, H100). A T4 (7.5, Colab's free
tier) reports `torch.cuda.is_bf16_supported()` as true but emulates bf16 slowly, so it gets fp16, which needs a
GradScaler when training. CPUs and other devices run in float32.
"""
from __future__ import annotations

import contextlib

import torch

NATIVE_BF16_CAPABILITY = 8  # Ampere and later


def amp_dtype(device: torch.device | str) -> torch.dtype | None:
    """torch.bfloat16 on a GPU with native bf16, torch.float16 on an older GPU, None (float32) elsewhere."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= NATIVE_BF16_CAPABILITY else torch.float16


def needs_grad_scaler(dtype: torch.dtype | None) -> bool:
    """fp16 gradients underflow without loss scaling; bf16 has float32's range and needs none."""
    return dtype == torch.float16


def autocast(device: torch.device | str, dtype: torch.dtype | None = None):
    """Autocast in `amp_dtype(device)` (or `dtype`), or a no-op context where that is None."""
    device = torch.device(device)
    dtype = amp_dtype(device) if dtype is None else dtype
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
