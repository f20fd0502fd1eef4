"""Writes docs/overview.png (the README picture) from a finished `eva demo` folder: held-out test samples with the
joint model's predictions. Usage: python tools/make_overview.py demo_output"""
from __future__ import annotations

import sys
from pathlib import Path

import torch


from eva_helpers.data.resize import resize_transform
from eva_helpers.data.dataset import ShardDataset
from eva_helpers.data.loaders import collate
from eva_helpers.training.trainer import model_batch
from eva_helpers.plots import _grid, save_figure, spread_indices
from eva_helpers.training.trained_run import load_trained_run

demo = Path(sys.argv[1] if len(sys.argv) > 1 else "demo_output")
run = next((demo / "runs").glob("joint-*"))
trained = load_trained_run(run, device="cpu")
model, cfg = trained.model, trained.cfg
splits = cfg.splits(cfg.data)
ds = ShardDataset(cfg.data, indices=splits["test"], transform=resize_transform(cfg.size))
samples = [ds[i] for i in spread_indices(len(ds), 3, seed=1)]
batch = collate(samples)
with torch.no_grad():
    x, t = model_batch(batch, "cpu", trained.stats)
    out = model(x)
rows = [[batch["bg"][i], batch["fg_bg"][i], t["mask"][i], (out["mask"][i].sigmoid() > 0.5).float(), t["depth"][i],
         out["depth"][i]] for i in range(len(samples))]
fig = _grid(rows, ["bg (input)", "fg_bg (input)", "mask (label)", "mask (predicted)", "depth (teacher)",
                   "depth (predicted)"], ["held-out bg"] * len(rows))
print(save_figure(fig, Path(__file__).resolve().parents[1] / "docs" / "overview.png"))
