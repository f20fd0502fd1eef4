"""The steps of the training notebooks (03-05), one call each: model summary, training, TensorBoard, evaluation with
its figure, the comparison table, the prediction browser and the two labelled photo uploads of notebook 05.

Before training, a run folder that exists is checked against the dataset it was trained on (the same `DATASET` name,
rebuilt with other content, is refused in one line that says what changed and how to start a new run), and the code
that trains is recorded in `code.json` (one entry per session whose code differs), so a reconnect that installed newer
code is seen. Every step that writes into a run folder on Drive first checks that Drive is mounted.

The two photos of notebook 05 (uploads, Drive paths, the results zip) are photos.py's, imported here for the notebook.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from eva_helpers.atomic import atomic_write_text
from eva_helpers.colab.photos import (  # noqa: F401 (notebook 05 calls them as nt.*)
    RESULTS,
    UPLOADS,
    check_upload,
    predict_footage,
    predict_photos,
    upload_photo,
)
from eva_helpers.colab.runs import compare_runs
from eva_helpers.colab.widgets import prediction_browser
from eva_helpers.data.dataset import ShardDataset
from eva_helpers.data.resize import resize_transform
from eva_helpers.demo import results_table
from eva_helpers.evaluation.heldout import current_metrics
from eva_helpers.models import build_model, count_parameters, summary
from eva_helpers.paths import in_colab, require_drive_mounted
from eva_helpers.training.config import TrainConfig
from eva_helpers.training.cost import estimate_evaluation, estimate_training
from eva_helpers.training.run_folder import (
    CHECKPOINTS,
    METRICS,
    check_dataset,
    fresh_for_best,
    read_history,
    read_summary,
    tensorboard_dir,
)
from eva_helpers.training.sessions import check_device
from eva_helpers.training.trained_run import load_trained_run
from eva_helpers.training.trainer import fit


def checked(cfg: TrainConfig) -> TrainConfig:
    """`cfg`, range-checked again (one line): a cell may have set a field (`cfg.size = ...`) after notebook_config
    checked it, and the model summary and the time estimate allocate at its size and batch."""
    replace(cfg)
    return cfg


def show_model(cfg: TrainConfig, full: bool = False) -> None:
    """One line (model, parameters, outputs, size); `full` (SHOW_SUMMARY): torchsummary's layer table."""
    checked(cfg)
    model = build_model(cfg.model, tasks=cfg.tasks, **cfg.model_kwargs)
    if full:
        summary(model, cfg.size)
    else:
        print(f"{cfg.model}: {count_parameters(model):,} parameters, {' + '.join(cfg.tasks)} at {cfg.size} px (the "
              "layer table: SHOW_SUMMARY = True)")


# named in the line above the table, or what the notebooks set for every run
_NOT_IN_TABLE = ("task", "model", "data", "run_dir", "live_plot", "progress", "tensorboard")


def config_table(cfg: TrainConfig):
    """The settings of `cfg` that differ from TrainConfig's defaults for its task and model, as a short Markdown table
    under a line naming the run (config.json in the run folder holds every field)."""
    import json

    from IPython.display import Markdown

    base, now = TrainConfig(task=cfg.task, model=cfg.model).to_dict(), cfg.to_dict()
    rows = [f"| {k} | {(json.dumps(v) if isinstance(v, (list, dict)) else str(v)).replace('|', '/')} |"
            for k, v in now.items() if k not in _NOT_IN_TABLE and v != base.get(k)]
    head = f"**{cfg.task}** run with **{cfg.model}** in `{cfg.run_dir}`, data `{cfg.data}`"
    table = ["| setting | value |", "| --- | --- |", *rows] if rows else ["every other setting: TrainConfig's default"]
    return Markdown("\n".join([head, "", *table]))


def _split_sizes(cfg: TrainConfig) -> dict[str, int]:
    return {k: len(v) for k, v in cfg.splits(cfg.data).items() if k in ("train", "val", "test")}


def _epochs_done(run_dir: Path) -> int:
    return int((read_summary(run_dir) or {}).get("epochs_completed") or 0)


def train(cfg: TrainConfig, force_takeover: bool = False, allow_cpu: bool = False) -> dict[str, Any]:
    """`fit(cfg)` (resumes, or extends to more epochs), then one plain sentence on where the run stands.
    `force_takeover` (FORCE_TAKEOVER): take the run over from another runtime's lease at once, without watching it.
    `allow_cpu` (ALLOW_CPU): go on with a run a GPU trained on this CPU runtime (refused otherwise, in one line).

    First: a GPU runtime if a GPU trained the run, Drive mounted, the run's dataset unchanged, the time estimated; fit
    records the code, the dataset and the device in the run folder once its checks pass."""
    checked(cfg)
    check_device(cfg, allow_cpu, here="this runtime",
                 how="switch the runtime to GPU (Runtime > Change runtime type), or set ALLOW_CPU = True")
    run = require_drive_mounted(Path(cfg.run_dir), "training")
    check_dataset(run, cfg.data, new_run=f"set RUN_NAME = '{run.name}-2' (or another new name) and run all again")

    left = cfg.epochs - _epochs_done(run)
    if left > 0:
        estimate_training(cfg, _split_sizes(cfg)["train"], left)
    s = fit(cfg, force_takeover=force_takeover)
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
    """%tensorboard on this run's local logs in Colab; elsewhere print the command. Returns the log folder.

    The logs are local and a new runtime starts without them: the epochs of the run's history.jsonl (on Drive) are
    written back first, so the curves are whole before training goes on (or for a finished run)."""
    from eva_helpers.training.progress import open_tensorboard

    logdir = str(tensorboard_dir(cfg.run_dir))
    history = read_history(cfg.run_dir) if cfg.run_dir else []
    writer = open_tensorboard(cfg, Path(cfg.run_dir), history) if history else None
    if writer is not None:
        writer.close()
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
    if not fresh_for_best(cfg.run_dir, Path(cfg.run_dir) / METRICS):
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
    """Notebook 05's table: joint against the single-task runs of 03/04 that match it (found by config: the same
    dataset content and result-changing settings) and the baseline, with each row's run folder and how it was trained
    (warm start, sizes, loss weighting), as Markdown saved as `comparison.md` in the joint run folder."""
    from IPython.display import Markdown

    from eva_helpers.colab.runs import add_run_columns

    run = require_drive_mounted(Path(cfg.run_dir), "the comparison")
    results = compare_runs(cfg, joint_metrics, train_missing)
    table = add_run_columns(results_table(results), results)
    atomic_write_text(run / "comparison.md", table + "\n")
    print(f"table saved in {run / 'comparison.md'}")
    return Markdown(table)


def _run(cfg: TrainConfig):
    trained = load_trained_run(cfg.run_dir, device="cpu", data=cfg.data)
    return trained.model, trained.cfg, trained.stats


def browse_predictions(cfg: TrainConfig):
    """A widget over the test and validation splits: predictions against targets."""
    model, run_cfg, stats = _run(cfg)
    splits = run_cfg.splits(cfg.data)
    tf = resize_transform(run_cfg.size)
    return prediction_browser(model, {s: ShardDataset(cfg.data, indices=splits[s], transform=tf)
                                      for s in ("test", "val")}, stats)
