"""Which device trained a run, session by session: `<run>/sessions.json`, and the refusal to go on silently on a CPU.

Colab hands out a CPU runtime when the GPU quota runs out, and "Run all" would then train on at CPU speed. A run that
a GPU trained before stops instead, in one line (`check_device`), unless the caller allows the CPU. `fit` appends one
record per process and device (`recorder`): GPU name, memory, compute capability and the precision `precision.py`
chose, so a T4 (fp16) to A100 (bf16) switch in the middle of a run is on record and said when it happens.
"""
from __future__ import annotations

import json
import os
import socket
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from eva_helpers.atomic import atomic_write_text
from eva_helpers.errors import EvaError
from eva_helpers.training.distributed import resolve_device
from eva_helpers.training.run_folder import read_history

if TYPE_CHECKING:
    from eva_helpers.training.config import TrainConfig

SESSIONS = "sessions.json"  # [{"device", "gpu", "memory_gib", "capability", "precision", "from_epoch", ...}]
PROCESS = uuid.uuid4().hex[:12]  # this Python process: a runtime that trains the run again is a new session
DEVICE_KEYS = ("device", "gpu", "memory_gib", "capability", "precision")
PRECISION_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}


def describe_device(device: torch.device | str) -> dict[str, Any]:
    """{"device": "cuda", "gpu": "Tesla T4", "memory_gib": 14.7, "capability": "7.5"}; only "device" off a GPU."""
    device = torch.device(device)
    out: dict[str, Any] = {"device": device.type}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device.index or 0)
        out.update(gpu=p.name, memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}")
    return out


def precision_name(dtype: torch.dtype | None) -> str:
    return PRECISION_NAMES.get(dtype, "fp32")


def describe(rec: dict[str, Any]) -> str:
    """"Tesla T4 (14.7 GiB, compute 7.5, fp16)" or "cpu (fp32)"."""
    if rec.get("device") == "cuda":
        return f"{rec.get('gpu', 'a GPU')} ({rec.get('memory_gib')} GiB, compute {rec.get('capability')}, " \
               f"{rec.get('precision', '?')})"
    return f"{rec.get('device', '?')} ({rec.get('precision', '?')})"


def read_sessions(run_dir: str | Path) -> list[dict[str, Any]]:
    """sessions.json's records, [] when there is none or it is damaged (it is a record, not needed to resume)."""
    try:
        doc = json.loads((Path(run_dir) / SESSIONS).read_text())
    except (OSError, ValueError):
        return []
    return [r for r in doc if isinstance(r, dict)] if isinstance(doc, list) else []


def record_session(run_dir: str | Path, device: torch.device | str, amp_dtype: torch.dtype | None, *,
                   epoch: int = 0, step: int = 0, world_size: int = 1) -> dict[str, Any]:
    """Append this session's device to `<run>/sessions.json` (once per process and device), and say so when the run
    was trained on another device or precision before. Returns this session's record."""
    run_dir = Path(run_dir)
    records = read_sessions(run_dir)
    now = {**describe_device(device), "precision": precision_name(amp_dtype)}
    last = records[-1] if records else None
    same_device = last is not None and all(last.get(k) == now.get(k) for k in DEVICE_KEYS)
    if same_device and last.get("process") == PROCESS:
        return last
    if last is not None and not same_device:
        print(f"{run_dir.name}: trained so far on {describe(last)}; this session trains on {describe(now)} from "
              f"epoch {epoch + 1}, so the rest of the run runs on other hardware (not bit-identical to one device)",
              flush=True)
    rec = {**now, "world_size": world_size, "from_epoch": epoch, "from_step": step,
           "since": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": socket.gethostname(),
           "pid": os.getpid(), "process": PROCESS}
    atomic_write_text(run_dir / SESSIONS, json.dumps(records + [rec], indent=1) + "\n")
    return rec


def recorder(device: torch.device, amp_dtype: torch.dtype | None, epoch: int, step: int, world_size: int,
             on_start: Callable[[Path], None] | None) -> Callable[[Path], None]:
    """fit's `on_start`: this session's device, as the run trains on it from (epoch, step), then the caller's own
    records."""

    def start(run_dir: Path) -> None:
        record_session(run_dir, device, amp_dtype, epoch=epoch, step=step, world_size=world_size)
        if on_start is not None:
            on_start(run_dir)

    return start


def _slowdown(cfg: TrainConfig, sessions: list[dict[str, Any]], timer: Callable | None) -> str:
    """" (about N times slower)": the GPU epochs' samples/s in history.jsonl against two training steps timed on this
    CPU now; "" when no GPU epoch finished (nothing to compare) or the CPU is not clearly slower."""
    def device_of(epoch: Any) -> str | None:  # the last session (in order) that started at or before this epoch
        return next((s.get("device") for s in reversed(sessions)
                     if isinstance(epoch, int) and isinstance(s.get("from_epoch"), int) and s["from_epoch"] <= epoch),
                    None)

    rates = [r["samples_per_s"] for r in read_history(cfg.run_dir)
             if isinstance(r.get("samples_per_s"), (int, float)) and device_of(r.get("epoch")) == "cuda"]
    if not rates:
        return ""
    if timer is None:
        from eva_helpers.training.cost import time_steps as timer
    batch = min(cfg.batch_size, 4)  # a CPU probe stays short
    try:
        step_s, _ = timer(cfg, batch)
    except Exception:  # noqa: BLE001 - a hint that fails must not hide the refusal it belongs to
        return ""
    ratio = sorted(rates)[len(rates) // 2] * step_s / batch
    return f" (about {ratio:.0f} times slower)" if ratio >= 2 else ""


def check_device(cfg: TrainConfig, allow_cpu: bool = False, *, how: str = "", here: str = "this machine",
                 timer: Callable | None = None) -> None:
    """Refuse, in one line, to go on with a run on this machine's CPU when a GPU trained it before and the device is
    "auto" (a runtime that silently came up without a GPU); `allow_cpu`, an explicit `cfg.device`, or a run that has
    nothing left to train pass. `how` says how to allow it (the notebook's ALLOW_CPU, the CLI's --allow-cpu), `here`
    names this machine ("this runtime" in Colab)."""
    if allow_cpu or cfg.device != "auto" or not cfg.run_dir or resolve_device("auto").type != "cpu":
        return
    sessions = read_sessions(cfg.run_dir)
    gpus = list(dict.fromkeys(s.get("gpu") or "a GPU" for s in sessions if s.get("device") == "cuda"))
    if not gpus or len(read_history(cfg.run_dir)) >= cfg.epochs:
        return
    how = how or "train it where there is a GPU, or pass --allow-cpu (allow_cpu=True)"
    raise EvaError(f"{Path(cfg.run_dir).name}: trained on CUDA ({', '.join(gpus)}) so far, {here} has no GPU: "
                   f"{how} to continue on the CPU{_slowdown(cfg, sessions, timer)}")
