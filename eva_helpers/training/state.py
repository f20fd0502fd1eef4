"""What a checkpoint holds of a training run, and putting it back: the exact-resume half of `fit`.

`snapshot(run)` is everything needed to continue exactly where the run is (tensors and plain containers only, so
checkpoints load with `weights_only=True`); `restore(run, state, ...)` puts it back, re-timing a OneCycle schedule saved
for another length (another world size, a run extended to more epochs).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eva_helpers.data.sampler import ResumableSampler
from eva_helpers.errors import EvaError
from eva_helpers.training import distributed as D
from eva_helpers.training.checkpoint import CheckpointManager, rng_state, set_rng_state
from eva_helpers.training.config import TrainConfig

FORMAT = "eva-ckpt/1"


@dataclass
class Run:
    """The objects one training run works with, and where it is (epoch, step, position in the epoch)."""

    cfg: TrainConfig
    run_dir: Path
    info: D.DistInfo
    device: torch.device
    model: nn.Module  # what forward runs (DDP- and/or compile-wrapped)
    raw_model: nn.Module  # the plain module: its state_dict is what checkpoints hold
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    sampler: ResumableSampler
    stats: dict | None
    ckm: CheckpointManager
    model_args: dict
    loader: Any = None
    val_loader: Any = None
    tb: Any = None
    augment: Any = None  # batch_augment.BatchAugment: training augmentation on the batch, seeded per step
    backgrounds: Any = None  # loaders.BackgroundBank: the training batches' bg, by bg_id
    lease: Any = None  # lease.Lease on the run folder (rank 0): training stops if another process took it over
    stop: Any = None  # signals.StopRequest: set by SIGINT/SIGTERM, answered after the current step
    epoch: int = 0
    global_step: int = 0
    pos: int = 0  # samples of this epoch consumed by this rank
    resume_consumed: int = 0  # global samples of `epoch` consumed before a resume
    accum: dict = field(default_factory=lambda: {"loss_sum": 0.0, "batches": 0, "samples": 0, "seconds": 0.0})
    history: list = field(default_factory=list)
    stage: int = 0  # progressive resizing: the stage being trained and its size (cfg.stage_at)
    stage_size: int = 0
    best: dict = field(default_factory=dict)
    finished: bool = False


def make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int):
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2)
    return None


def _load_scheduler(sched, state: dict, steps_total: int, steps_left: int) -> None:
    """Restore a schedule; a OneCycle saved for another length (another world size, a run extended to more epochs) is
    re-timed: this run's phases (built for `steps_total`), positioned at the steps already taken."""
    phases = getattr(sched, "_schedule_phases", None)  # the fresh schedule's, for steps_total
    sched.load_state_dict(state)
    if isinstance(sched, torch.optim.lr_scheduler.OneCycleLR) and sched.total_steps != steps_total:
        sched.total_steps, sched._schedule_phases = steps_total, phases
        sched.last_epoch = max(0, steps_total - steps_left)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # get_lr() outside step() warns
            lrs = sched.get_lr()
        for group, lr in zip(sched.optimizer.param_groups, lrs):
            group["lr"] = lr
        sched._last_lr = list(lrs)


def restore(run: Run, state: dict[str, Any], steps_per_epoch: int) -> None:
    """Continue from `state`; a checkpoint that does not fit this model (another architecture copied in) is a
    one-line error, raised before anything is written."""
    cfg, info, sampler, sched = run.cfg, run.info, run.sampler, run.scheduler
    try:
        run.raw_model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.criterion.load_state_dict(state["criterion"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise EvaError(f"{run.ckm.loaded_from}: this checkpoint does not fit the model {cfg.model} "
                       f"({_first_line(str(e))}); use a new run_dir, or put back this run's own checkpoint") from e
    if sched is not None and state.get("scheduler") is not None:
        start = min(sampler.num_samples, int(state["global_consumed"]) // info.world_size)
        left = math.ceil((sampler.num_samples - start) / cfg.batch_size)
        left += (cfg.epochs - int(state["epoch"]) - 1) * steps_per_epoch
        _load_scheduler(sched, state["scheduler"], cfg.epochs * steps_per_epoch, left)
    if state.get("scaler") is not None and run.scaler.is_enabled():
        run.scaler.load_state_dict(state["scaler"])
    run.epoch, run.global_step = int(state["epoch"]), int(state["global_step"])
    run.resume_consumed = int(state["global_consumed"])
    run.accum = _rank_accum(state["epoch_accum"], info)
    run.history, run.best = list(state["history"]), dict(state["best"] or {})
    set_rng_state(state["rng"])  # last: building the model and optimizer above drew from the RNGs


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), text)


def _rank_accum(accums: list[dict], info: D.DistInfo) -> dict:
    """This rank's running epoch sums; from another world size, rank 0 carries them all."""
    if len(accums) == info.world_size:
        return dict(accums[info.rank])
    zero = {"loss_sum": 0.0, "batches": 0, "samples": 0, "seconds": 0.0}
    if info.rank != 0:
        return zero
    merged = {k: sum(a[k] for a in accums) for k in ("loss_sum", "batches", "samples")}
    return {**merged, "seconds": max(a["seconds"] for a in accums)}


def snapshot(run: Run) -> dict[str, Any]:
    """Everything needed to continue exactly where we are (tensors and plain containers only)."""
    return {
        "format": FORMAT, "model": run.raw_model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
        "criterion": run.criterion.state_dict(), "epoch": run.epoch, "global_step": run.global_step,
        "global_consumed": run.pos * run.info.world_size, "rng": rng_state(),
        "epoch_accum": D.gather_objects(dict(run.accum), run.info),  # one per rank: exact sums on resume
        "history": list(run.history), "config": run.cfg.to_dict(), "model_args": run.model_args,
        "best": dict(run.best), "finished": run.finished, "world_size": run.info.world_size,
    }
