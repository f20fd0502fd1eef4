"""The steps of the training notebooks (03-05), one call each: model summary, training, TensorBoard, evaluation with
its figure, the comparison table, the prediction browser and the two labelled photo uploads of notebook 05.

Uploads are validated before anything runs on them (exactly one readable photo per step, the second the same size as
the first); outside Colab (or with SMOKE) a sample pair of the dataset is used and the notebook says so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .config import TrainConfig
from .errors import BadInputError
from .paths import in_colab

UPLOADS = Path("uploads")  # beside the notebook (Colab: /content/uploads)


def show_model(cfg: TrainConfig) -> None:
    from .models import build_model, summary

    summary(build_model(cfg.model, tasks=cfg.tasks, **cfg.model_kwargs), cfg.size)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """`fit(cfg)` (resumes, or extends to more epochs), then one plain sentence on where the run stands."""
    from .train import fit

    s = fit(cfg)
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
    from .paths import default_cache

    logdir = str(default_cache() / "tensorboard" / Path(cfg.run_dir).resolve().name)  # "runs/x/.." names x
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
    from .runs import current_metrics

    metrics = current_metrics(cfg.run_dir, cfg.data)
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
    fig = Path(cfg.run_dir) / "eval_best_worst.png"
    if fig.is_file():
        from IPython.display import Image, display

        display(Image(filename=str(fig)))
    print("checkpoints:", sorted(p.name for p in (Path(cfg.run_dir) / "checkpoints").iterdir() if p.suffix == ".pt"))
    return metrics


def comparison(cfg: TrainConfig, joint_metrics: dict[str, Any], train_missing: bool = False):
    """Notebook 05's table: joint against the single-task runs of 03/04 and the baseline (Markdown)."""
    from IPython.display import Markdown

    from .demo import results_table
    from .runs import compare_runs

    return Markdown(results_table(compare_runs(cfg, joint_metrics, train_missing)))


def _run(cfg: TrainConfig):
    from .evaluate import load_run_stats
    from .train import load_run

    model, run_cfg, _ = load_run(cfg.run_dir)
    return model, run_cfg, load_run_stats(Path(cfg.run_dir), Path(cfg.data))


def browse_predictions(cfg: TrainConfig):
    """A widget over the test and validation splits: predictions against targets."""
    from .augment import build_transforms
    from .dataset import ShardDataset
    from .evaluate import split_positions
    from .widgets import prediction_browser

    model, run_cfg, stats = _run(cfg)
    splits = split_positions(run_cfg, cfg.data)
    tf = build_transforms("test", run_cfg.size)
    return prediction_browser(model, {s: ShardDataset(cfg.data, indices=splits[s], transform=tf)
                                      for s in ("test", "val")}, stats)


def check_upload(uploaded: dict[str, bytes], role: str, like: np.ndarray | None = None) -> np.ndarray:
    """One uploaded photo -> (H, W, 3) uint8; exactly one readable file, the same size as `like` when given."""
    from .atomic import atomic_write_bytes
    from .paths import path_problem
    from .predict import load_photo

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


def upload_photo(role: str, data_dir: str | Path, smoke: bool = False, like: np.ndarray | None = None) -> np.ndarray:
    """Colab: an upload button for one photo (`role` says which); otherwise (or SMOKE) sample 0 of the dataset."""
    if in_colab() and not smoke:
        from google.colab import files  # type: ignore

        print(f"Choose ONE photo: {role}")
        return check_upload(files.upload(), role, like)
    from .dataset import ShardDataset

    key = "bg" if like is None else "fg_bg"
    print(f"{role}: no upload outside Colab (or with SMOKE): using sample 0 of {data_dir} ({key})")
    return ShardDataset(data_dir)[0][key]


def predict_photos(cfg: TrainConfig, bg: np.ndarray, fg_bg: np.ndarray):
    """The trained model on the two photos, at their own size: bg | fg_bg | mask | depth, after one line saying what
    the alignment of bg to fg_bg applied (as `eva predict` prints it)."""
    from .plots import side_by_side
    from .predict import describe_alignment, predict_pair

    model, run_cfg, stats = _run(cfg)
    try:
        from .calibrate import load_calibration  # the mask threshold chosen on validation, when evaluated

        calib = load_calibration(cfg.run_dir)
    except ImportError:
        calib = None
    pred = predict_pair(model, bg, fg_bg, run_cfg.size, stats, calib=calib)
    print(describe_alignment(pred["alignment"]))
    return side_by_side(bg, fg_bg, pred.get("mask"), pred.get("depth"))
