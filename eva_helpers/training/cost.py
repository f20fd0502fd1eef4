"""What training and evaluation will cost before they start: two steps of the actual model timed on this runtime."""
from __future__ import annotations

import math
import time
from typing import Any

from eva_helpers.estimate import duration_text


def time_steps(cfg: Any, batch: int, steps: int = 2) -> tuple[float, float]:
    """(seconds per training step, seconds per forward pass) of `cfg`'s model at `batch` x `cfg.size` px on this
    runtime (one warm-up step, then `steps` timed ones), with random inputs."""
    import torch

    from eva_helpers.models import build_model
    from eva_helpers.models.inputs import X_CHANNELS

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fmt = torch.channels_last if getattr(cfg, "channels_last", False) else torch.contiguous_format  # as fit trains
    model = build_model(cfg.model, tasks=cfg.tasks, **cfg.model_kwargs).to(dev, memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    x = torch.randn(batch, X_CHANNELS, cfg.size, cfg.size, device=dev).contiguous(memory_format=fmt)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def train_step() -> None:
        out = model(x)
        loss = sum(v.float().mean() for v in out.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    train_step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        train_step()
    sync()
    train_s = (time.perf_counter() - t) / steps
    model.eval()
    with torch.no_grad():
        t = time.perf_counter()
        for _ in range(steps):
            model(x)
        sync()
    return train_s, (time.perf_counter() - t) / steps


def estimate_training(cfg: Any, train_samples: int, epochs_left: float, timer=time_steps) -> float:
    """Seconds for `epochs_left` epochs over `train_samples`, printed (two steps timed now, full precision: AMP on a
    GPU is faster)."""
    import torch

    batch = cfg.batch_size if torch.cuda.is_available() else min(cfg.batch_size, 4)  # a CPU probe stays short
    step_s, _ = timer(cfg, batch)
    steps = math.ceil(train_samples / cfg.batch_size) * epochs_left
    if cfg.max_steps:
        steps = min(steps, cfg.max_steps)
    seconds = steps * step_s * cfg.batch_size / batch
    print(f"estimate: {steps:,.0f} training steps of {cfg.batch_size} at {cfg.size} px, about {duration_text(seconds)} "
          f"on this runtime (two steps timed now; data loading and checkpoints add to it)")
    return seconds


def estimate_evaluation(cfg: Any, test_samples: int, timer=time_steps) -> float:
    """Seconds to evaluate `test_samples` (the model's forward pass timed now), printed."""
    import torch

    batch = cfg.batch_size if torch.cuda.is_available() else min(cfg.batch_size, 4)
    _, fwd_s = timer(cfg, batch)
    seconds = test_samples / batch * fwd_s * 2  # the no-learning baseline and the metrics run beside the model
    print(f"estimate: evaluating {test_samples:,} test samples takes about {duration_text(seconds)} on this runtime")
    return seconds
