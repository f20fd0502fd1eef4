"""The run folder, as `fit` writes it and everything else reads it: its file names and records
(`trained_run.py` loads a trained model from it).

Layout of `<run_dir>/`: `config.json` (the TrainConfig, the dataset's content identity, where the weights started),
`checkpoints/` (checkpoint.py), `history.jsonl` (one row per finished epoch, a copy of the checkpoint's),
`summary.json` (written when `fit` returns), `stats.json` (the normalisation frozen at the start), `extensions.json`
(each time the run was extended to more epochs), `code.json` (the code each session trained with), `dataset.json`
(what the dataset was), `metrics*.json` and figures (evaluation). A run folder is resumed only on the dataset (by
content) and settings it was started with.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable

from eva_helpers.atomic import atomic_write_text, remove_stale_temps
from eva_helpers.data.formats import read_manifest
from eva_helpers.data.stats import check_stats, compute_stats, read_stats_file
from eva_helpers.data.verify import dataset_identity
from eva_helpers.errors import EvaError
from eva_helpers.paths import default_cache, safe_name
from eva_helpers.training.checkpoint import CHECKPOINTS, CheckpointManager
from eva_helpers.training.config import TrainConfig, result_changing_differences

CONFIG = "config.json"
SUMMARY = "summary.json"
HISTORY = "history.jsonl"
STATS = "stats.json"
EXTENSIONS = "extensions.json"  # [{"from_epochs", "to_epochs", "at_epoch", "global_step"}]: each time a run was extended
METRICS = "metrics.json"  # the test split's; `metrics_file(tag)` names the others (evaluation.heldout)
CALIBRATION = "calibration.json"  # the mask threshold and clean-up chosen on validation (evaluation.calibrate)
CODE = "code.json"  # [{"version", "commit", "source", "since"}]: the code each session trained the run with
DATASET_RECORD = "dataset.json"  # what the run's dataset was: identity, samples, shards, build parameters


def checkpoint_path(run_dir: str | os.PathLike, which: str = "best") -> Path:
    """`<run_dir>/checkpoints/<which>.pt` ("best", "last" or "prev")."""
    return Path(run_dir) / CHECKPOINTS / f"{which}.pt"


def fresh_for_best(run_dir: str | os.PathLike, path: str | os.PathLike) -> bool:
    """True when `path` (metrics, figures scored from the best checkpoint) exists and is not older than best.pt (or
    the run has no best.pt): the one rule for reusing what was scored instead of scoring again."""
    path, best = Path(path), checkpoint_path(run_dir, "best")
    return path.is_file() and (not best.is_file() or path.stat().st_mtime >= best.stat().st_mtime)


def metrics_file(tag: str | None = None) -> str:
    """metrics.json, or metrics-<tag>.json for a second-shot change, an aligned score or another dataset."""
    return METRICS if tag is None else f"metrics-{tag}.json"


def tensorboard_dir(run_dir: str | os.PathLike) -> Path:
    """Where a run's TensorBoard logs go: the local cache, not Drive (event files are many small appends)."""
    return default_cache() / "tensorboard" / Path(run_dir).resolve().name  # "runs/x/.." names x, not ..


def dataset_identity_at(data: str | None) -> str | None:
    """Content identity of the dataset at `data` (same bytes at any path -> same identity), None if there is none."""
    if not data:
        return None

    try:
        return dataset_identity(read_manifest(data))
    except EvaError:
        return None


