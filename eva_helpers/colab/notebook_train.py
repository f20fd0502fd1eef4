"""The steps of the training notebooks (03-05), one call each: model summary, training, TensorBoard, evaluation with
its figure, the comparison table, the prediction browser and the two labelled photo uploads of notebook 05.

Before training, a run folder that exists is checked against the dataset it was trained on (the same `DATASET` name,
rebuilt with other content, is refused in one line that says what changed and how to start a new run), and the code
that trains is recorded in `code.json` (one entry per session whose code differs), so a reconnect that installed newer
code is seen. Every step that writes into a run folder on Drive first checks that Drive is mounted.

Uploads are validated before anything runs on them (exactly one readable photo per step, the second the same size as
the first); they wait for a file, so they run only with UPLOAD_PHOTOS (otherwise, and outside Colab or with SMOKE, a
sample pair of the dataset is used and the notebook says so).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from eva_helpers.atomic import atomic_write_bytes, atomic_write_text
from eva_helpers.colab.runs import compare_runs
from eva_helpers.colab.session import describe_code, installed_code
from eva_helpers.colab.widgets import prediction_browser
from eva_helpers.data.augment import build_transforms
from eva_helpers.data.dataset import ShardDataset
from eva_helpers.data.formats import read_manifest
from eva_helpers.data.verify import dataset_identity
from eva_helpers.demo import results_table
from eva_helpers.errors import BadInputError, EvaError
from eva_helpers.estimate import estimate_evaluation, estimate_training
from eva_helpers.evaluation.align import describe_alignment
from eva_helpers.evaluation.calibrate import load_calibration
from eva_helpers.evaluation.heldout import current_metrics, load_run_stats, split_positions
from eva_helpers.evaluation.predict import load_photo, predict_pair
from eva_helpers.models import build_model, summary
from eva_helpers.paths import in_colab, path_problem, require_drive_mounted
from eva_helpers.plots import side_by_side
from eva_helpers.training.config import TrainConfig
from eva_helpers.training.fit import fit
from eva_helpers.training.run_folder import (
    CHECKPOINTS,
    CODE,
    CONFIG,
    DATASET_RECORD,
    METRICS,
    checkpoint_path,
    load_run,
    read_summary,
    tensorboard_dir,
)

UPLOADS = Path("uploads")  # beside the notebook (Colab: /content/uploads)


def checked(cfg: TrainConfig) -> TrainConfig:
    """`cfg`, range-checked again (one line): a cell may have set a field (`cfg.size = ...`) after notebook_config
    checked it, and the model summary and the time estimate allocate at its size and batch."""
    replace(cfg)
    return cfg


def show_model(cfg: TrainConfig) -> None:
    checked(cfg)
    summary(build_model(cfg.model, tasks=cfg.tasks, **cfg.model_kwargs), cfg.size)


def _dataset_facts(data: str | Path) -> dict[str, Any]:
    m = read_manifest(data)
    params = m.get("params") or {}
    return {"identity": dataset_identity(m), "name": Path(str(data)).name, "samples": (m.get("counts") or {}).get("samples"),
            "shards": len(m.get("shards", [])),
            **{k: params.get(k) for k in ("size", "positions", "seed", "teacher", "mode", "flips") if k in params}}


def _read_json(path: Path):
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def check_run_dataset(cfg: TrainConfig) -> None:
    """Refuse, in one line, a run folder trained on other dataset content than `cfg.data` (a rebuilt or extended
    dataset under the same name), saying what changed and how to start a new run on purpose."""
    run = Path(cfg.run_dir)
    old = _read_json(run / CONFIG)
    if not isinstance(old, dict) or not old.get("dataset_identity") or not cfg.data:
        return
    now = _dataset_facts(cfg.data)
    if old["dataset_identity"] == now["identity"]:
        return
    was = _read_json(run / DATASET_RECORD) or {}
    changes = [f"{k} {was[k]} -> {now[k]}" for k in ("samples", "shards", "size", "positions", "seed", "teacher", "mode",
                                                      "flips") if k in was and was.get(k) != now.get(k)]
    what = ", ".join(changes) if changes else f"content {old['dataset_identity'][:12]} -> {now['identity'][:12]}"
    raise EvaError(f"{run}: this run was trained on another version of dataset {now['name']!r} ({what}); to keep "
                   f"training it, restore that dataset; to start a new run on this one on purpose, set RUN_NAME = "
                   f"'{run.name}-2' (or another new name) and run all again")


def record_code(run_dir: str | Path) -> dict[str, str]:
    """Append this session's code (version, commit) to `<run>/code.json` when it differs from the last entry, and say
    so when the run was trained with other code before. Returns this session's entry."""
    import json
    from datetime import datetime, timezone

    path = Path(run_dir) / CODE
    history = _read_json(path)
    history = history if isinstance(history, list) else []
    now = installed_code()
    last = history[-1] if history else None
    same = last is not None and (last.get("version"), last.get("commit")) == (now.get("version"), now.get("commit"))
    if last is not None and not same:
        print(f"{Path(run_dir).name}: trained so far with {describe_code(last)}; this session runs "
              f"{describe_code(now)}, so the rest of the run uses other code")
    if not same:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        history.append({**now, "since": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        atomic_write_text(path, json.dumps(history, indent=1) + "\n")
    return now


def _split_sizes(cfg: TrainConfig) -> dict[str, int]:
    return {k: len(v) for k, v in split_positions(cfg, cfg.data).items() if k in ("train", "val", "test")}


def _epochs_done(run_dir: Path) -> int:
    return int((read_summary(run_dir) or {}).get("epochs_completed") or 0)


def train(cfg: TrainConfig, force_takeover: bool = False) -> dict[str, Any]:
    """`fit(cfg)` (resumes, or extends to more epochs), then one plain sentence on where the run stands.
    `force_takeover` (FORCE_TAKEOVER): take the run over from another runtime's lease at once, without watching it.

    First: Drive mounted, the run's dataset unchanged, the time estimated; the code and the dataset are recorded in the
    run folder once fit's own checks have passed."""
    import json

    checked(cfg)
    run = require_drive_mounted(Path(cfg.run_dir), "training")
    check_run_dataset(cfg)

    def records(run_dir: Path) -> None:  # written once fit's checks have passed: a refused run leaves none behind
        record_code(run_dir)
        if cfg.data and not (run_dir / DATASET_RECORD).is_file():
            atomic_write_text(run_dir / DATASET_RECORD, json.dumps(_dataset_facts(cfg.data), indent=1) + "\n")

    left = cfg.epochs - _epochs_done(run)
    if left > 0:
        estimate_training(cfg, _split_sizes(cfg)["train"], left)
    s = fit(cfg, on_start=records, force_takeover=force_takeover)
    best = s.get("best") or {}
    if s["finished"]:
        state = "finished"
    elif cfg.max_steps and s["global_step"] >= cfg.max_steps:
        state = f"stopped at max_steps={cfg.max_steps}"
    else:
        state = f"stopped at step {s['global_step']} (run again to continue)"
    best_text = (f"best {best['metric']} {best['value']:.4f} at epoch {best['epoch']}" if best
                 else "no epoch finished yet, so no best checkpoint: evaluation uses the last one")
    print(f"{Path(cfg.run_dir).name}: {state}; {s['epochs_completed']} of {cfg.epochs} epochs; {best_text}")
    for e in s.get("extensions", []):
        print(f"extended from {e['from_epochs']} to {e['to_epochs']} epochs at epoch {e['at_epoch']}")
    return s


def tensorboard(cfg: TrainConfig) -> str:
    """%tensorboard on this run's local logs in Colab; elsewhere print the command. Returns the log folder."""
    logdir = str(tensorboard_dir(cfg.run_dir))
    shell = None
    if in_colab():
        from IPython import get_ipython

        shell = get_ipython()
    if shell is None:
        print(f"TensorBoard: tensorboard --logdir {logdir}")
    else:
        shell.run_line_magic("load_ext", "tensorboard")
        shell.run_line_magic("tensorboard", f"--logdir {logdir}")
    return logdir


def evaluate(cfg: TrainConfig) -> dict[str, Any]:
    """Held-out test split beside the baseline: metrics.json in the run folder, the best/worst figure shown."""
    require_drive_mounted(Path(cfg.run_dir), "the evaluation")
    metrics_file, best = Path(cfg.run_dir) / METRICS, checkpoint_path(cfg.run_dir, "best")
    if not metrics_file.is_file() or (best.is_file() and metrics_file.stat().st_mtime < best.stat().st_mtime):
        estimate_evaluation(cfg, _split_sizes(cfg)["test"])

    metrics = current_metrics(cfg.run_dir, cfg.data)
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
    fig = Path(cfg.run_dir) / "eval_best_worst.png"
    if fig.is_file():
        from IPython.display import Image, display

        display(Image(filename=str(fig)))
    print("checkpoints:", sorted(p.name for p in (Path(cfg.run_dir) / CHECKPOINTS).iterdir() if p.suffix == ".pt"))
    return metrics


def comparison(cfg: TrainConfig, joint_metrics: dict[str, Any], train_missing: bool = False):
    """Notebook 05's table: joint against the single-task runs of 03/04 that match it (dataset, split and its seed,
    size, epochs) and the baseline (Markdown), saved as `comparison.md` in the joint run folder."""
    from IPython.display import Markdown

    run = require_drive_mounted(Path(cfg.run_dir), "the comparison")
    table = results_table(compare_runs(cfg, joint_metrics, train_missing))
    atomic_write_text(run / "comparison.md", table + "\n")
    print(f"table saved in {run / 'comparison.md'}")
    return Markdown(table)


def _run(cfg: TrainConfig):
    model, run_cfg, _ = load_run(cfg.run_dir)
    return model, run_cfg, load_run_stats(Path(cfg.run_dir), Path(cfg.data))


def browse_predictions(cfg: TrainConfig):
    """A widget over the test and validation splits: predictions against targets."""
    model, run_cfg, stats = _run(cfg)
    splits = split_positions(run_cfg, cfg.data)
    tf = build_transforms("test", run_cfg.size)
    return prediction_browser(model, {s: ShardDataset(cfg.data, indices=splits[s], transform=tf)
                                      for s in ("test", "val")}, stats)


def check_upload(uploaded: dict[str, bytes], role: str, like: np.ndarray | None = None) -> np.ndarray:
    """One uploaded photo -> (H, W, 3) uint8; exactly one readable file, the same size as `like` when given."""
    if len(uploaded) != 1:
        names = ", ".join(uploaded) or "nothing"
        raise BadInputError(f"{role}: upload exactly one photo (got {names}); run this cell again")
    name, data = next(iter(uploaded.items()))
    base = Path(name.replace("\\", "/")).name
    if path_problem(base, one_part=True):  # "..", "", "a:b", control characters: kept under a name of ours instead
        base = "upload-" + "".join(c if c.isalnum() else "-" for c in role.lower()) + Path(base).suffix.lower()
    path = UPLOADS / base
    atomic_write_bytes(path, data)
    img = load_photo(path)
    if like is not None and img.shape != like.shape:
        raise BadInputError(f"{path}: {img.shape[1]}x{img.shape[0]} but the background is {like.shape[1]}x"
                            f"{like.shape[0]}: upload the same photo, same size, with the object in it")
    print(f"{role}: {path} ({img.shape[1]}x{img.shape[0]})")
    return img


def upload_photo(role: str, data_dir: str | Path, smoke: bool = False, like: np.ndarray | None = None,
                 upload: bool = True) -> np.ndarray:
    """Colab with `upload` (UPLOAD_PHOTOS): an upload button for one photo (`role` says which); otherwise (or SMOKE)
    sample 0 of the dataset. An upload waits for a file, which would hold up "Run all": off by default."""
    if in_colab() and not smoke and upload:
        from google.colab import files  # type: ignore

        print(f"Choose ONE photo: {role}")
        return check_upload(files.upload(), role, like)

    key = "bg" if like is None else "fg_bg"
    why = ("UPLOAD_PHOTOS is off (set it to True and run these cells to upload your own)" if in_colab() and not smoke
           else "no upload outside Colab (or with SMOKE)")
    print(f"{role}: {why}: using sample 0 of {data_dir} ({key})")
    return ShardDataset(data_dir)[0][key]


def predict_photos(cfg: TrainConfig, bg: np.ndarray, fg_bg: np.ndarray):
    """The trained model on the two photos, at their own size: bg | fg_bg | mask | depth, after one line saying what
    the alignment of bg to fg_bg applied (as `eva predict` prints it)."""
    model, run_cfg, stats = _run(cfg)
    try:

        calib = load_calibration(cfg.run_dir)
    except ImportError:
        calib = None
    pred = predict_pair(model, bg, fg_bg, run_cfg.size, stats, calib=calib)
    print(describe_alignment(pred["alignment"]))
    return side_by_side(bg, fg_bg, pred.get("mask"), pred.get("depth"))
