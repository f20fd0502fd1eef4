"""`fit()`: training that survives disconnects, in one loop read top to bottom (`_train`).

Run `fit` again with the same run folder and it continues mid-epoch, exactly: the checkpoint (`snapshot`) holds model,
optimizer, scaler, loss weights, the position inside the epoch, the running epoch sums and every RNG; the sampler
replays the epoch's order from (seed, epoch) and skips what was consumed without decoding it; each batch's augmentation
is seeded by (seed, global step, rank) (batch_augment.py); the learning rate is a pure function of the position in the
schedule (`lr_at`) or of the epochs' losses (`plateau_lr`), so a resumed, extended or re-sized run needs no scheduler
state. On CPU with `deterministic=True` a run killed at any moment and resumed ends bit-identical to an uninterrupted
one; on a GPU, nondeterministic CUDA kernels and a change of GPU or precision (sessions.json records each) rule that out.

One step is three owned parts, then the update: the batch onto the device (`data.loaders.batch_to_device`), the
training augmentation (`BatchAugment`), the model's input (`models.inputs.model_input`).
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from eva_helpers import lease, precision
from eva_helpers.atomic import atomic_write_text, check_output_folder
from eva_helpers.data.dataset import ShardDataset
from eva_helpers.data.formats import read_manifest
from eva_helpers.data.loaders import BackgroundBank, batch_to_device, seeded_loader
from eva_helpers.data.resize import resize_transform
from eva_helpers.data.sampler import ResumableSampler
from eva_helpers.data.stats import load_stats
from eva_helpers.errors import EvaError
from eva_helpers.models import build_model, rebuild_model
from eva_helpers.models.inputs import model_input
from eva_helpers.signals import Interrupted, StopRequest, signal_name
from eva_helpers.training import distributed as D
from eva_helpers.training import progress
from eva_helpers.training.batch_augment import BatchAugment
from eva_helpers.training.checkpoint import CheckpointManager, rng_state, set_rng_state
from eva_helpers.training.config import TrainConfig, is_extension, result_changing_differences
from eva_helpers.training.losses import build_criterion
from eva_helpers.training.metrics import MetricAccumulator
from eva_helpers.training.run_folder import (
    CONFIG,
    HISTORY,
    SUMMARY,
    check_config,
    checkpoint_path,
    run_stats,
    start_writing,
    summary_of,
)
from eva_helpers.training.sessions import recorder
from eva_helpers.training.warm_start import check_source, describe, load_into, source_record

FORMAT = "eva-ckpt/1"
ONECYCLE = {"pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4, "beta1": (0.85, 0.95)}  # torch's defaults
PLATEAU = {"factor": 0.5, "patience": 2, "threshold": 1e-4, "eps": 1e-8}  # ReduceLROnPlateau's, patience 2


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
                             transform=resize_transform(cfg.size, compact=True, with_bg=False))
    val_set = ShardDataset(cfg.data, indices=splits["val"], transform=resize_transform(cfg.size))
    return train_set, (val_set if len(val_set) else None), load_stats(cfg.data)


# ---- the learning rate: pure functions --------------------------------------------------------------------------

def _cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)  # OneCycleLR's cosine, the same float operations


def lr_at(step: int, total_steps: int, cfg: TrainConfig) -> tuple[float, float]:
    """OneCycle's (learning rate, AdamW beta1) once `step` of `total_steps` optimizer steps are done: torch's
    OneCycleLR with its defaults, to the last bit (tests/test_schedules.py), with no state to save or re-time."""
    step = min(step, total_steps)
    initial = cfg.lr / ONECYCLE["div_factor"]
    low, high = ONECYCLE["beta1"]
    warm_end = float(ONECYCLE["pct_start"] * total_steps) - 1
    if step <= warm_end:
        return _cos(initial, cfg.lr, step / warm_end), _cos(high, low, step / warm_end)
    pct = (step - warm_end) / (total_steps - 1 - warm_end)
    return _cos(cfg.lr, initial / ONECYCLE["final_div_factor"], pct), _cos(low, high, pct)


def plateau_lr(history: list[dict], cfg: TrainConfig) -> tuple[float, dict]:
    """ReduceLROnPlateau (halve after `patience` epochs without a 0.01 % better loss) replayed over the epochs' losses
    (val_loss, else train_loss): (the learning rate now, {"best", "num_bad_epochs"})."""
    lr, best, bad = float(cfg.lr), math.inf, 0
    for row in history:
        loss = float(row.get("val_loss", row["train_loss"]))
        if loss < best * (1.0 - PLATEAU["threshold"]):
            best, bad = loss, 0
        else:
            bad += 1
        if bad > PLATEAU["patience"]:
            new = max(lr * PLATEAU["factor"], 0.0)
            if lr - new > PLATEAU["eps"]:
                lr = new
            bad = 0
    return lr, {"best": best, "num_bad_epochs": bad}


def schedule_record(cfg: TrainConfig, step: int, total_steps: int, history: list[dict]) -> dict | None:
    """Where the schedule stands, for the checkpoint's readers (resume recomputes it)."""
    if cfg.schedule == "onecycle":
        return {"name": "onecycle", "step": min(step, total_steps), "total_steps": total_steps}
    if cfg.schedule == "plateau":
        return {"name": "plateau", **plateau_lr(history, cfg)[1]}
    return None


