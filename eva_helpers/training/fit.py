"""`fit()`: training that survives disconnects. Run it again with the same run folder and it continues mid-epoch.

Resume is exact: the checkpoint holds model, optimizer, scheduler, scaler, loss weights, the position inside the epoch,
the running epoch sums and every RNG; the sampler replays the epoch's order from (seed, epoch) and skips what was
consumed without decoding it; each batch's augmentation is seeded by (seed, global step, rank) (batch_augment.py).
On CPU with `deterministic=True` a run killed at any moment and resumed ends bit-identical to an uninterrupted one; on a
GPU, nondeterministic CUDA kernels and a change of GPU or precision (sessions.json records each) rule that out.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from eva_helpers import lease, precision
from eva_helpers.atomic import atomic_write_text, check_output_folder
from eva_helpers.data.augment import build_transforms
from eva_helpers.data.dataset import ShardDataset
from eva_helpers.data.formats import read_manifest
from eva_helpers.data.loaders import BackgroundBank
from eva_helpers.data.sampler import ResumableSampler
from eva_helpers.data.stats import load_stats
from eva_helpers.errors import EvaError
from eva_helpers.models import build_model, rebuild_model
from eva_helpers.signals import StopRequest
from eva_helpers.training import distributed as D
from eva_helpers.training.batch_augment import BatchAugment
from eva_helpers.training.checkpoint import CheckpointManager
from eva_helpers.training.config import TrainConfig, is_extension, result_changing_differences
from eva_helpers.training.loop import (
    LivePlot,
    log_epoch,
    open_tensorboard,
    seeded_loader,
    stop_agreed,
    stopped_error,
    train_one_epoch,
    validate,
)
from eva_helpers.training.losses import build_criterion
from eva_helpers.training.run_folder import CONFIG, HISTORY, SUMMARY, check_config, run_stats, start_writing, summary_of
from eva_helpers.training.sessions import recorder
from eva_helpers.training.state import Run, make_scheduler, restore, snapshot
from eva_helpers.training.warm_start import check_source, describe, load_into, source_record


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_data(cfg: TrainConfig) -> tuple[Any, Any, dict | None]:
    """Train/val ShardDatasets (decode and resize only), split by `cfg.split_by`, and the dataset's channel stats."""
    if not cfg.data:
        raise EvaError("TrainConfig.data is not set: give the dataset folder (the one holding manifest.json)")
    splits = cfg.splits()
    # workers only read, decode (and resize a dataset of another size): augmentation runs on the batch (batch_augment),
    # and bg comes from the run's BackgroundBank (loaders.py) by bg_id; uint8 mask, float16 depth out of the workers
    train_set = ShardDataset(cfg.data, indices=splits["train"],
                             transform=build_transforms("val", cfg.size, compact=True, with_bg=False))
    val_set = ShardDataset(cfg.data, indices=splits["val"], transform=build_transforms("val", cfg.size))
    return train_set, (val_set if len(val_set) else None), load_stats(cfg.data)


def _extension(state: dict[str, Any], cfg: TrainConfig) -> dict[str, Any] | None:
    """The extension record when the checkpoint was trained for fewer epochs than `cfg.epochs`, else None."""
    old = state.get("config", {})
    if not is_extension(old, cfg.to_dict()):
        return None
    return {"from_epochs": int(old["epochs"]), "to_epochs": cfg.epochs, "at_epoch": int(state["epoch"]),
            "global_step": int(state["global_step"])}


