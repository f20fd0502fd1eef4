"""Runs as the training notebooks see them: a notebook's TrainConfig, and notebook 05's comparison table.

One naming rule (`run_folder.run_folder`) lets notebook 05 find the runs notebooks 03 and 04 trained; their metrics come
from `heldout.current_metrics` (metrics.json while it is newer than the best checkpoint); `compare_runs` never trains a
missing comparison run unless asked to (it would triple the runtime) and says what is missing instead.
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from eva_helpers.data.formats import read_manifest
from eva_helpers.data.verify import dataset_identity
from eva_helpers.errors import EvaError
from eva_helpers.evaluation.heldout import current_metrics
from eva_helpers.training.config import TrainConfig
from eva_helpers.training.fit import fit
from eva_helpers.training.run_folder import CONFIG, read_summary, run_folder

# SMOKE: a few optimizer steps of the smallest model at 32 px, no worker processes (about a minute on a CPU)
SMOKE_TRAIN = {"model": "unet_small", "epochs": 1, "batch_size": 16, "size": 32, "max_steps": 6, "workers": 0}


def notebook_config(task: str, data_dir: str | Path, paths, smoke: bool = False, *, model: str = "",
                    epochs: int | None = None, batch_size: int | None = None, size: int | None = None,
                    lr: float | None = None, seed: int = 0, run_name: str = "", init_from: str = "",
                    size_stages: str = "", **fields: Any) -> TrainConfig:
    """The TrainConfig of a training notebook: its parameters over TrainConfig's defaults (empty/0 = the default).

    SMOKE replaces model, epochs, batch size, size and steps by `SMOKE_TRAIN`. The run folder is named by
    `run_folder` under `paths.runs` unless `run_name` is given. TensorBoard logs are on when tensorboard is installed.
    `init_from`: a run folder, or the name of one in `paths.runs`, to start from (warm_start.py); `size_stages`:
    "32:5 48:2" = 5 epochs at 32 px, 2 at 48, then the rest at `size`.
    """
    given = {"model": model or None, "epochs": epochs or None, "batch_size": batch_size or None, "size": size or None,
             "lr": lr or None, "init_from": _run_path(paths, init_from) if init_from else None,
             "size_stages": parse_stages(size_stages) if size_stages else None}
    over = {k: v for k, v in given.items() if v is not None}
    if smoke:
        over.update(SMOKE_TRAIN)
        over.pop("size_stages", None)  # a smoke run is a few steps at one size
    over.setdefault("tensorboard", importlib.util.find_spec("tensorboard") is not None)
    cfg = TrainConfig(task=task, data=str(data_dir), seed=seed, live_plot=True, **{**over, **fields})
    return replace(cfg, run_dir=str(run_folder(paths.runs, task, cfg.model, cfg.size, data_dir, run_name)))


def _run_path(paths, name: str) -> str:
    """A run folder as given, or the run of that name in the runs folder (where the notebooks put them)."""
    given = Path(name).expanduser()
    return str(given if given.is_dir() or given.is_absolute() else Path(paths.runs) / name)


def parse_stages(text: str) -> list[list[int]]:
    """ "32:5 48:2" -> [[32, 5], [48, 2]] (size in px : epochs); a malformed stage is one line."""
    out = []
    for part in text.replace(",", " ").split():
        size, sep, epochs = part.partition(":")
        if not (sep and size.isdigit() and epochs.isdigit()):
            raise EvaError(f"SIZE_STAGES {text!r}: write SIZE:EPOCHS stages separated by spaces, e.g. \"32:5\"")
        out.append([int(size), int(epochs)])
    return out


MATCH_FIELDS = ("split_by", "split seed", "val_fraction", "test_fraction", "size", "epochs")


def differences(cfg: TrainConfig, run_dir: str | Path) -> list[str]:
    """What makes the run at `run_dir` not comparable with `cfg`: its dataset content, split and split seed, size or
    epochs ("field: theirs -> ours"); [] when it matches or has no config yet."""
    try:
        other = json.loads((Path(run_dir) / CONFIG).read_text())
    except (OSError, ValueError):
        return []
    ours = {**cfg.to_dict(), "split seed": cfg.effective_split_seed}
    theirs = {**other, "split seed": other.get("split_seed") if other.get("split_seed") is not None else other.get("seed")}
    diff = [f"{k}: {theirs.get(k)!r} -> {ours.get(k)!r}" for k in MATCH_FIELDS if theirs.get(k) != ours.get(k)]
    if other.get("dataset_identity"):

        ident = dataset_identity(read_manifest(cfg.data))
        if ident != other["dataset_identity"]:
            diff.insert(0, f"dataset content: {other['dataset_identity'][:12]} -> {ident[:12]}")
    return diff


def compare_runs(cfg: TrainConfig, joint_metrics: dict[str, Any], train_missing: bool = False,
                 tasks: tuple[str, ...] = ("mask", "depth")) -> dict[str, dict]:
    """{row name: metrics} for the single-task runs beside `cfg`'s joint run (same dataset, model, size).

    A run whose dataset, split, split seed, size or epochs differ from `cfg` is left out, saying what differs. A finished single-task run is evaluated (or its fresh metrics reused). A missing or unfinished one is trained here
    only when `train_missing`; otherwise it is reported as missing, with what to run instead.
    """
    runs = Path(cfg.run_dir).parent
    results: dict[str, dict] = {}
    for task in tasks:
        other = run_folder(runs, task, cfg.model, cfg.size, cfg.data)
        diff = differences(cfg, other)
        if diff:
            print(f"{task}-only run {other} left out of the table: it differs from this joint run in "
                  f"{'; '.join(diff)} (run notebook 0{3 if task == 'mask' else 4} with the same settings)")
            continue
        summary = read_summary(other) or {}
        done = summary.get("finished") or (cfg.max_steps and summary.get("global_step", 0) >= cfg.max_steps)
        if not done:
            if not train_missing:
                print(f"no finished {task}-only run at {other}: run notebook 0{3 if task == 'mask' else 4} with the "
                      f"same DATASET, MODEL and SIZE, or set TRAIN_MISSING = True to train it here (about as long as "
                      f"this notebook's training)")
                continue
            print(f"training the missing {task}-only run in {other} (resumes if interrupted)")
            fit(replace(cfg, task=task, run_dir=str(other), loss_weighting="fixed", live_plot=False))
        results[f"{task}-only {cfg.model}"] = current_metrics(other, cfg.data)
    results[f"joint {cfg.model}"] = joint_metrics
    return results