def set_lr(optimizer: torch.optim.Optimizer, lr: float, beta1: float | None = None) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
        if beta1 is not None:
            group["betas"] = (beta1, *group["betas"][1:])


# ---- checkpoints: what a run is, as plain data ------------------------------------------------------------------

def snapshot(*, cfg: TrainConfig, info: D.DistInfo, model: nn.Module, optimizer: torch.optim.Optimizer,
             criterion: nn.Module, scaler: torch.amp.GradScaler, model_args: dict, epoch: int, global_step: int,
             pos: int, accum: dict, history: list, best: dict, finished: bool, schedule: dict | None) -> dict[str, Any]:
    """Everything needed to continue exactly where the run is: tensors and plain containers only, so checkpoints load
    with `weights_only=True`. `model` is the plain module (not DDP- or compile-wrapped)."""
    return {
        "format": FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": schedule,
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "criterion": criterion.state_dict(), "epoch": epoch, "global_step": global_step,
        "global_consumed": pos * info.world_size, "rng": rng_state(),
        "epoch_accum": D.gather_objects(dict(accum), info),  # one per rank: exact sums on resume
        "history": list(history), "config": cfg.to_dict(), "model_args": model_args,
        "best": dict(best), "finished": finished, "world_size": info.world_size,
    }


def restore(state: dict[str, Any], *, cfg: TrainConfig, info: D.DistInfo, model: nn.Module,
            optimizer: torch.optim.Optimizer, criterion: nn.Module, scaler: torch.amp.GradScaler,
            source: Path | None) -> dict[str, Any]:
    """Put `state`'s weights and optimizer back; returns where the run was (epoch, global_step, global_consumed,
    accum, history, best). A checkpoint that does not fit this model (another architecture copied in) is a one-line
    error, raised before anything is written. Call `set_rng_state(state["rng"])` last, once everything is built."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        criterion.load_state_dict(state["criterion"])
    except (RuntimeError, ValueError, KeyError) as e:
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), str(e))
        raise EvaError(f"{source}: this checkpoint does not fit the model {cfg.model} ({first}); use a new run_dir, "
                       "or put back this run's own checkpoint") from e
    if state.get("scaler") is not None and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    return {"epoch": int(state["epoch"]), "global_step": int(state["global_step"]),
            "global_consumed": int(state["global_consumed"]), "accum": _rank_accum(state["epoch_accum"], info),
            "history": list(state["history"]), "best": dict(state["best"] or {})}


def _zero_accum() -> dict:
    return {"loss_sum": 0.0, "batches": 0, "samples": 0, "seconds": 0.0}


def _rank_accum(accums: list[dict], info: D.DistInfo) -> dict:
    """This rank's running epoch sums; from another world size, rank 0 carries them all."""
    if len(accums) == info.world_size:
        return dict(accums[info.rank])
    if info.rank != 0:
        return _zero_accum()
    merged = {k: sum(a[k] for a in accums) for k in ("loss_sum", "batches", "samples")}
    return {**merged, "seconds": max(a["seconds"] for a in accums)}


