"""Start a new run from another run's weights: not its optimizer, schedule or step, only the tensors that fit.

Colab users train in pieces (64 px first, then 224 px; a mask model, then a joint one; yesterday's weights on a bigger
dataset). A start is allowed when the models are of one family with the same inputs (so every tensor they share means
the same thing); a joint run may start from a mask-only or depth-only one: the shared encoder and decoder load and the
other task's head starts fresh, and the run says which parts did. Anything else is one line naming what differs,
raised by `check_source` before the new run folder is created.

The new run records where it started (`source_record`: run folder, checkpoint file, its sha256 and step) in its
config.json under "init", and `load_into` refuses a checkpoint whose sha256 is no longer the recorded one (the source
run trained on in between): the weights a run started from are the ones it names.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eva_helpers.errors import EvaError
from eva_helpers.training.checkpoint import load_checkpoint, read_sidecar
from eva_helpers.training.trained_run import load_run

WHICH = ("best", "last")
SAME = ("name", "inputs", "in_channels")  # model_args that must match: the family and what its input channels mean


def _source(run_dir: str, which: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the source checkpoint dict, its model_args); one-line errors for a missing or damaged run."""
    if which not in WHICH:
        raise EvaError(f"init_which={which!r}: use 'best' or 'last'")
    _, _, ckpt = load_run(run_dir, which=which)
    return ckpt, dict(ckpt["model_args"])


def _differences(src: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What makes the source's weights mean something else in the new model (empty: compatible)."""
    out = [f"{k} {src.get(k)!r} there, {new.get(k)!r} here" for k in SAME if src.get(k) != new.get(k)]
    shared = set(src.get("tasks") or []) & set(new.get("tasks") or [])
    if not shared:
        out.append(f"tasks {src.get('tasks')} there share nothing with {new.get('tasks')} here")
    return out


def _parts(keys: list[str]) -> list[str]:
    """Tensor names grouped by their first two name parts (e.g. "heads.depth"), in model order."""
    groups: OrderedDict[str, None] = OrderedDict()
    for k in keys:
        groups[".".join(k.split(".")[:2])] = None
    return list(groups)


def check_source(run_dir: str, which: str, new_model: nn.Module) -> None:
    """Raise one EvaError line when `run_dir`'s weights cannot start `new_model` (other family or inputs, no shared
    task, or a shared tensor of another shape, e.g. other widths). Reads only; nothing is created."""
    ckpt, src_args = _source(run_dir, which)
    new_args = dict(getattr(new_model, "model_args", {}) or {})
    diff = _differences(src_args, new_args)
    if not diff:
        mine = new_model.state_dict()
        diff = [f"{k} is {tuple(v.shape)} there, {tuple(mine[k].shape)} here (other widths?)"
                for k, v in ckpt["model"].items() if k in mine and tuple(v.shape) != tuple(mine[k].shape)][:1]
    if diff:
        raise EvaError(f"{ckpt['loaded_from']}: cannot start this run from it: {'; '.join(diff)}. Start from a run "
                       "of the same model and inputs, or leave init_from empty to start from scratch")


def source_record(run_dir: str, which: str) -> dict[str, Any]:
    """What config.json records about the start: the run folder (absolute), the checkpoint file, its sha256 and
    step."""
    ckpt, _ = _source(run_dir, which)
    path = Path(ckpt["loaded_from"])
    meta = read_sidecar(path) or {}
    return {"run_dir": str(Path(run_dir).resolve()), "which": which, "checkpoint": str(path.resolve()),
            "sha256": meta.get("sha256"), "global_step": int(ckpt.get("global_step", 0))}


def load_into(model: nn.Module, record: dict[str, Any]) -> dict[str, Any]:
    """Copy the recorded checkpoint's tensors into `model` where name and shape match; the rest keep their fresh
    initialisation. -> {"loaded": [parts], "fresh": [parts], "tensors": n loaded}. Refuses a checkpoint whose sha256
    changed since it was recorded."""
    path = Path(record["checkpoint"])
    meta = read_sidecar(path) or {}
    if record.get("sha256") and meta.get("sha256") != record["sha256"]:
        raise EvaError(f"{path}: this run starts from the checkpoint with sha256 {record['sha256'][:12]}, but the file "
                       f"now holds {str(meta.get('sha256'))[:12]} (that run trained on); start a new run_dir to "
                       "start from its current weights")
    src = load_checkpoint(path)["model"]
    mine = model.state_dict()
    take = {k: v for k, v in src.items() if k in mine and tuple(v.shape) == tuple(mine[k].shape)}
    if not take:
        raise EvaError(f"{path}: no tensor of it fits this model; start from a run of the same model")
    with torch.no_grad():
        model.load_state_dict({**mine, **take})
    fresh = [k for k in mine if k not in take]
    return {"loaded": _parts(list(take)), "fresh": _parts(fresh), "tensors": len(take)}


def describe(record: dict[str, Any], result: dict[str, Any]) -> str:
    """One line for the user: where the weights came from and which parts start fresh."""
    fresh = ", ".join(result["fresh"]) if result["fresh"] else "nothing"
    return (f"started from {record['checkpoint']} (step {record['global_step']}): {result['tensors']} tensors "
            f"loaded; starting fresh: {fresh}")
