"""The inner loop of `fit`: one epoch of training (resumable mid-epoch), evaluation, and the notebook conveniences.

The functions take the run's record (`state.Run`) explicitly; a mid-epoch checkpoint is `state.snapshot(run)`.
"""
from __future__ import annotations

import signal
import time
import warnings
from pathlib import Path
from typing import Any

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
    bar = tqdm(total=sampler.num_samples, initial=run.pos, unit="img", desc=f"epoch {run.epoch + 1}/{cfg.epochs}",
               disable=not (cfg.progress and info.is_main), leave=False)
    t_last = time.perf_counter()
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
        bar.update(n)
        bar.set_postfix(loss=f"{loss_v:.4f}", img_s=f"{a['samples'] / max(a['seconds'], 1e-9):.1f}")
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


def live_plot(history: list[dict]) -> None:
    """Redraw the loss curves in a Jupyter/Colab output cell; does nothing outside a notebook kernel."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is None or "IPKernelApp" not in getattr(ip, "config", {}):
        return
    import matplotlib.pyplot as plt
    from IPython.display import clear_output, display

    clear_output(wait=True)
    fig = plot_history(history)
    display(fig)
    plt.close(fig)


def open_tensorboard(cfg: TrainConfig, run_dir: Path):
    """A SummaryWriter on local disk (TensorBoard over Drive is slow), or None when off or not installed."""
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("tensorboard is not installed (pip install tensorboard): logging to TensorBoard is skipped")
        return None
    return SummaryWriter(log_dir=str(tensorboard_dir(run_dir)))