def fit(cfg: TrainConfig, *, model: nn.Module | None = None, train_set: Any = None, val_set: Any = None,
        criterion: nn.Module | None = None, stats: dict | None = None,
        on_start: Callable[[Path], None] | None = None, force_takeover: bool = False) -> dict[str, Any]:
    """Train (or resume, or just report a finished run) in `cfg.run_dir`; returns the run's summary dict.

    One writer per run folder: a second process training into it stops at once (lease.py). SIGINT (the Stop button,
    Ctrl-C) and SIGTERM stop training at the end of the current step with a checkpoint of that step, then raise
    `signals.Interrupted` (a KeyboardInterrupt); running the same call again resumes from it exactly.

    Args:
        cfg: the run's settings; `run_dir` is required.
        model, train_set, val_set, criterion: injected objects (tests, custom data); built from `cfg` when None.
            An injected dataset takes keys `(position, sample_seed)` like ShardDataset.
        on_start: called with the run folder once every check has passed, before fit's own first write (main
            process only): records of the caller's that a refused run must not leave behind.
        force_takeover: take over another machine's lease on the run folder at once, without watching its heartbeat
            (the user knows that machine is gone: FORCE_TAKEOVER in the notebooks).
    """
    if not cfg.run_dir:
        raise EvaError("TrainConfig.run_dir is not set: give a folder for config, history and checkpoints")
    run_dir = Path(cfg.run_dir)
    _preflight(cfg, run_dir, model, train_set)
    info, device = D.init_distributed(cfg.device)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    held = None
    try:
        held = _claim(run_dir, info, device, force_takeover)
        if train_set is None:  # opened (and verified) before anything is written: damaged data claims nothing
            train_set, built_val, built_stats = build_data(cfg)
            val_set = built_val if val_set is None else val_set
            stats = built_stats if stats is None else stats
        return _fit(cfg, run_dir, info, device, model, train_set, val_set, criterion, stats, held, on_start)
    finally:
        if held is not None:
            held.release()
        torch.use_deterministic_algorithms(was_deterministic)  # a notebook's later cells keep their own setting
        D.shutdown(info)


def _claim(run_dir: Path, info: D.DistInfo, device: torch.device, force: bool) -> lease.Lease | None:
    """Rank 0 takes the run folder's lease (a second trainer stops here, in one line); every rank learns the outcome,
    so none waits for a rank that was refused."""
    held, error = None, None
    if info.is_main:
        try:
            held = lease.acquire(run_dir, "training", force=force)
        except Exception as e:  # noqa: BLE001 - re-raised below, after the other ranks have been told
            error = e
    if not D.broadcast_flag(error is None, info, device):
        if error is not None:
            raise error
        raise EvaError(f"{run_dir}: rank 0 could not claim this run folder (its message says why)")
    return held


def _confirm(held: lease.Lease | None) -> None:
    """Before each write into the run folder: stop (LeaseHeldError) if another process holds it now."""
    if held is not None:
        held.confirm()


