"""The inner loop of `fit`: one epoch of training (resumable mid-epoch), evaluation, and what a run shows as it goes.

The functions take the run's record (`state.Run`) explicitly; a mid-epoch checkpoint is `state.snapshot(run)`. The
progress bar is one status line; the live plot redraws its own display area, so notices printed above it stay; the
TensorBoard logs are local (fast) and get back, on a new runtime, every epoch of the run's history.
"""
from __future__ import annotations

import math
import signal
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from eva_helpers.data.loaders import make_loader, prepare_batch
from eva_helpers.errors import EvaError
from eva_helpers.plots import plot_history
from eva_helpers.signals import Interrupted, signal_name
from eva_helpers.training import distributed as D
from eva_helpers.training.config import TrainConfig
from eva_helpers.training.metrics import MetricAccumulator
from eva_helpers.training.run_folder import checkpoint_path, tensorboard_dir
from eva_helpers.training.state import Run, snapshot

TB_EVERY = 50  # optimizer steps between TensorBoard points of the training loss (their mean) and learning rate
EPOCH_TAG = "epoch/{}"  # a history row's numbers, at the row's global step: one x axis with the step points


def seeded_loader(dataset: Any, batch_size: int, *, sampler: Any, workers: int | None, seed: int):
    """`data.loaders.make_loader` in `sampler`'s order; the DataLoader never draws from the global RNG (resume-exact)."""
    loader = make_loader(dataset, batch_size, sampler=sampler, shuffle=False, num_workers=workers, seed=seed)
    if loader.generator is None:  # iter(loader) would otherwise draw its worker base seed from torch's global RNG
        loader.generator = torch.Generator().manual_seed(seed)
    return loader