def dataset_facts(data: str | os.PathLike) -> dict[str, Any]:
    """dataset.json's record of a dataset: content identity, folder name, samples, shards, build parameters."""
    m = read_manifest(data)
    params = m.get("params") or {}
    return {"identity": dataset_identity(m), "name": Path(str(data)).name, "samples": (m.get("counts") or {}).get(
            "samples"), "shards": len(m.get("shards", [])),
            **{k: params.get(k) for k in ("size", "positions", "seed", "teacher", "mode", "flips") if k in params}}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def check_dataset(run_dir: str | os.PathLike, data: str | os.PathLike | None, new_run: str = "use a new run_dir") -> None:
    """Refuse, in one line, a run folder trained on other dataset content than `data` (a rebuilt or extended dataset
    under the same name, or another one), saying what changed (dataset.json against now) and how to start a new run
    on it on purpose (`new_run`: each front end says it in its words)."""
    run = Path(run_dir)
    old = _read_json(run / CONFIG)
    if not isinstance(old, dict) or not old.get("dataset_identity") or not data:
        return
    try:
        now = dataset_facts(data)
    except EvaError:
        return  # no dataset there: opening it names what is wrong
    if old["dataset_identity"] == now["identity"]:
        return
    was = _read_json(run / DATASET_RECORD) or {}
    changes = [f"{k} {was[k]} -> {now[k]}" for k in ("samples", "shards", "size", "positions", "seed", "teacher", "mode",
                                                      "flips") if k in was and was.get(k) != now.get(k)]
    what = ", ".join(changes + [f"content {old['dataset_identity'][:12]} -> {now['identity'][:12]}"])
    raise EvaError(f"{run}: this run was trained on other dataset content than {data} ({what}); to keep training it, "
                   f"give or restore the dataset it was trained on (at {old.get('data')}); to start a new run on "
                   f"{now['name']!r} on purpose, {new_run}")


def installed_code() -> dict[str, str]:
    """What eva_helpers code runs here: version, commit (when pip installed it from git or it is a git checkout) and
    where it came from. A reconnect that installs newer code shows a different commit."""
    from eva_helpers import __version__
    from eva_helpers.colab.install import installed_source  # standard library only (it runs before the package)

    return {"version": __version__, **installed_source()}


def describe_code(code: dict[str, str]) -> str:
    commit = code.get("commit")
    return (f"eva_helpers {code['version']}" + (f", commit {commit[:12]}" if commit else ", commit unknown")
            + (f" ({code['source']})" if code.get("source") else ""))


def record_code(run_dir: str | os.PathLike) -> dict[str, str]:
    """Append this session's code (version, commit) to `<run>/code.json` when it differs from the last entry, and say
    so when the run was trained with other code before. Returns this session's entry."""
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


def check_config(run_dir: Path, cfg: TrainConfig) -> tuple[dict[str, Any], dict | None]:
    """Refuse to resume a run folder whose recorded config differs in a field that changes the result, or whose
    dataset (by content identity, not path: the same dataset on Drive and in /content resumes) is another one.
    Returns the config record to write once every check of the run has passed, and the recorded `init` (where a
    resumed run's weights started; None for a new run)."""
    path, init = run_dir / CONFIG, None
    ident = dataset_identity_at(cfg.data)
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError as e:
            raise EvaError(f"{path}: unreadable config ({e})") from e
        if not isinstance(old, dict):
            raise EvaError(f"{path}: not a config (a JSON object expected); use a new run_dir")
        init = old.pop("init", None)
        old.pop("dataset_identity", None)
        check_dataset(run_dir, cfg.data)
        diff = result_changing_differences(old, cfg.to_dict())
        if diff:
            changes = ", ".join(f"{k}: {old.get(k)!r} -> {cfg.to_dict().get(k)!r}" for k in diff)
            hint = "; a run can be extended to more epochs, not shortened" if "epochs" in diff else ""
            raise EvaError(f"{path}: this run folder was trained with other settings ({changes}); "
                           f"use a new run_dir or the same settings{hint}")
    return {**cfg.to_dict(), **({"dataset_identity": ident} if ident else {})}, init


def run_stats(run_dir: Path, cfg: TrainConfig, stats: dict | None, is_main: bool) -> tuple[dict | None, bool]:
    """The normalisation stats of this run, frozen in `<run_dir>/stats.json` at its start, and whether that copy
    still has to be written (by `start_writing`, once every check has passed).

    eval and predict read that copy, and a resumed run keeps it, so a later `eva stats` on the dataset cannot change
    how a trained model's inputs are normalised. A dataset without stats.json gets them computed (streamed, first
    2,000 samples) rather than silently falling back to ImageNet's.
    """
    path = Path(run_dir) / STATS
    if path.is_file():
        return read_stats_file(path), False
    if stats is not None:
        check_stats(stats, "the stats given to fit")
    if stats is None and cfg.data:
        stats = compute_stats(cfg.data, limit=2000, progress=cfg.progress and is_main, write=is_main)
    return stats, stats is not None


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