def _preflight(cfg: TrainConfig, run_dir: Path, model: nn.Module | None, train_set: Any) -> None:
    """What a mistyped setting can break, checked before the run folder is created or claimed: the folder itself, the
    dataset's manifest, the model's name and options, and a size the model can take (fit then opens the data)."""
    check_output_folder(run_dir, "run")
    if train_set is None:
        if not cfg.data:
            raise EvaError("TrainConfig.data is not set: give the dataset folder (the one holding manifest.json)")
        read_manifest(cfg.data)

    BatchAugment.from_config(cfg)  # second_shot_opts checked
    if model is None:

        model = build_model(cfg.model, tasks=cfg.tasks, **cfg.model_kwargs)  # no weights: a check, not the model
    if cfg.init_from and not (run_dir / CONFIG).exists():  # a resumed run has its own weights

        check_source(cfg.init_from, cfg.init_which, model)
    divisor = int(getattr(model, "divisor", 1))
    for size in [cfg.size] + [st[0] for st in cfg.size_stages or []]:
        if size % divisor:
            lo = max(divisor, size // divisor * divisor)
            raise EvaError(f"size={size} does not suit {cfg.model}: sizes must be multiples of {divisor} "
                           f"(nearest: {lo} or {lo + divisor})")


def _fit(cfg, run_dir, info, device, model, train_set, val_set, criterion, stats, held,
         on_start=None) -> dict[str, Any]:
    # every check first (config, checkpoint, stats, the checkpoint's fit to the model): until they have all passed,
    # nothing in the run folder is written, so a refused command leaves it as it was
    config, init = check_config(run_dir, cfg)
    if cfg.init_from and not init:  # where a new run's weights start (a resumed run keeps its record)

        init = source_record(cfg.init_from, cfg.init_which)
    if init:
        config["init"] = init
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    ckm = CheckpointManager(run_dir, cfg.keep_last, cfg.checkpoint_interval_s, is_main=False)  # reads only, for now
    if held is not None:  # every checkpoint confirms the lease first, and records it
        ckm.guard, ckm.writer = held.confirm, held.writer()
    state = ckm.load_latest()
    ext = None
    if state is not None:
        diff = result_changing_differences(state.get("config", {}), cfg.to_dict())
        if diff:
            raise EvaError(f"{ckm.loaded_from}: checkpoint was trained with other settings for {diff}")
        ext = _extension(state, cfg)
        if (state.get("finished") and int(state["epoch"]) >= cfg.epochs) or (
                cfg.max_steps and state["global_step"] >= cfg.max_steps):
            if info.is_main:
                _confirm(held)
                start_writing(run_dir, ckm, config, ext, None, on_start)
            D.barrier(info)
            return summary_of(state, run_dir)

    seed_everything(cfg.seed)
    stats, write_stats = run_stats(run_dir, cfg, stats, info.is_main)
    if model is None and state is not None and state.get("model_args"):

        model = rebuild_model(state["model_args"])
    elif model is None:

        extra = {"pretrained": True} if cfg.pretrained else {}  # UNets have no pretrained option at all
        model = build_model(cfg.model, tasks=cfg.tasks, **extra, **cfg.model_kwargs)
    if state is None and cfg.init_from:

        init = config["init"]  # recorded above; written with config.json once every check passed
        started = load_into(model, init)
        if info.is_main:
            print(describe(init, started), flush=True)
    if criterion is None:

        criterion = build_criterion(cfg.tasks, weighting=cfg.loss_weighting, weights=cfg.loss_weights or None)
    model_args = dict(getattr(model, "model_args", {}) or {})
    model.to(device)
    criterion.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(list(model.parameters()) + list(criterion.parameters()), lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    sampler = ResumableSampler(len(train_set), seed=cfg.seed, rank=info.rank, world_size=info.world_size)
    steps_per_epoch = math.ceil(sampler.num_samples / cfg.batch_size)
    sched = make_scheduler(cfg, opt, steps_per_epoch)
    amp_dtype = precision.amp_dtype(device) if cfg.amp else None  # bf16 only where native, fp16 + scaler elsewhere
    scaler = torch.amp.GradScaler("cuda", enabled=precision.needs_grad_scaler(amp_dtype))

    run = Run(cfg=cfg, run_dir=run_dir, info=info, device=device, model=model, raw_model=model, criterion=criterion,
              optimizer=opt, scheduler=sched, scaler=scaler, amp_dtype=amp_dtype, sampler=sampler, stats=stats,
              ckm=ckm, model_args=model_args, lease=held)
    if state is not None:
        restore(run, state, steps_per_epoch)
    # checks passed: from here on the run folder is written
    if info.is_main:
        _confirm(held)
        start_writing(run_dir, ckm, config, ext, stats if write_stats else None, recorder(run, on_start))
    D.barrier(info)
    if state is not None and info.is_main:
        w = state.get("writer") or {}
        by = f", written by host {w.get('host')} pid {w.get('pid')} under lease #{w.get('fence')}" if w else ""
        print(f"resumed from {ckm.loaded_from} (epoch {run.epoch}, step {run.global_step}{by})", flush=True)
    if info.enabled:
        dev_ids = [device.index] if device.type == "cuda" else None
        run.model = nn.parallel.DistributedDataParallel(model, device_ids=dev_ids)
    if cfg.compile:
        run.model = torch.compile(run.model)

    run.augment = BatchAugment.from_config(cfg)
    # validation in dataset order with plain int keys: no sample seed, so no augmentation, same every epoch
    run.val_loader = (seeded_loader(val_set, cfg.batch_size, sampler=list(range(len(val_set))), workers=cfg.workers,
                                  seed=cfg.seed) if val_set is not None else None)
    run.tb = open_tensorboard(cfg, run_dir, run.history, run.global_step) if info.is_main else None
    plot = LivePlot() if cfg.live_plot and info.is_main else None

    try:
        with StopRequest() as run.stop:  # SIGINT/SIGTERM: a checkpoint at the end of the current step, then stop
            stopped, loader_size = False, None
            while run.epoch < cfg.epochs and not stopped:
                stage, size = cfg.stage_at(run.epoch)
                if size != loader_size:  # the first epoch, or a new stage of progressive resizing
                    loader_size = _enter_stage(run, train_set, stage, size)
                stopped = train_one_epoch(run)
                if stopped:
                    break
                _end_epoch(run)
                if plot is not None:  # after the epoch-end checkpoint: a slow draw never delays it
                    plot.update(run.history)
                if stop_agreed(run):
                    raise stopped_error(run)  # the epoch-end checkpoint is that step's
    finally:
        if run.tb is not None:
            run.tb.close()
        run.loader = run.val_loader = None  # their workers stop now, not when the garbage collector finds `run`
    summary = summary_of(snapshot(run), run_dir)
    if info.is_main:
        _confirm(held)
        atomic_write_text(run_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")
    D.barrier(info)
    return summary


def _enter_stage(run: Run, train_set: Any, stage: int, size: int) -> int:
    """Training batches at `size` from here on: the workers decode and resize to it, the background bank holds it.
    Validation stays at `cfg.size`, so every epoch's val loss (and the best checkpoint) is comparable."""
    cfg = run.cfg
    if cfg.size_stages and hasattr(train_set, "transform"):

        train_set.transform = build_transforms("val", size, compact=True, with_bg=False)
        if run.info.is_main and cfg.progress:
            print(f"stage {stage + 1} of {len(cfg.size_stages) + 1}: training at {size} px from epoch {run.epoch + 1}",
                  flush=True)
    if hasattr(train_set, "background"):  # a ShardDataset: batches without bg take theirs from the bank (lazy)

        run.backgrounds = BackgroundBank(train_set, size)
    run.loader = None  # a previous stage's persistent workers stop before the new ones start
    run.loader = seeded_loader(train_set, cfg.batch_size, sampler=run.sampler, workers=cfg.workers, seed=cfg.seed)
    run.stage, run.stage_size = stage, size
    return size


def _end_epoch(run: Run) -> None:
    """Validation, history row, schedule, best tracking and the epoch-end checkpoint."""
    cfg, info, device = run.cfg, run.info, run.device
    a = run.accum
    loss_sum, batches, samples = D.sum_over_ranks([a["loss_sum"], a["batches"], a["samples"]], info, device)
    train_loss = loss_sum / max(1.0, batches)  # mean over every batch of every rank
    row: dict[str, Any] = {"epoch": run.epoch, "train_loss": train_loss}
    if cfg.size_stages:
        row.update(stage=run.stage, size=run.stage_size)
    if run.val_loader is not None:
        metrics = validate(run) if info.is_main else {}
        row["val_loss"] = D.broadcast_float(metrics.get("val_loss", 0.0), info, device)
        row.update({k: v for k, v in metrics.items() if k != "val_loss"})
    monitor, key = (row["val_loss"], "val_loss") if "val_loss" in row else (train_loss, "train_loss")
    if isinstance(run.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        run.scheduler.step(monitor)
    seconds = run.accum["seconds"]
    row.update(lr=run.optimizer.param_groups[0]["lr"], seconds=seconds,
               samples_per_s=samples / max(seconds, 1e-9), global_step=run.global_step)
    run.history.append(row)
    is_best = not run.best or monitor < run.best["value"]
    if is_best:
        run.best = {"metric": key, "value": float(monitor), "epoch": run.epoch}
    run.epoch += 1
    run.pos = run.resume_consumed = 0
    run.accum = {"loss_sum": 0.0, "batches": 0, "samples": 0, "seconds": 0.0}
    if info.is_main:
        _confirm(run.lease)
        lines = "".join(json.dumps(r) + "\n" for r in run.history)
        atomic_write_text(run.run_dir / HISTORY, lines)  # rewritten from the checkpoint's history: no duplicates
        log_epoch(run.tb, row)
    run.finished = run.epoch >= cfg.epochs
    run.ckm.save(snapshot(run), best=is_best)
    D.barrier(info)


