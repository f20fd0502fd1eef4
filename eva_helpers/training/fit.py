"""`fit()`: training that survives disconnects. Run it again with the same run folder and it continues mid-epoch.

Resume is exact: the checkpoint holds model, optimizer, scheduler, scaler, loss weights, the position inside the epoch,
the running epoch sums and every RNG; the sampler replays the epoch's order from (seed, epoch) and skips what was
consumed without decoding it; each sample's augmentation is seeded by (seed, epoch, index). On CPU with
`deterministic=True` a run killed at any moment and resumed ends bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from eva_helpers.training import distributed as D
from eva_helpers import lease
from eva_helpers import precision
from eva_helpers.atomic import atomic_write_text, check_output_folder, remove_stale_temps
from eva_helpers.training.checkpoint import CheckpointManager, rng_state, set_rng_state
from eva_helpers.training.config import TrainConfig, is_extension, result_changing_differences
from eva_helpers.errors import EvaError, IntegrityError
from eva_helpers.data.formats import read_manifest
from eva_helpers.data.sampler import ResumableSampler
from eva_helpers.signals import StopRequest
from eva_helpers.training.loop import (Run, evaluate, live_plot, make_loader, open_tensorboard, prepare, stop_agreed,
                         stopped_error, train_one_epoch)

FORMAT = "eva-ckpt/1"
SUMMARY = "summary.json"
HISTORY = "history.jsonl"
EXTENSIONS = "extensions.json"  # [{"from_epochs", "to_epochs", "at_epoch", "global_step"}]: each time a run was extended


def _dataset_identity(data: str | None) -> str | None:
    """Content identity of the dataset at `data` (same bytes at any path -> same identity), None if there is none."""
    if not data:
        return None
    from eva_helpers.data.columns import dataset_identity

    try:
        return dataset_identity(read_manifest(data))
    except EvaError:
        return None


def _check_config(run_dir: Path, cfg: TrainConfig) -> dict[str, Any]:
    """Refuse to resume a run folder whose recorded config differs in a field that changes the result, or whose
    dataset (by content identity, not path: the same dataset on Drive and in /content resumes) is another one.
    Returns the config record to write once every check of the run has passed."""
    path, init = run_dir / "config.json", None
    ident = _dataset_identity(cfg.data)
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError as e:
            raise EvaError(f"{path}: unreadable config ({e})") from e
        if not isinstance(old, dict):
            raise EvaError(f"{path}: not a config (a JSON object expected); use a new run_dir")
        init = old.pop("init", None)
        was = old.pop("dataset_identity", None)
        if was and ident and was != ident:
            raise EvaError(f"{path}: this run was trained on dataset {was[:12]} (at {old.get('data')}), but "
                           f"{cfg.data} is dataset {ident[:12]}; give the run's dataset or use a new run_dir")
        diff = result_changing_differences(old, cfg.to_dict())
        if diff:
            changes = ", ".join(f"{k}: {old.get(k)!r} -> {cfg.to_dict().get(k)!r}" for k in diff)
            hint = "; a run can be extended to more epochs, not shortened" if "epochs" in diff else ""
            raise EvaError(f"{path}: this run folder was trained with other settings ({changes}); "
                           f"use a new run_dir or the same settings{hint}")
    if cfg.init_from and not init:  # where a new run's weights start (a resumed run keeps its record)
        from eva_helpers.training.warm_start import source_record

        init = source_record(cfg.init_from, cfg.init_which)
    return {**cfg.to_dict(), **({"dataset_identity": ident} if ident else {}), **({"init": init} if init else {})}


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_stats(run_dir: Path, cfg: TrainConfig, stats: dict | None, is_main: bool) -> tuple[dict | None, bool]:
    """The normalisation stats of this run, frozen in `<run_dir>/stats.json` at its start, and whether that copy
    still has to be written (by `_start_writing`, once every check has passed).

    eval and predict read that copy, and a resumed run keeps it, so a later `eva stats` on the dataset cannot change
    how a trained model's inputs are normalised. A dataset without stats.json gets them computed (streamed, first
    2,000 samples) rather than silently falling back to ImageNet's.
    """
    from eva_helpers.data.stats import check_stats, compute_stats, read_stats_file

    path = Path(run_dir) / "stats.json"
    if path.is_file():
        return read_stats_file(path), False
    if stats is not None:
        check_stats(stats, "the stats given to fit")
    if stats is None and cfg.data:
        stats = compute_stats(cfg.data, limit=2000, progress=cfg.progress and is_main, write=is_main)
    return stats, stats is not None


def build_data(cfg: TrainConfig) -> tuple[Any, Any, dict | None]:
    """Train/val ShardDatasets (decode and resize only), split by `cfg.split_by`, and the dataset's channel stats."""
    from eva_helpers.data.augment import build_transforms
    from eva_helpers.data.dataset import ShardDataset, make_splits
    from eva_helpers.data.stats import load_stats

    if not cfg.data:
        raise EvaError("TrainConfig.data is not set: give the dataset folder (the one holding manifest.json)")
    fr = (1.0 - cfg.val_fraction - cfg.test_fraction, cfg.val_fraction, cfg.test_fraction)
    splits = make_splits(cfg.data, by=cfg.split_by, fractions=fr, seed=cfg.splits_seed)
    # workers only read, decode (and resize a dataset of another size): augmentation runs on the batch (batch_augment),
    # and bg comes from the run's BackgroundBank (loaders.py) by bg_id; uint8 mask, float16 depth out of the workers
    train_set = ShardDataset(cfg.data, indices=splits["train"],
                             transform=build_transforms("val", cfg.size, compact=True, with_bg=False))
    val_set = ShardDataset(cfg.data, indices=splits["val"], transform=build_transforms("val", cfg.size))
    return train_set, (val_set if len(val_set) else None), load_stats(cfg.data)


