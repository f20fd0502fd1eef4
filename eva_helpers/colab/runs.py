"""Runs as the training notebooks see them: a notebook's TrainConfig, and notebook 05's comparison table.

Notebook 05 finds the single-task runs of notebooks 03 and 04 by their config.json, not their folder name (a RUN_NAME,
or the "-2" run a rebuilt dataset asks for, is found too), and puts one beside the joint run only when it trained on
the same dataset content with the same settings, except where its weights started, its sizes and its loss weighting,
which the table shows. Metrics come from `heldout.current_metrics` (metrics.json while it is newer than the best
checkpoint); `compare_runs` never trains a missing comparison run unless asked to (it would triple the runtime).
"""
from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path
from typing import Any

from eva_helpers.errors import EvaError
from eva_helpers.evaluation.heldout import current_metrics
from eva_helpers.paths import same_path
from eva_helpers.training.config import (
    LEGACY_VALUES,
    RESUMABLE_FIELDS,
    TrainConfig,
    parse_stages,
    result_changing_differences,
)
from eva_helpers.training.run_folder import CONFIG, dataset_identity_at, read_run_config, read_summary, run_folder
from eva_helpers.training.trainer import fit

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


# Fields a joint run and the single-task runs beside it may differ in and still share a table: the task itself, the
# joint run's loss weighting, and where the weights started and at which sizes (a run TRAIN_MISSING trains starts cold
# at one size). The table's "trained" column shows them; every other field that changes results must match.
SHOWN_FIELDS = frozenset({"task", "loss_weighting", "init_from", "init_which", "size_stages"})
RECORDS = ("dataset_identity", "init")  # what fit writes into config.json beside the TrainConfig fields


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    """A config's TrainConfig fields (legacy values filled in), its split seed explicit (None means `seed`)."""
    d = {**LEGACY_VALUES, **{k: v for k, v in config.items() if k not in RECORDS}}
    d["split_seed"] = d.get("seed") if d.get("split_seed") is None else d["split_seed"]
    return d


def _differences(cfg: TrainConfig, other: dict[str, Any], identity: str | None) -> list[str]:
    ours, theirs = _settings(cfg.to_dict()), _settings(other)
    keys = {k for k in result_changing_differences(theirs, ours) if k not in SHOWN_FIELDS}
    if theirs.get("epochs") != ours["epochs"]:  # more epochs would extend a resumed run; here they are another run
        keys.add("epochs")
    diff = [f"{k}: {theirs.get(k)!r} -> {ours.get(k)!r}" for k in sorted(keys)]
    was = other.get("dataset_identity")
    if was and identity and was != identity:
        diff.insert(0, f"dataset content: {was[:12]} -> {identity[:12]}")
    elif not was and not same_path(other.get("data"), cfg.data):  # a run from before identities were recorded
        diff.insert(0, f"dataset: {other.get('data')!r} -> {cfg.data!r}")
    return diff


def differences(cfg: TrainConfig, run_dir: str | Path) -> list[str]:
    """What makes the run at `run_dir` not comparable with `cfg` ("field: theirs -> ours"): its dataset content, or a
    field that changes results other than SHOWN_FIELDS (epochs included); [] when it matches or has no config yet."""
    other = read_run_config(run_dir)
    return [] if other is None else _differences(cfg, other, dataset_identity_at(cfg.data))


def _runs_of(runs: Path, task: str) -> list[tuple[Path, dict[str, Any]]]:
    """(folder, config.json) of every run of `task` in the runs folder, whatever its name (RUN_NAME)."""
    found = []
    for run in sorted(runs.iterdir()) if runs.is_dir() else []:
        try:
            config = read_run_config(run) if run.is_dir() else None
        except EvaError as e:
            print(f"{e} (not compared)")
            continue
        if config is not None and config.get("task") == task:
            found.append((run, config))
    return found


def _done(run: Path, cfg: TrainConfig) -> bool:
    summary = read_summary(run) or {}
    return bool(summary.get("finished") or (cfg.max_steps and summary.get("global_step", 0) >= cfg.max_steps))


def _find(cfg: TrainConfig, task: str, runs: Path, identity: str | None) -> Path | None:
    """The run of `task` whose config matches `cfg` (finished first, then the newest); None after saying why each run
    of this dataset (by content or by name: a rebuilt one) is left out."""
    matching, left_out = [], []
    for run, config in _runs_of(runs, task):
        diff = _differences(cfg, config, identity)
        if not diff:
            matching.append(run)
        elif config.get("dataset_identity") == identity or Path(str(config.get("data"))).name == Path(str(cfg.data)).name:
            left_out.append((run, diff))
    if matching:
        return max(matching, key=lambda r: (_done(r, cfg), (r / CONFIG).stat().st_mtime))
    for run, diff in left_out:
        print(f"{task}-only run {run} left out of the table: it differs from this joint run in {'; '.join(diff)}")
    return None