def start_writing(run_dir: Path, ckm: CheckpointManager, config: dict[str, Any], ext: dict[str, Any] | None,
                   stats: dict | None, on_start: Callable[[Path], None] | None = None) -> None:
    """The run's first writes, once every check has passed: a refused command leaves the run folder as it was
    (no config rewritten for epochs it never trained, no extension recorded that never happened). Every front end
    gets the same records: the code (code.json), the dataset (dataset.json, once), the session's device."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record_code(run_dir)
    if config.get("data") and config.get("dataset_identity") and not (run_dir / DATASET_RECORD).is_file():
        atomic_write_text(run_dir / DATASET_RECORD, json.dumps(dataset_facts(config["data"]), indent=1) + "\n")
    if on_start is not None:  # the session's device (sessions.py), then the caller's own records
        on_start(run_dir)
    remove_stale_temps(run_dir)  # half-written config/history/summary copies from a killed run
    atomic_write_text(run_dir / CONFIG, json.dumps(config, indent=2) + "\n")
    ckm.prepare()
    if ext is not None:
        exts = read_extensions(run_dir)
        if ext not in exts:  # a crash before the next checkpoint finds the same extension again
            atomic_write_text(run_dir / EXTENSIONS, json.dumps(exts + [ext], indent=1) + "\n")
        print(f"extending {run_dir.name} from {ext['from_epochs']} to {ext['to_epochs']} epochs ({ext['at_epoch']} "
              f"done): the learning-rate schedule is re-timed to end with epoch {ext['to_epochs']}", flush=True)
    if stats is not None:
        atomic_write_text(run_dir / STATS, json.dumps(stats, indent=1) + "\n")


def summary_of(state: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    history = list(state.get("history", []))
    best = dict(state.get("best") or {})
    best_row = next((r for r in history if r.get("epoch") == best.get("epoch")), None)
    return {"run_dir": str(run_dir), "finished": bool(state.get("finished")), "global_step": int(state["global_step"]),
            "epochs_completed": len(history), "best": best, "best_metrics": best_row, "history": history,
            "last_checkpoint": str(checkpoint_path(run_dir, "last")),
            "best_checkpoint": str(checkpoint_path(run_dir, "best")), "extensions": read_extensions(run_dir),
            "init": recorded_init(run_dir)}


def recorded_init(run_dir: Path) -> dict[str, Any] | None:
    """Where the run's weights started (config.json "init", warm_start.py), or None: from scratch."""
    try:
        return json.loads((run_dir / CONFIG).read_text()).get("init")
    except (OSError, ValueError, AttributeError):
        return None


def run_folder(runs: str | Path, task: str, model: str, size: int, data: str | Path, name: str = "") -> Path:
    """`<runs>/<name>`, or `<task>-<model>-<size>px-<dataset folder name>` (a run folder is never shared by datasets).

    The name is one plain folder name (paths.safe_name): a run never lands outside `runs`."""
    if name:
        return Path(runs) / safe_name(name, what="run name", source="RUN_NAME")
    return Path(runs) / safe_name(f"{task}-{model}-{size}px-{Path(str(data)).name}", what="run folder name",
                                  source=f"task {task!r}, model {model!r}")


def read_run_config(run_dir: str | Path) -> dict[str, Any] | None:
    """config.json of a run folder as written by `fit` (a JSON object), None when there is none; a damaged one is a
    one-line error naming it."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EvaError(f"{path}: unreadable run config ({type(e).__name__}: {e}); restore it from a backup, or train "
                       "into a new run folder") from None
    if not isinstance(doc, dict):
        raise EvaError(f"{path}: not a run config (a JSON object expected); restore it from a backup")
    return doc


def recorded_identity(run_dir: str | Path) -> str | None:
    """The content identity of the dataset the run trained on, as config.json recorded it (None for older runs)."""
    ident = (read_run_config(run_dir) or {}).get("dataset_identity")
    return ident if isinstance(ident, str) and ident else None


def resolve_data(data: str | None, run_dir: str | Path) -> Path | None:
    """A run's dataset path as recorded: absolute as it is; a relative one (older runs) against the run folder first,
    then the current folder; None when the run records none. When neither exists the path comes back as recorded, so
    the error that follows names it."""
    if not data:
        return None
    p = Path(data).expanduser()
    if p.is_absolute():
        return p
    for cand in (Path(run_dir) / p, p):
        if cand.exists():
            return cand
    return p


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
