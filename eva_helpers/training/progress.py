"""What a training run shows as it goes: the progress bar, the live plot, TensorBoard.

The progress bar is one status line; the live plot redraws its own display area, so notices printed above it stay; the
TensorBoard logs are local (fast) and get back, on a new runtime, every epoch of the run's history.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from eva_helpers.plots import plot_history
from eva_helpers.training.config import TrainConfig
from eva_helpers.training.run_folder import tensorboard_dir

TB_EVERY = 50  # optimizer steps between TensorBoard points of the training loss (their mean) and learning rate
EPOCH_TAG = "epoch/{}"  # a history row's numbers, at the row's global step: one x axis with the step points


class EpochBar:
    """One epoch's tqdm bar (main process, `cfg.progress`): samples/s and the epoch's time left from tqdm, then the
    step, loss, the run's time left and GPU memory."""

    def __init__(self, cfg: TrainConfig, info: Any, run_dir: Path, epoch: int, samples: int, start: int,
                 device: torch.device) -> None:
        from tqdm.auto import tqdm

        self.cfg, self.samples, self.device = cfg, samples, device
        self.bar = tqdm(total=samples, initial=start, unit="img", desc=f"{run_dir.name} epoch {epoch + 1}/{cfg.epochs}",
                        disable=not (cfg.progress and info.is_main), leave=False)

    def step(self, n: int, global_step: int, loss: float, accum: dict, epoch: int, pos: int, per_epoch: int) -> None:
        if not self.bar.disable:  # the postfix is drawn by update, at tqdm's own pace
            cfg = self.cfg
            left = (cfg.epochs - epoch) * per_epoch - math.ceil(pos / cfg.batch_size)
            if cfg.max_steps:
                left = min(left, cfg.max_steps - global_step)
            parts = [f"step {global_step}", f"loss {loss:.4f}",
                     f"run left {_duration(max(left, 0) * accum['seconds'] / max(accum['batches'], 1))}"]
            if self.device.type == "cuda":
                total = torch.cuda.get_device_properties(self.device).total_memory
                parts.append(f"GPU {torch.cuda.memory_reserved(self.device) / 2**30:.1f}/{total / 2**30:.0f} GiB")
            self.bar.set_postfix_str(", ".join(parts), refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 90 else f"{minutes // 60} h {minutes % 60:02d} min"


def _kernel() -> bool:
    """Whether this runs in a Jupyter/Colab kernel (where display() draws into the cell's output)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


class LivePlot:
    """The loss curves in their own display area under the training cell, redrawn there at each epoch end: nothing
    else in the cell is cleared, so the estimate and the notices above it stay. Outside a notebook kernel, nothing."""

    def __init__(self) -> None:
        self.handle = None

    def update(self, history: list[dict]) -> None:
        if not _kernel():
            return
        import matplotlib.pyplot as plt
        from IPython.display import display

        fig = plot_history(history)
        if self.handle is None:
            self.handle = display(fig, display_id=True)
        else:
            self.handle.update(fig)
        plt.close(fig)


class StepLog:
    """A TensorBoard point of the training loss (the mean since the last point) and the learning rate every
    TB_EVERY optimizer steps; nothing when `writer` is None."""

    def __init__(self, writer: Any) -> None:
        self.writer, self.losses = writer, []

    def add(self, loss: float, step: int, lr: float) -> None:
        if self.writer is None:
            return
        self.losses.append(loss)
        if step % TB_EVERY == 0:
            self.writer.add_scalar("step/train_loss", sum(self.losses) / len(self.losses), step)
            self.writer.add_scalar("step/lr", lr, step)
            self.losses = []


def log_epoch(writer, row: dict) -> None:
    """A history row's numbers into TensorBoard (nothing when `writer` is None)."""
    if writer is None:
        return
    for k, v in row.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch", "global_step"):
            writer.add_scalar(EPOCH_TAG.format(k), v, _row_step(row))


def _row_step(row: dict) -> int:
    return int(row.get("global_step", row.get("epoch", 0)))  # rows written before global_step was recorded: the epoch


def _logged_epochs(logdir: Path) -> set[int]:
    """Steps of the epoch points already in the local logs (a resume on the same runtime finds its own)."""
    if not any(logdir.glob("events.out.tfevents.*")):
        return set()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    tag = EPOCH_TAG.format("train_loss")
    return {e.step for e in acc.Scalars(tag)} if tag in acc.Tags().get("scalars", []) else set()


def open_tensorboard(cfg: TrainConfig, run_dir: Path, history: Sequence[dict] = (), step: int = 0):
    """A SummaryWriter on local disk (TensorBoard over Drive is slow), or None when off or not installed.

    The local logs are lost with the runtime, the run's history is not: every epoch of `history` missing from them is
    written first, so a run that survived disconnects has whole curves. Points a stopped process logged after its last
    checkpoint (`step`) are dropped (`purge_step`): this session logs those steps again."""
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("tensorboard is not installed (pip install tensorboard): logging to TensorBoard is skipped")
        return None
    logdir = tensorboard_dir(run_dir)
    have = _logged_epochs(logdir)
    writer = SummaryWriter(log_dir=str(logdir), purge_step=step + 1 if step else None)
    for row in history:
        if _row_step(row) not in have:
            log_epoch(writer, row)
    writer.flush()
    return writer