def _free_folder(runs: Path, task: str, cfg: TrainConfig) -> Path:
    """The default run folder of `task`, or `<it>-2`, `-3`, ... when another run's config is there."""
    base = candidate = run_folder(runs, task, cfg.model, cfg.size, cfg.data)
    n = 1
    while (candidate / CONFIG).exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _resumed(cfg: TrainConfig, run: Path) -> TrainConfig:
    """The config an unfinished run continues with: its own recorded settings, this session's resumable ones."""
    recorded = {k: v for k, v in (read_run_config(run) or {}).items() if k not in RECORDS}
    here = {**{k: getattr(cfg, k) for k in RESUMABLE_FIELDS}, "run_dir": str(run), "live_plot": False}
    return replace(TrainConfig.from_dict(recorded, source=str(run / CONFIG)), **here)


def _ready(cfg: TrainConfig, task: str, run: Path | None, runs: Path, train_missing: bool) -> Path | None:
    """`run` when it is finished; else trained (or continued) here with `train_missing`, or None after saying how."""
    if run is not None and _done(run, cfg):
        return run
    if not train_missing:
        where = f"{run} is unfinished" if run is not None else f"none in {runs} matches this joint run"
        print(f"no finished {task}-only run ({where}): run notebook 0{3 if task == 'mask' else 4} with this run's "
              f"DATASET, MODEL, SIZE, EPOCHS, BATCH_SIZE, LR and SEED (under any RUN_NAME), or set TRAIN_MISSING = "
              f"True to train it here (about as long as this notebook's training)")
        return None
    if run is not None:
        print(f"continuing the unfinished {task}-only run in {run}")
        fit(_resumed(cfg, run))
        return run
    run = _free_folder(runs, task, cfg)
    print(f"training the missing {task}-only run in {run}, from scratch at {cfg.size} px (resumes if interrupted)")
    fit(replace(cfg, task=task, run_dir=str(run), loss_weighting="fixed", init_from=None, init_which="best",
                size_stages=None, live_plot=False))
    return run


def trained_as(configs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """{row: how its run was trained}: where its weights started, its sizes, and every other field that changes
    results and differs between the rows (the joint run's loss weighting)."""
    settings = {row: _settings(c) for row, c in configs.items()}
    always = {"task", "init_from", "init_which", "size_stages"}
    extra = sorted({k for a in settings.values() for b in settings.values()
                    for k in result_changing_differences(a, b)} - always)
    out = {}
    for row, s in settings.items():
        start = f"warm start from {Path(s['init_from']).name} ({s['init_which']})" if s.get("init_from") else "from scratch"
        stages = s.get("size_stages") or []
        sizes = (", ".join(f"{a} px × {b} ep" for a, b in stages) + f", then {s.get('size')} px" if stages
                 else f"{s.get('size')} px throughout")
        out[row] = "; ".join([start, sizes] + [f"{k} {s.get(k)}" for k in extra])
    return out


def add_run_columns(table: str, results: dict[str, dict]) -> str:
    """`results_table`'s Markdown with two more columns: each row's run folder and how it was trained (`trained`)."""
    lines = table.rstrip("\n").split("\n")
    out = [lines[0] + " run | trained |", lines[1] + "---|---|"]
    for line in lines[2:]:
        m = next((m for name, m in results.items() if line.startswith(f"| {name} |")), {})
        run = Path(str(m["run_dir"])).name if m.get("run_dir") else "–"
        out.append(f"{line} {run.replace('|', '/')} | {str(m.get('trained', '–')).replace('|', '/')} |")
    return "\n".join(out) + "\n"


def compare_runs(cfg: TrainConfig, joint_metrics: dict[str, Any], train_missing: bool = False,
                 tasks: tuple[str, ...] = ("mask", "depth")) -> dict[str, dict]:
    """{row name: metrics, with `run_dir` and `trained`} for the single-task runs beside `cfg`'s joint run.

    The runs are found by their config.json in the runs folder (any name), and used only when they match `cfg` in
    dataset content and every result-changing field but SHOWN_FIELDS (what differs of those is in `trained`); each run
    of this dataset left out says what differs. A finished run is evaluated (or its fresh metrics reused); a missing or
    unfinished one is trained here only with `train_missing`, from scratch at one size (never from the joint run's
    INIT_FROM or SIZE_STAGES), and otherwise reported with what to run instead.
    """
    runs, identity = Path(cfg.run_dir).parent, dataset_identity_at(cfg.data)
    results: dict[str, dict] = {}
    configs: dict[str, dict] = {}
    for task in tasks:
        run = _ready(cfg, task, _find(cfg, task, runs, identity), runs, train_missing)
        if run is not None:
            row = f"{task}-only {cfg.model}"
            results[row], configs[row] = current_metrics(run, cfg.data), read_run_config(run) or {}
    row = f"joint {cfg.model}"
    results[row] = {"run_dir": str(cfg.run_dir), **joint_metrics}
    configs[row] = read_run_config(cfg.run_dir) or cfg.to_dict()
    for row, text in trained_as(configs).items():
        results[row]["trained"] = text
    return results