def train_one_epoch(run: Run) -> bool:
    """Train `run.epoch` from its stored position; returns True when `max_steps` stopped the run (checkpoint saved)."""
    from tqdm.auto import tqdm

    cfg, info, device, sampler = run.cfg, run.info, run.device, run.sampler
    sampler.set_epoch(run.epoch)
    sampler.set_start_global(run.resume_consumed)  # skips consumed samples without decoding them
    run.pos = sampler.start
    run.model.train()
    bar = tqdm(total=sampler.num_samples, initial=run.pos, unit="img",
               desc=f"{run.run_dir.name} epoch {run.epoch + 1}/{cfg.epochs}",
               disable=not (cfg.progress and info.is_main), leave=False)
    t_last = time.perf_counter()
    tb_window: list[float] = []  # losses since the last TensorBoard point
    onecycle = isinstance(run.scheduler, torch.optim.lr_scheduler.OneCycleLR)
    batches = iter(run.loader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            break
        except Exception:
            if run.stop is None or not run.stop.requested:
                raise
            # the signal also reached the loader's workers (Ctrl-C goes to the whole process group): the state of
            # the last finished step is still whole, so it is saved as if the signal had come after that step
            bar.close()
            run.ckm.save(snapshot(run))
            raise stopped_error(run) from None
        gen = run.augment.generator(cfg.seed, run.global_step, info.rank, device) if run.augment else None
        x, targets = prepare_batch(batch, device, stats=run.stats, channels_last=cfg.channels_last,
                                   augment=run.augment, gen=gen, backgrounds=run.backgrounds)
        with torch.autocast(device.type, dtype=run.amp_dtype or torch.float32, enabled=run.amp_dtype is not None):
            out = run.model(x)  # {"mask": (B,1,H,W) logits, "depth": (B,1,H,W)}
            loss, _ = run.criterion(out, targets)
        if not run.scaler.is_enabled():  # fp16's scaler skips non-finite steps itself: those are not errors
            _check_finite(run, loss, batch, "loss")
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        D.average_gradients(run.criterion.parameters(), info)  # DDP averages the model's only
        if cfg.grad_clip:
            run.scaler.unscale_(run.optimizer)
            norm = nn.utils.clip_grad_norm_(run.raw_model.parameters(), cfg.grad_clip)
            if not run.scaler.is_enabled():  # a finite loss can still give infinite gradients: never step on them
                _check_finite(run, norm, batch, "gradient norm")
        run.scaler.step(run.optimizer)
        run.scaler.update()
        if onecycle and run.scheduler.last_epoch < run.scheduler.total_steps:
            run.scheduler.step()
        n = x.shape[0]
        run.pos += n
        run.global_step += 1
        loss_v = float(loss.detach())
        now = time.perf_counter()
        a = run.accum
        a["loss_sum"] += loss_v
        a["batches"] += 1
        a["samples"] += n
        a["seconds"] += now - t_last
        t_last = now
        if not bar.disable:
            bar.set_postfix_str(status_line(run, loss_v), refresh=False)  # drawn by update, at tqdm's own pace
        bar.update(n)
        if run.tb is not None:
            tb_window.append(loss_v)
            if run.global_step % TB_EVERY == 0:
                log_steps(run, tb_window)
                tb_window = []
        if cfg.max_steps and run.global_step >= cfg.max_steps:
            run.ckm.save(snapshot(run))
            D.barrier(info)
            bar.close()
            return True
        due, stop = _after_step_flags(run)
        if due or stop:
            run.ckm.save(snapshot(run))  # reads RNG states, never draws from them: saving keeps determinism
            D.barrier(info)
            t_last = time.perf_counter()
        if stop:
            bar.close()
            raise stopped_error(run)
    bar.close()
    return False


def _after_step_flags(run: Run) -> tuple[bool, bool]:
    """(save now: rank 0's checkpoint interval has passed, stop now: a signal reached any rank). Raises when another
    process has taken the run folder's lease over: this one must not write any more."""
    due = run.ckm.due()
    stop = run.stop is not None and run.stop.requested
    lost = run.lease is not None and run.lease.lost is not None
    if run.info.enabled:  # one collective for all three: every rank takes the same branch
        due_n, stop_n, lost_n = D.sum_over_ranks([float(due and run.info.is_main), float(stop), float(lost)],
                                                 run.info, run.device)
        due, stop, lost = due_n > 0, stop_n > 0, lost_n > 0
    if lost:
        if run.lease is not None:
            run.lease.check()
        raise EvaError(f"{run.run_dir}: another process took this run folder over; stopped without writing more")
    return due, stop


def stop_agreed(run: Run) -> bool:
    """Whether a stop signal reached any rank (between steps, e.g. during validation)."""
    stop = run.stop is not None and run.stop.requested
    if run.info.enabled:
        stop = D.sum_over_ranks([float(stop)], run.info, run.device)[0] > 0
    return stop


def stopped_error(run: Run) -> Interrupted:
    """The one line that says where training stopped and which checkpoint the next run resumes from."""
    signum = run.stop.signum if run.stop is not None and run.stop.signum is not None else signal.SIGINT
    where = (f"epoch {run.epoch + 1}, {run.pos} of {run.sampler.num_samples} samples" if run.pos
             else f"the end of epoch {run.epoch}")
    last = checkpoint_path(run.run_dir, "last")
    return Interrupted(f"stopped by {signal_name(signum)} at step {run.global_step} ({where}): saved {last}; the "
                       "next run in this run folder (the same command or cell) resumes from it", signum)


class NonFiniteLossError(EvaError):
    """Training diverged: raised before the optimizer step, so the weights and the last checkpoint stay good."""


def _check_finite(run: Run, value: torch.Tensor, batch: dict, what: str) -> None:
    """Stop with one line naming the step, the batch's samples and the likely causes when `value` is NaN or inf."""
    if bool(torch.isfinite(value.detach()).all()):
        return
    ids = [m.get("id", m.get("index")) for m in batch.get("meta", [])][:8]
    last = checkpoint_path(run.run_dir, "last")
    kept = f"the last good checkpoint is kept ({last})" if last.exists() else "no checkpoint was written"
    raise NonFiniteLossError(
        f"step {run.global_step + 1} (epoch {run.epoch + 1}): the {what} is {float(value.detach().float().max())} on "
        f"samples {ids}; likely causes: a learning rate too high for this model (lr={run.cfg.lr:g}: try 3x lower), "
        f"normalisation stats with a tiny std ({run.run_dir / 'stats.json'}), or a damaged sample; {kept}")


@torch.no_grad()
def validate(run: Run) -> dict[str, float]:
    """Validation loss (per-sample mean) and the task metrics (per image, then averaged)."""
    model, device = run.raw_model, run.device
    was_training = model.training
    model.eval()
    acc = MetricAccumulator(run.cfg.tasks)
    total, count = 0.0, 0
    for batch in run.val_loader:
        x, targets = prepare_batch(batch, device, stats=run.stats, channels_last=run.cfg.channels_last)
        with torch.autocast(device.type, dtype=run.amp_dtype or torch.float32, enabled=run.amp_dtype is not None):
            out = model(x)
            loss, _ = run.criterion(out, targets)
        out = {k: v.float() for k, v in out.items()}
        total += float(loss) * x.shape[0]
        count += x.shape[0]
        acc.update(out, targets)
    model.train(was_training)
    metrics = {"val_loss": total / max(count, 1)}
    metrics.update({k: float(v) for k, v in acc.compute().items()})
    return metrics


def status_line(run: Run, loss: float) -> str:
    """The progress bar's postfix: step, loss, the run's time left, GPU memory (tqdm's own part shows samples/s and the
    epoch's time left)."""
    cfg, a = run.cfg, run.accum
    per_epoch = math.ceil(run.sampler.num_samples / cfg.batch_size)
    left = (cfg.epochs - run.epoch) * per_epoch - math.ceil(run.pos / cfg.batch_size)
    if cfg.max_steps:
        left = min(left, cfg.max_steps - run.global_step)
    parts = [f"step {run.global_step}", f"loss {loss:.4f}",
             f"run left {_duration(max(left, 0) * a['seconds'] / max(a['batches'], 1))}"]
    if run.device.type == "cuda":
        total = torch.cuda.get_device_properties(run.device).total_memory
        parts.append(f"GPU {torch.cuda.memory_reserved(run.device) / 2**30:.1f}/{total / 2**30:.0f} GiB")
    return ", ".join(parts)


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


def log_steps(run: Run, losses: list[float]) -> None:
    """One TensorBoard point of the training loss (mean since the last point) and learning rate, at this step."""
    run.tb.add_scalar("step/train_loss", sum(losses) / max(len(losses), 1), run.global_step)
    run.tb.add_scalar("step/lr", run.optimizer.param_groups[0]["lr"], run.global_step)


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
