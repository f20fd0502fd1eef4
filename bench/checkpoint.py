"""Checkpoint cost for the medium joint UNet: save/load time, bytes, overhead at the default interval, resume latency.

    python bench/checkpoint.py [--run-dir DIR] [--repeats 5] [--size 224] [--batch-size 4]

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
from eva_helpers.config import TrainConfig
from eva_helpers.train import fit
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--interval", type=float, default=300.0)
    a = ap.parse_args()

    import torch

    from eva_helpers.checkpoint import CheckpointManager, rng_state
    from eva_helpers.config import TrainConfig
    from eva_helpers.losses import build_criterion
    from eva_helpers.models import build_model

    tmp = Path(tempfile.mkdtemp(prefix="eva-bench-ckpt-"))
    run_dir = Path(a.run_dir) if a.run_dir else tmp / "run"
    data = tmp / "data"
    from _synthetic import write_synthetic_dataset

    write_synthetic_dataset(data, size=a.size)
    cfg = TrainConfig(task="joint", data=str(data), run_dir=str(run_dir), model="unet_medium", epochs=2,
                      batch_size=a.batch_size, size=a.size, workers=0, progress=False, max_steps=1)

    # 1) the state a real run holds after a few steps (Adam moments filled)
    torch.manual_seed(0)
    model = build_model("unet_medium", tasks=("mask", "depth"))
    crit = build_criterion(("mask", "depth"), weighting="uncertainty")
    opt = torch.optim.AdamW(list(model.parameters()) + list(crit.parameters()), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=100)
    x = torch.randn(2, 6, 64, 64)
    for _ in range(2):
        out = model(x)
        loss = sum(v.float().mean() for v in out.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    n_params = sum(p.numel() for p in model.parameters())
    state = {"format": "eva-ckpt/1", "model": model.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "scaler": None, "criterion": crit.state_dict(), "epoch": 0,
             "global_step": 0, "global_consumed": 0, "epoch_accum": [{"loss_sum": 0.0, "batches": 0, "samples": 0,
                                                                       "seconds": 0.0}],
             "rng": rng_state(), "history": [], "config": cfg.to_dict(), "model_args": model.model_args,
             "best": {}, "finished": False, "world_size": 1}

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
           "device": "cuda" if torch.cuda.is_available() else "cpu", "run_dir": str(run_dir)}
    print(json.dumps(res, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
