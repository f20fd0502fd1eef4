"""Checkpoint cost for the medium joint UNet: save/load time, bytes, overhead at the default interval, resume latency;
and the bytes each rotation writes to (and drops from) the run folder per hour, for unet_medium and resnet34_unet.

    python bench/checkpoint.py [--run-dir DIR] [--repeats 5] [--size 224] [--batch-size 4] [--only-rotation]

Rotation: "steps" is the layout before this change (each save copies ckpt-<step>.pt and last.pt into the run folder
and deletes the oldest ckpt beyond keep_last=3); "fixed" is today's (one copy to last.pt, the old last.pt renamed onto
prev.pt, extras only on local disk). Per hour = per save x 3600 / interval (default 300 s), interval saves only (an
epoch-end save costs the same again; best.pt adds one copy when the validation loss improves). "Dropped" bytes are
files deleted (what Drive's trash keeps, counting against the quota) or replaced by a rename onto their name.

Save = torch.save to local temp disk + sha256 + atomic copies to ckpt-N.pt and last.pt (+ sidecars) in the run
folder; load = read + sha256 check + torch.load(weights_only=True). "Resume" is measured in a fresh process: from
process start (before `import torch`) to the end of the first optimizer step after the checkpoint is restored, on a
synthetic 224 px dataset. Pass --run-dir on the Drive mount to measure Drive instead of local disk.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

CHILD = r"""
import sys, time
T0 = float(sys.argv[1])
sys.path.insert(0, sys.argv[2])
import torch
from eva_helpers.training.config import TrainConfig
from eva_helpers.training.trainer import fit
cfg = TrainConfig.from_dict(__import__("json").loads(sys.argv[3]))
orig = torch.optim.AdamW.step
def step(self, *a, **k):
    out = orig(self, *a, **k)
    if not hasattr(torch, "_eva_first"):
        torch._eva_first = time.time()
        print("FIRST_STEP_S", torch._eva_first - T0, flush=True)
    return out