def _make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int):
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


def read_history(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """history.jsonl's rows (one per finished epoch); [] when there is none. A damaged line is skipped with a warning:
    the file is a readable copy of the checkpoint's history, rewritten from it by the next resume."""
    path = Path(run_dir) / HISTORY
    try:
        lines = path.read_bytes().splitlines()  # bytes: a line of non-UTF-8 bytes is one damaged line, not a crash
    except OSError:
        return []
    rows, bad = [], 0
    for line in filter(bytes.strip, lines):
        try:
            row = json.loads(line.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError included
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    if bad:
        warnings.warn(f"{path}: {bad} damaged line(s) skipped (the checkpoint keeps the full history; resuming the "
                      "run rewrites this file)")
    return rows


def read_extensions(run_dir: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads((Path(run_dir) / EXTENSIONS).read_text()))
    except (OSError, ValueError):
        return []


def _extension(state: dict[str, Any], cfg: TrainConfig) -> dict[str, Any] | None:
    """The extension record when the checkpoint was trained for fewer epochs than `cfg.epochs`, else None."""
    old = state.get("config", {})
    if not is_extension(old, cfg.to_dict()):
        return None
    return {"from_epochs": int(old["epochs"]), "to_epochs": cfg.epochs, "at_epoch": int(state["epoch"]),
            "global_step": int(state["global_step"])}


def _start_writing(run_dir: Path, ckm: CheckpointManager, config: dict[str, Any], ext: dict[str, Any] | None,
                   stats: dict | None, on_start: Callable[[Path], None] | None = None) -> None:
    """The run's first writes, once every check has passed: a refused command leaves the run folder as it was
    (no config rewritten for epochs it never trained, no extension recorded that never happened)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if on_start is not None:  # the caller's own records (notebook training: code.json, dataset.json)
        on_start(run_dir)
    remove_stale_temps(run_dir)  # half-written config/history/summary copies from a killed run
    atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2) + "\n")
    ckm.prepare()
    if ext is not None:
        exts = read_extensions(run_dir)
        if ext not in exts:  # a crash before the next checkpoint finds the same extension again
            atomic_write_text(run_dir / EXTENSIONS, json.dumps(exts + [ext], indent=1) + "\n")
        print(f"extending {run_dir.name} from {ext['from_epochs']} to {ext['to_epochs']} epochs ({ext['at_epoch']} "
              f"done): the learning-rate schedule is re-timed to end with epoch {ext['to_epochs']}", flush=True)
    if stats is not None:
        atomic_write_text(run_dir / "stats.json", json.dumps(stats, indent=1) + "\n")


def summary_of(state: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    history = list(state.get("history", []))
    best = dict(state.get("best") or {})
    best_row = next((r for r in history if r.get("epoch") == best.get("epoch")), None)
    return {"run_dir": str(run_dir), "finished": bool(state.get("finished")), "global_step": int(state["global_step"]),
            "epochs_completed": len(history), "best": best, "best_metrics": best_row, "history": history,
            "last_checkpoint": str(run_dir / "checkpoints" / "last.pt"),
            "best_checkpoint": str(run_dir / "checkpoints" / "best.pt"), "extensions": read_extensions(run_dir),
            "init": _recorded_init(run_dir)}


def _recorded_init(run_dir: Path) -> dict[str, Any] | None:
    """Where the run's weights started (config.json "init", warm_start.py), or None: from scratch."""
    try:
        return json.loads((run_dir / "config.json").read_text()).get("init")
    except (OSError, ValueError, AttributeError):
        return None


def fit(cfg: TrainConfig, *, model: nn.Module | None = None, train_set: Any = None, val_set: Any = None,
        criterion: nn.Module | None = None, stats: dict | None = None,
        on_start: Callable[[Path], None] | None = None) -> dict[str, Any]:
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
    """
    if not cfg.run_dir:
        raise EvaError("TrainConfig.run_dir is not set: give a folder for config, history and checkpoints")
    run_dir = Path(cfg.run_dir)
    _preflight(cfg, run_dir, model, train_set)
    info, device = D.init_distributed(cfg.device)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    held = None
    try:
        held = _claim(run_dir, info, device)
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


def _claim(run_dir: Path, info: D.DistInfo, device: torch.device) -> lease.Lease | None:
    """Rank 0 takes the run folder's lease (a second trainer stops here, in one line); every rank learns the outcome,
    so none waits for a rank that was refused."""
    held, error = None, None
    if info.is_main:
        try:
            held = lease.acquire(run_dir, "training")
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
    from eva_helpers.training.batch_augment import BatchAugment

    BatchAugment.from_config(cfg)  # second_shot_opts checked
    if model is None:
        from eva_helpers.models import build_model

        model = build_model(cfg.model, tasks=cfg.tasks, **cfg.model_kwargs)  # no weights: a check, not the model
    if cfg.init_from and not (run_dir / "config.json").exists():  # a resumed run has its own weights
        from eva_helpers.training.warm_start import check_source

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
    config = _check_config(run_dir, cfg)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    ckm = CheckpointManager(run_dir, cfg.keep_last, cfg.checkpoint_interval_s, is_main=False)  # reads only, for now
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
                _start_writing(run_dir, ckm, config, ext, None, on_start)
            D.barrier(info)
            return summary_of(state, run_dir)

    seed_everything(cfg.seed)
    stats, write_stats = run_stats(run_dir, cfg, stats, info.is_main)
    if model is None and state is not None and state.get("model_args"):
        from eva_helpers.models import rebuild_model  # the architecture the checkpoint was trained with, whatever the defaults now

        model = rebuild_model(state["model_args"])
    elif model is None:
        from eva_helpers.models import build_model

        extra = {"pretrained": True} if cfg.pretrained else {}  # UNets have no pretrained option at all
        model = build_model(cfg.model, tasks=cfg.tasks, **extra, **cfg.model_kwargs)
    if state is None and cfg.init_from:
        from eva_helpers.training.warm_start import describe, load_into

        init = config["init"]  # recorded by _check_config; written with config.json once every check passed
        started = load_into(model, init)
        if info.is_main:
            print(describe(init, started), flush=True)
    if criterion is None:
        from eva_helpers.training.losses import build_criterion

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
    sched = _make_scheduler(cfg, opt, steps_per_epoch)
    amp_dtype = precision.amp_dtype(device) if cfg.amp else None  # bf16 only where native, fp16 + scaler elsewhere
    scaler = torch.amp.GradScaler("cuda", enabled=precision.needs_grad_scaler(amp_dtype))

    run = Run(cfg=cfg, run_dir=run_dir, info=info, device=device, model=model, raw_model=model, criterion=criterion,
              optimizer=opt, scheduler=sched, scaler=scaler, amp_dtype=amp_dtype, sampler=sampler, stats=stats,
              ckm=ckm, model_args=model_args, lease=held)
    if state is not None:
        _load_state(run, state, steps_per_epoch)
    # checks passed: from here on the run folder is written
    if info.is_main:
        _start_writing(run_dir, ckm, config, ext, stats if write_stats else None, on_start)
    D.barrier(info)
    if state is not None and info.is_main:
        print(f"resumed from {ckm.loaded_from} (epoch {run.epoch}, step {run.global_step})", flush=True)
    if info.enabled:
        dev_ids = [device.index] if device.type == "cuda" else None
        run.model = nn.parallel.DistributedDataParallel(model, device_ids=dev_ids)
    if cfg.compile:
        run.model = torch.compile(run.model)
    run.state_fn = lambda: _state(run)
    from eva_helpers.training.batch_augment import BatchAugment

    run.augment = BatchAugment.from_config(cfg)
    # validation in dataset order with plain int keys: no sample seed, so no augmentation, same every epoch
    run.val_loader = (make_loader(val_set, cfg.batch_size, sampler=list(range(len(val_set))), workers=cfg.workers,
                                  seed=cfg.seed) if val_set is not None else None)
    run.tb = open_tensorboard(cfg, run_dir) if info.is_main else None

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
                if stop_agreed(run):
                    raise stopped_error(run)  # the epoch-end checkpoint is that step's
    finally:
        if run.tb is not None:
            run.tb.close()
        run.loader = run.val_loader = None  # their workers stop now, not when the garbage collector finds `run`
    summary = summary_of(_state(run), run_dir)
    if info.is_main:
        atomic_write_text(run_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")
    D.barrier(info)
    return summary


def _enter_stage(run: Run, train_set: Any, stage: int, size: int) -> int:
    """Training batches at `size` from here on: the workers decode and resize to it, the background bank holds it.
    Validation stays at `cfg.size`, so every epoch's val loss (and the best checkpoint) is comparable."""
    cfg = run.cfg
    if cfg.size_stages and hasattr(train_set, "transform"):
        from eva_helpers.data.augment import build_transforms

        train_set.transform = build_transforms("val", size, compact=True, with_bg=False)
        if run.info.is_main and cfg.progress:
            print(f"stage {stage + 1} of {len(cfg.size_stages) + 1}: training at {size} px from epoch {run.epoch + 1}",
                  flush=True)
    if hasattr(train_set, "background"):  # a ShardDataset: batches without bg take theirs from the bank (lazy)
        from eva_helpers.data.loaders import BackgroundBank

        run.backgrounds = BackgroundBank(train_set, size)
    run.loader = None  # a previous stage's persistent workers stop before the new ones start
    run.loader = make_loader(train_set, cfg.batch_size, sampler=run.sampler, workers=cfg.workers, seed=cfg.seed)
    run.stage, run.stage_size = stage, size
    return size


def _load_state(run: Run, state: dict[str, Any], steps_per_epoch: int) -> None:
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
        metrics = evaluate(run) if info.is_main else {}
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
        lines = "".join(json.dumps(r) + "\n" for r in run.history)
        atomic_write_text(run.run_dir / HISTORY, lines)  # rewritten from the checkpoint's history: no duplicates
        if run.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    run.tb.add_scalar(k, v, row["epoch"])
        if cfg.live_plot:
            live_plot(run.history)
    run.finished = run.epoch >= cfg.epochs
    run.ckm.save(_state(run), best=is_best)
    D.barrier(info)


def _rank_accum(accums: list[dict], info: D.DistInfo) -> dict:
    """This rank's running epoch sums; from another world size, rank 0 carries them all."""
    if len(accums) == info.world_size:
        return dict(accums[info.rank])
    zero = {"loss_sum": 0.0, "batches": 0, "samples": 0, "seconds": 0.0}
    if info.rank != 0:
        return zero
    merged = {k: sum(a[k] for a in accums) for k in ("loss_sum", "batches", "samples")}
    return {**merged, "seconds": max(a["seconds"] for a in accums)}


def _state(run: Run) -> dict[str, Any]:
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


def load_run(run_dir: str | os.PathLike, which: str = "best", device: str | torch.device = "cpu", *,
             build_fn: Any = None) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """Rebuild a trained model from a run folder: `(model in eval mode, its TrainConfig, the checkpoint dict)`.

    `build_fn(**model_args)` (for models outside the registry) defaults to `eva_helpers.models.rebuild_model`.
    The checkpoint dict's "loaded_from" names the file used: "best" is best.pt, or the newest checkpoint while a run
    has none yet (stopped by max_steps before its first evaluation); a damaged best.pt is an error, never silently
    replaced by another checkpoint. "last" is the newest checkpoint that verifies (damaged newer ones are skipped with
    a warning).
    """
    if which not in ("best", "last"):
        raise EvaError(f"which={which!r}: use 'best' or 'last'")
    if not Path(run_dir).is_dir():
        raise EvaError(f"{run_dir}: no such run folder; give the folder `eva train --run-dir` (or a notebook) wrote")
    manager = CheckpointManager(run_dir, is_main=False)  # reading only: nothing is created or cleaned
    ckpt, path = None, manager.dir / f"{which}.pt"
    if which == "best" and path.exists():
        try:
            ckpt = manager.load_best(map_location=device)
        except IntegrityError as e:
            raise IntegrityError(f"{e}; score the newest checkpoint with --which last (which='last'), or restore "
                                 "best.pt from a backup") from None
    if ckpt is None:
        ckpt = manager.load_latest(map_location=device)
        path = manager.loaded_from or path
    if ckpt is None:
        found = manager.candidates()
        if found:
            raise IntegrityError(f"{manager.dir}: every checkpoint is damaged ({', '.join(p.name for p in found)}); "
                                 "restore one from a backup, or train again into a new run folder")
        raise EvaError(f"{Path(run_dir)}: no checkpoint in checkpoints/ (has this run folder been trained?)")
    ckpt["loaded_from"] = str(path)
    if not ckpt.get("model_args"):
        raise EvaError(f"{path}: the checkpoint has no model_args, so the model cannot be rebuilt")
    if build_fn is None:
        from eva_helpers.models import rebuild_model  # no pretrained download: the state_dict replaces those weights

        model = rebuild_model(ckpt["model_args"])
    else:
        model = build_fn(**ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    return model, TrainConfig.from_dict(ckpt["config"], source=str(path)), ckpt


__all__ = ["fit", "load_run", "build_data", "prepare", "evaluate", "train_one_epoch", "summary_of"]