# ---- fit: checks, then the loop ---------------------------------------------------------------------------------

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
        return _train(cfg, run_dir, info, device, model, train_set, val_set, criterion, stats, held, on_start)
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


def _extension(state: dict[str, Any], cfg: TrainConfig) -> dict[str, Any] | None:
    """The extension record when the checkpoint was trained for fewer epochs than `cfg.epochs`, else None."""
    old = state.get("config", {})
    if not is_extension(old, cfg.to_dict()):
        return None
    return {"from_epochs": int(old["epochs"]), "to_epochs": cfg.epochs, "at_epoch": int(state["epoch"]),
            "global_step": int(state["global_step"])}


def _train(cfg, run_dir, info, device, model, train_set, val_set, criterion, stats, held,
           on_start=None) -> dict[str, Any]:
    """The run, top to bottom: 1. every check, 2. the objects and where the run is, 3. the first writes, 4. the loop
    (epochs; in each, the steps, then validation, history and the epoch-end checkpoint); the summary last."""
    confirm = held.confirm if held is not None else (lambda: None)  # before each write: stop if another took over

    # 1. every check first (config, checkpoint, stats, the checkpoint's fit to the model): until they have all passed,
    #    nothing in the run folder is written, so a refused command leaves it as it was
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
                confirm()
                start_writing(run_dir, ckm, config, ext, None, on_start)
            D.barrier(info)
            return summary_of(state, run_dir)

    # 2. the objects: model, loss, optimizer, sampler, precision
    seed_everything(cfg.seed)
    stats, write_stats = run_stats(run_dir, cfg, stats, info.is_main)
    if model is None and state is not None and state.get("model_args"):
        model = rebuild_model(state["model_args"])
    elif model is None:
        extra = {"pretrained": True} if cfg.pretrained else {}  # UNets have no pretrained option at all
        model = build_model(cfg.model, tasks=cfg.tasks, **extra, **cfg.model_kwargs)
    if state is None and cfg.init_from:
        started = load_into(model, config["init"])  # recorded above; written with config.json once checks passed
        if info.is_main:
            print(describe(config["init"], started), flush=True)
    if criterion is None:
        criterion = build_criterion(cfg.tasks, weighting=cfg.loss_weighting, weights=cfg.loss_weights or None)
    model_args = dict(getattr(model, "model_args", {}) or {})
    model.to(device)
    criterion.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(criterion.parameters()), lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    sampler = ResumableSampler(len(train_set), seed=cfg.seed, rank=info.rank, world_size=info.world_size)
    per_epoch = math.ceil(sampler.num_samples / cfg.batch_size)
    total_steps = cfg.epochs * per_epoch
    amp_dtype = precision.amp_dtype(device) if cfg.amp else None  # bf16 only where native, fp16 + scaler elsewhere
    scaler = torch.amp.GradScaler("cuda", enabled=precision.needs_grad_scaler(amp_dtype))

    # where the run is: a fresh start, or the checkpoint's position
    epoch = global_step = resume_consumed = 0
    accum, history, best, finished = _zero_accum(), [], {}, False
    if state is not None:
        at = restore(state, cfg=cfg, info=info, model=model, optimizer=optimizer, criterion=criterion, scaler=scaler,
                     source=ckm.loaded_from)
        epoch, global_step, resume_consumed = at["epoch"], at["global_step"], at["global_consumed"]
        accum, history, best = at["accum"], at["history"], at["best"]
        set_rng_state(state["rng"])  # last: building the model and optimizer above drew from the RNGs

    # 3. checks passed: from here on the run folder is written
    if info.is_main:
        confirm()
        start_writing(run_dir, ckm, config, ext, stats if write_stats else None,
                      recorder(device, amp_dtype, epoch, global_step, info.world_size, on_start))
    D.barrier(info)
    if state is not None and info.is_main:
        w = state.get("writer") or {}
        by = f", written by host {w.get('host')} pid {w.get('pid')} under lease #{w.get('fence')}" if w else ""
        print(f"resumed from {ckm.loaded_from} (epoch {epoch}, step {global_step}{by})", flush=True)
    net = model  # what forward runs; `model` stays the plain module that checkpoints hold
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    augment = BatchAugment.from_config(cfg)
    # validation in dataset order with plain int keys: no sample seed, so no augmentation, same every epoch
    val_loader = (seeded_loader(val_set, cfg.batch_size, sampler=list(range(len(val_set))), workers=cfg.workers,
                                seed=cfg.seed) if val_set is not None else None)
    tb = progress.open_tensorboard(cfg, run_dir, history, global_step) if info.is_main else None
    plot = progress.LivePlot() if cfg.live_plot and info.is_main else None
    loader = batches = backgrounds = None
    stage = stage_size = pos = 0

    def checkpoint(is_best: bool = False) -> None:
        """This moment of the run into last.pt (and best.pt): reads the RNGs, never draws from them."""
        ckm.save(snapshot(cfg=cfg, info=info, model=model, optimizer=optimizer, criterion=criterion, scaler=scaler,
                          model_args=model_args, epoch=epoch, global_step=global_step, pos=pos, accum=accum,
                          history=history, best=best, finished=finished,
                          schedule=schedule_record(cfg, epoch * per_epoch + step_in_epoch(), total_steps, history)),
                 best=is_best)

    def step_in_epoch() -> int:  # steps of this epoch behind `pos` (this rank's samples), in any world size
        return per_epoch - math.ceil((sampler.num_samples - pos) / cfg.batch_size)

    def stopped() -> Interrupted:
        return stopped_error(stop.signum, run_dir, global_step, epoch, pos, sampler.num_samples)

    # 4. the loop: epochs, each a stage's loader, steps, then validation, history and the epoch-end checkpoint
    try:
        with StopRequest() as stop:  # SIGINT/SIGTERM: a checkpoint at the end of the current step, then stop
            while epoch < cfg.epochs:
                at_stage, size = cfg.stage_at(epoch)
                if loader is None or size != stage_size:  # the first epoch, or a new stage of progressive resizing
                    if cfg.size_stages and hasattr(train_set, "transform"):
                        train_set.transform = resize_transform(size, compact=True, with_bg=False)
                        if info.is_main and cfg.progress:
                            print(f"stage {at_stage + 1} of {len(cfg.size_stages) + 1}: training at {size} px from "
                                  f"epoch {epoch + 1}", flush=True)
                    if hasattr(train_set, "background"):  # a ShardDataset: bg comes from the bank by bg_id (lazy)
                        backgrounds = BackgroundBank(train_set, size)
                    loader = batches = None  # a previous stage's persistent workers stop before new ones start
                    loader = seeded_loader(train_set, cfg.batch_size, sampler=sampler, workers=cfg.workers,
                                           seed=cfg.seed)
                    stage, stage_size = at_stage, size

                sampler.set_epoch(epoch)
                sampler.set_start_global(resume_consumed)  # skips consumed samples without decoding them
                pos = sampler.start
                if cfg.schedule == "onecycle":
                    set_lr(optimizer, *lr_at(epoch * per_epoch + step_in_epoch(), total_steps, cfg))
                elif cfg.schedule == "plateau":
                    set_lr(optimizer, plateau_lr(history, cfg)[0])
                net.train()
                bar = progress.EpochBar(cfg, info, run_dir, epoch, sampler.num_samples, pos, device)
                steps_log = progress.StepLog(tb)
                t_last = time.perf_counter()
                batches = iter(loader)
                while True:
                    try:
                        batch = next(batches)
                    except StopIteration:
                        break
                    except Exception:
                        if not stop.requested:
                            raise
                        # the signal also reached the loader's workers (Ctrl-C goes to the whole process group): the
                        # state of the last finished step is whole, so it is saved as if the signal came after it
                        bar.close()
                        checkpoint()
                        raise stopped() from None

                    # the step: the batch onto the device, augmented, the model's input; forward, loss, update
                    bg, fg_bg, targets = batch_to_device(batch, device, backgrounds)
                    if augment:
                        gen = augment.generator(cfg.seed, global_step, info.rank, device)
                        bg, fg_bg, targets = augment(bg, fg_bg, targets, gen)
                    x = model_input(bg, fg_bg, stats, channels_last=cfg.channels_last)
                    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                        out = net(x)  # {"mask": (B,1,H,W) logits, "depth": (B,1,H,W)}
                        loss, _ = criterion(out, targets)
                    if not scaler.is_enabled():  # fp16's scaler skips non-finite steps itself: those are not errors
                        check_finite(loss, "loss", batch, run_dir, global_step, epoch, cfg.lr)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    D.average_gradients(criterion.parameters(), info)  # DDP averages the model's only
                    if cfg.grad_clip:
                        scaler.unscale_(optimizer)
                        norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                        if not scaler.is_enabled():  # a finite loss can give infinite gradients: never step on them
                            check_finite(norm, "gradient norm", batch, run_dir, global_step, epoch, cfg.lr)
                    scaler.step(optimizer)
                    scaler.update()
                    pos += x.shape[0]
                    global_step += 1
                    if cfg.schedule == "onecycle":
                        set_lr(optimizer, *lr_at(epoch * per_epoch + step_in_epoch(), total_steps, cfg))

                    # the step's records: running sums, progress, TensorBoard; then a checkpoint when due or asked
                    loss_v = float(loss.detach())
                    now = time.perf_counter()
                    accum["loss_sum"] += loss_v
                    accum["batches"] += 1
                    accum["samples"] += x.shape[0]
                    accum["seconds"] += now - t_last
                    t_last = now
                    bar.step(x.shape[0], global_step, loss_v, accum, epoch, pos, per_epoch)
                    steps_log.add(loss_v, global_step, optimizer.param_groups[0]["lr"])
                    if cfg.max_steps and global_step >= cfg.max_steps:
                        checkpoint()
                        D.barrier(info)
                        break
                    due, stop_now = _after_step(ckm, stop, held, info, device, run_dir)
                    if due or stop_now:
                        checkpoint()
                        D.barrier(info)
                        t_last = time.perf_counter()
                    if stop_now:
                        bar.close()
                        raise stopped()
                bar.close()
                if cfg.max_steps and global_step >= cfg.max_steps:
                    break  # checkpoint saved at that step

                # the epoch's end: validation, the history row, best tracking, the epoch-end checkpoint
                loss_sum, batches_n, samples = D.sum_over_ranks(
                    [accum["loss_sum"], accum["batches"], accum["samples"]], info, device)
                train_loss = loss_sum / max(1.0, batches_n)  # mean over every batch of every rank
                row: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss}
                if cfg.size_stages:
                    row.update(stage=stage, size=stage_size)
                if val_loader is not None:
                    metrics = validate(model, val_loader, criterion, stats, device, amp_dtype, cfg) \
                        if info.is_main else {}
                    row["val_loss"] = D.broadcast_float(metrics.get("val_loss", 0.0), info, device)
                    row.update({k: v for k, v in metrics.items() if k != "val_loss"})
                monitor, key = (row["val_loss"], "val_loss") if "val_loss" in row else (train_loss, "train_loss")
                if cfg.schedule == "plateau":
                    set_lr(optimizer, plateau_lr(history + [row], cfg)[0])
                row.update(lr=optimizer.param_groups[0]["lr"], seconds=accum["seconds"],
                           samples_per_s=samples / max(accum["seconds"], 1e-9), global_step=global_step)
                history.append(row)
                is_best = not best or monitor < best["value"]
                if is_best:
                    best = {"metric": key, "value": float(monitor), "epoch": epoch}
                epoch += 1
                pos = resume_consumed = 0
                accum = _zero_accum()
                if info.is_main:
                    confirm()
                    lines = "".join(json.dumps(r) + "\n" for r in history)
                    atomic_write_text(run_dir / HISTORY, lines)  # rewritten from the checkpoint's: no duplicates
                    progress.log_epoch(tb, row)
                finished = epoch >= cfg.epochs
                checkpoint(is_best)
                D.barrier(info)
                if plot is not None:  # after the epoch-end checkpoint: a slow draw never delays it
                    plot.update(history)
                if _stop_agreed(stop, info, device):
                    raise stopped()  # the epoch-end checkpoint is that step's
    finally:
        if tb is not None:
            tb.close()
        loader = batches = val_loader = None  # their workers stop now, not when the garbage collector finds them
    summary = summary_of({"history": history, "best": best, "epoch": epoch, "global_step": global_step,
                          "finished": finished}, run_dir)
    if info.is_main:
        confirm()
        atomic_write_text(run_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")
    D.barrier(info)
    return summary


# ---- what the loop calls --------------------------------------------------------------------------------------

def model_batch(batch: dict[str, Any], device, stats: dict | None = None, channels_last: bool = False,
                backgrounds: BackgroundBank | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A loader's batch -> (the model's input x, the targets), with no augmentation: validation and scoring."""
    bg, fg_bg, targets = batch_to_device(batch, device, backgrounds)
    return model_input(bg, fg_bg, stats, channels_last=channels_last), targets


@torch.no_grad()
def validate(model: nn.Module, loader: Any, criterion: nn.Module, stats: dict | None, device: torch.device,
             amp_dtype: torch.dtype | None, cfg: TrainConfig) -> dict[str, float]:
    """Validation loss (per-sample mean) and the task metrics (per image, then averaged)."""
    was_training = model.training
    model.eval()
    acc = MetricAccumulator(cfg.tasks)
    total, count = 0.0, 0
    for batch in loader:
        x, targets = model_batch(batch, device, stats, cfg.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = model(x)
            loss, _ = criterion(out, targets)
        out = {k: v.float() for k, v in out.items()}
        total += float(loss) * x.shape[0]
        count += x.shape[0]
        acc.update(out, targets)
    model.train(was_training)
    metrics = {"val_loss": total / max(count, 1)}
    metrics.update({k: float(v) for k, v in acc.compute().items()})
    return metrics


def _after_step(ckm: CheckpointManager, stop: StopRequest, held: lease.Lease | None, info: D.DistInfo,
                device: torch.device, run_dir: Path) -> tuple[bool, bool]:
    """(save now: rank 0's checkpoint interval has passed, stop now: a signal reached any rank). Raises when another
    process has taken the run folder's lease over: this one must not write any more."""
    due, stop_now = ckm.due(), stop.requested
    lost = held is not None and held.lost is not None
    if info.enabled:  # one collective for all three: every rank takes the same branch
        due_n, stop_n, lost_n = D.sum_over_ranks([float(due and info.is_main), float(stop_now), float(lost)], info,
                                                 device)
        due, stop_now, lost = due_n > 0, stop_n > 0, lost_n > 0
    if lost:
        if held is not None:
            held.check()
        raise EvaError(f"{run_dir}: another process took this run folder over; stopped without writing more")
    return due, stop_now


def _stop_agreed(stop: StopRequest, info: D.DistInfo, device: torch.device) -> bool:
    """Whether a stop signal reached any rank (between steps, e.g. during validation)."""
    if info.enabled:
        return D.sum_over_ranks([float(stop.requested)], info, device)[0] > 0
    return stop.requested


def stopped_error(signum: int | None, run_dir: Path, global_step: int, epoch: int, pos: int,
                  epoch_samples: int) -> Interrupted:
    """The one line that says where training stopped and which checkpoint the next run resumes from."""
    signum = signal.SIGINT if signum is None else signum
    where = f"epoch {epoch + 1}, {pos} of {epoch_samples} samples" if pos else f"the end of epoch {epoch}"
    return Interrupted(f"stopped by {signal_name(signum)} at step {global_step} ({where}): saved "
                       f"{checkpoint_path(run_dir, 'last')}; the next run in this run folder (the same command or "
                       "cell) resumes from it", signum)


class NonFiniteLossError(EvaError):
    """Training diverged: raised before the optimizer step, so the weights and the last checkpoint stay good."""


def check_finite(value: torch.Tensor, what: str, batch: dict, run_dir: Path, global_step: int, epoch: int,
                 lr: float) -> None:
    """Stop with one line naming the step, the batch's samples and the likely causes when `value` is NaN or inf."""
    if bool(torch.isfinite(value.detach()).all()):
        return
    ids = [m.get("id", m.get("index")) for m in batch.get("meta", [])][:8]
    last = checkpoint_path(run_dir, "last")
    kept = f"the last good checkpoint is kept ({last})" if last.exists() else "no checkpoint was written"
    raise NonFiniteLossError(
        f"step {global_step + 1} (epoch {epoch + 1}): the {what} is {float(value.detach().float().max())} on "
        f"samples {ids}; likely causes: a learning rate too high for this model (lr={lr:g}: try 3x lower), "
        f"normalisation stats with a tiny std ({run_dir / 'stats.json'}), or a damaged sample; {kept}")