torch.optim.AdamW.step = step
fit(cfg)
"""


def _filled_state(model_name: str, cfg) -> tuple[dict, int]:
    """A checkpoint state as fit() writes it, with the AdamW moments filled (no forward pass: any input layout)."""
    import torch

    from eva_helpers.training.checkpoint import rng_state
    from eva_helpers.training.losses import build_criterion
    from eva_helpers.models import build_model

    torch.manual_seed(0)
    model = build_model(model_name, tasks=("mask", "depth"))
    crit = build_criterion(("mask", "depth"), weighting="uncertainty")
    params = list(model.parameters()) + list(crit.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=100)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        opt.step()
        sched.step()
    state = {"format": "eva-ckpt/1", "model": model.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "scaler": None, "criterion": crit.state_dict(), "epoch": 0,
             "global_step": 0, "global_consumed": 0, "epoch_accum": [{"loss_sum": 0.0, "batches": 0, "samples": 0,
                                                                       "seconds": 0.0}],
             "rng": rng_state(), "history": [], "config": cfg.to_dict(), "model_args": model.model_args,
             "best": {}, "finished": False, "world_size": 1}
    return state, sum(p.numel() for p in model.parameters())


def _legacy_manager_class():
    """The rotation before the fixed names (kept here to measure against): ckpt-<step>.pt + last.pt, oldest deleted."""
    import json as _json
    import os
    import tempfile as _tempfile

    import torch

    from eva_helpers.atomic import atomic_copy, atomic_write_text, sha256_file
    from eva_helpers.training.checkpoint import LAST, SIDECAR, _STEP_RE, CheckpointManager, ckpt_name

    class StepsManager(CheckpointManager):
        bytes_deleted = 0

        def save(self, state, *, best=False):
            step = int(state["global_step"])
            name = ckpt_name(step)
            with _tempfile.TemporaryDirectory(prefix="eva-ckpt-") as tmp:
                local = Path(tmp) / name
                torch.save(state, local)
                meta = {"sha256": sha256_file(local), "bytes": local.stat().st_size, "global_step": step}
                for target in [name, LAST]:
                    dst = self.dir / target
                    self.bytes_dropped += dst.stat().st_size if dst.exists() else 0  # replaced by the rename
                    atomic_copy(local, dst)
                    self.bytes_written += meta["bytes"]
                    atomic_write_text(self.dir / (target + SIDECAR), _json.dumps({**meta, "file": target}))
            steps = sorted(p for p in self.dir.glob("ckpt-*.pt") if _STEP_RE.match(p.name))
            for p in steps[: -self.keep_last]:
                self.bytes_dropped += p.stat().st_size
                self.bytes_deleted += p.stat().st_size
                os.unlink(p)
                os.unlink(str(p) + SIDECAR)
            return self.dir / name

    return StepsManager


def rotation_comparison(cfg, models=("unet_medium", "resnet34_unet"), saves: int = 6, interval: float = 300.0) -> list:
    """Bytes written to / dropped from the run folder per save and per hour, old rotation against the new one."""
    import shutil
    import tempfile as _tempfile

    from eva_helpers.training.checkpoint import CheckpointManager

    StepsManager = _legacy_manager_class()
    rows = []
    for model_name in models:
        state, n_params = _filled_state(model_name, cfg)
        for label, cls in (("steps (before)", StepsManager), ("fixed (now)", CheckpointManager)):
            tmp = Path(_tempfile.mkdtemp(prefix="eva-bench-rot-"))
            m = cls(tmp / "run", keep_last=3, interval_s=interval, local_dir=tmp / "local")
            snap, t0 = (0, 0, 0), 0.0
            for i in range(saves):
                if i == 3:  # steady state from here: the first keep_last saves delete nothing yet
                    snap, t0 = (m.bytes_written, m.bytes_dropped, getattr(m, "bytes_deleted", 0)), time.perf_counter()
                state["global_step"] = i + 1
                m.save(state)
            n = saves - 3
            seconds = (time.perf_counter() - t0) / n
            written, dropped, deleted = (m.bytes_written - snap[0], m.bytes_dropped - snap[1],
                                         getattr(m, "bytes_deleted", 0) - snap[2])
            size = (m.dir / "last.pt").stat().st_size
            per_hour = 3600.0 / interval / n / 1e9
            rows.append({"model": model_name, "params_M": round(n_params / 1e6, 2), "rotation": label,
                         "checkpoint_MB": round(size / 1e6, 1), "save_s": round(seconds, 2),
                         "written_GB_per_hour": round(written * per_hour, 2),
                         "dropped_GB_per_hour": round(dropped * per_hour, 2),
                         "deleted_GB_per_hour": round(deleted * per_hour, 2),
                         "files_in_run_folder": sorted(p.name for p in m.dir.iterdir())})
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--interval", type=float, default=300.0)
    ap.add_argument("--only-rotation", action="store_true", help="only the rotation comparison (bytes per hour)")
    a = ap.parse_args()

    import torch

    from eva_helpers.training.checkpoint import CheckpointManager
    from eva_helpers.training.config import TrainConfig

    tmp = Path(tempfile.mkdtemp(prefix="eva-bench-ckpt-"))
    run_dir = Path(a.run_dir) if a.run_dir else tmp / "run"
    data = tmp / "data"
    from _synthetic import write_synthetic_dataset

    write_synthetic_dataset(data, size=a.size)
    cfg = TrainConfig(task="joint", data=str(data), run_dir=str(run_dir), model="unet_medium", epochs=2,
                      batch_size=a.batch_size, size=a.size, workers=0, progress=False, max_steps=1)

    rotation = rotation_comparison(cfg, interval=a.interval)
    if a.only_rotation:
        print(json.dumps({"rotation": rotation, "device": "cpu", "interval_s": a.interval}, indent=2))
        return

    # 1) the state a real run holds after a few steps (Adam moments filled)
    state, n_params = _filled_state("unet_medium", cfg)

    m = CheckpointManager(run_dir, keep_last=3, interval_s=a.interval)
    save_s, load_s = [], []
    for i in range(a.repeats):
        state["global_step"] = i + 1
        t = time.perf_counter()
        path = m.save(state)
        save_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        back = m.load_latest()
        load_s.append(time.perf_counter() - t)
        assert back["global_step"] == i + 1
    nbytes = path.stat().st_size
    save_med, load_med = statistics.median(save_s), statistics.median(load_s)

    # 2) resume latency in a fresh process: a real run folder with a checkpoint of the medium model
    import shutil

    shutil.rmtree(run_dir)
    env_cfg = cfg.to_dict()
    t0 = time.time()
    subprocess.run([sys.executable, "-c", CHILD, str(t0), str(ROOT), json.dumps(env_cfg)], check=True,
                   capture_output=True, text=True)  # fresh run: 1 step, checkpoint saved
    cold_s = time.time() - t0
    env_cfg["max_steps"] = 2
    t0 = time.time()
    p = subprocess.run([sys.executable, "-c", CHILD, str(t0), str(ROOT), json.dumps(env_cfg)], check=True,
                       capture_output=True, text=True)
    first = float(next(line.split()[1] for line in p.stdout.splitlines() if line.startswith("FIRST_STEP_S")))
    assert "resumed from" in p.stdout, p.stdout

    res = {"model": "unet_medium joint", "params_M": round(n_params / 1e6, 2), "checkpoint_MB": round(nbytes / 1e6, 1),
           "save_s_median": round(save_med, 3), "save_s_all": [round(s, 3) for s in save_s],
           "load_s_median": round(load_med, 3), "interval_s": a.interval,
           "overhead_pct_at_interval": round(100 * save_med / (a.interval + save_med), 3),
           "resume_process_start_to_first_step_s": round(first, 2),
           "fresh_process_one_step_run_s": round(cold_s, 2), "size": a.size, "batch_size": a.batch_size,
           "device": "cuda" if torch.cuda.is_available() else "cpu", "run_dir": str(run_dir), "rotation": rotation}
    print(json.dumps(res, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
