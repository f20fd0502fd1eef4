"""Writes notebooks/01..05 from the cell sources below (run after editing; notebooks are committed without outputs).

Usage: python tools/make_notebooks.py
"""
from __future__ import annotations

from pathlib import Path

import nbformat as nbf

REPO = "eva-maskdepth/eva-maskdepth"
OUT = Path(__file__).resolve().parents[1] / "notebooks"


def badge(name: str) -> str:
    url = f"https://colab.research.google.com/github/{REPO}/blob/main/notebooks/{name}.ipynb"
    return f'<a href="{url}" target="_parent"><img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>'


INSTALL = '''#@title Install (keeps Colab's torch, torchvision and numpy)
import importlib.metadata as md, importlib.util, subprocess, sys
if importlib.util.find_spec("eva_helpers") is None:
    keep = {p: md.version(p) for p in ("torch", "torchvision", "numpy")}
    # Our requirements are loose lower bounds that Colab already satisfies, so pip leaves these alone.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "eva-maskdepth @ git+https://github.com/''' + REPO + '''"], check=True)
    changed = {p: (v, md.version(p)) for p, v in keep.items() if md.version(p) != v}
    if changed:
        print("WARNING: the install changed", changed, "- use Runtime > Restart session, then run all cells again.")
import eva_helpers
print("eva_helpers", eva_helpers.__version__)'''

MOUNT = '''from eva_helpers.paths import mount_drive
paths = mount_drive()  # Colab: Google Drive (MyDrive/eva-maskdepth); elsewhere $EVA_HOME or ./eva_home
print(paths)'''


def notebook(name: str, title: str, intro: str, params: str, cells: list[tuple[str, str]]) -> None:
    nb = nbf.v4.new_notebook()
    nb.metadata.update({"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                        "language_info": {"name": "python"}, "accelerator": "GPU", "colab": {"provenance": []}})
    c = [nbf.v4.new_markdown_cell(f"{badge(name)}\n\n# {title}\n\n{intro}")]
    p = nbf.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    c += [p, nbf.v4.new_code_cell(INSTALL), nbf.v4.new_code_cell(MOUNT)]
    for kind, src in cells:
        c.append(nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src))
    nb.cells = c
    for i, cell in enumerate(nb.cells):  # stable ids so regenerating gives the same file
        cell["id"] = f"{name[:2]}-{i:02d}"
    OUT.mkdir(exist_ok=True)
    nbf.write(nb, OUT / f"{name}.ipynb")


SMOKE_NOTE = "`SMOKE = True` runs everything on the embedded sample at tiny sizes in about a minute on a CPU."

notebook(
    "01_build_dataset", "01 · Build the dataset",
    "From a folder of background photos and a folder of transparent cut-outs to verified zip shards with masks and "
    "depth labels. Leave `BG_DIR`/`FG_DIR` empty to use the embedded sample (12 real photos, 16 real cut-outs). "
    "The build is resumable: after a disconnect, run all cells again and finished shards are kept. " + SMOKE_NOTE,
    '''#@title Parameters
SMOKE = False  #@param {type:"boolean"}
BG_DIR = ""  #@param {type:"string"}
FG_DIR = ""  #@param {type:"string"}
DATASET = "sample"  #@param {type:"string"}
SIZE = 224  #@param {type:"integer"}
POSITIONS = 20  #@param {type:"integer"}
SEED = 0  #@param {type:"integer"}
TEACHER = "auto"  #@param ["auto", "geometric", "depth-anything-v2-small", "midas-small"]
MODE = "layered"  #@param ["layered", "per-composite"]
SCALE_MIN = 0.3  #@param {type:"number"}
SCALE_MAX = 0.7  #@param {type:"number"}
FLIPS = True  #@param {type:"boolean"}
SHARD_SIZE = 1000  #@param {type:"integer"}''',
    [
        ("code", '''from pathlib import Path
import torch
from eva_helpers.paths import sample_assets
if SMOKE:
    SIZE, POSITIONS, TEACHER, DATASET, SHARD_SIZE = 48, 1, "geometric", DATASET + "-smoke", 200
if TEACHER == "auto":  # the pretrained teacher needs the hub and is worth it on a GPU; the geometric one runs anywhere
    TEACHER = "depth-anything-v2-small" if torch.cuda.is_available() else "geometric"
bg_dir = Path(BG_DIR) if BG_DIR else sample_assets() / "bg"
fg_dir = Path(FG_DIR) if FG_DIR else sample_assets() / "fg"
out_dir = paths.data / DATASET
print(f"bg: {bg_dir}\\nfg: {fg_dir}\\nout: {out_dir}\\nteacher: {TEACHER} ({MODE})")'''),
        ("code", '''from eva_helpers.build import build_dataset
manifest = build_dataset(bg_dir, fg_dir, out_dir, size=SIZE, positions=POSITIONS, seed=SEED, teacher=TEACHER,
                         mode=MODE, scale_range=(SCALE_MIN, SCALE_MAX), flips=FLIPS, shard_size=SHARD_SIZE)
manifest["counts"]'''),
        ("md", "## Look at the samples\nEach row: the background, the composite, the mask (exactly the pasted alpha) and the "
               "depth label (near = bright). Check that objects sit fully inside the frame and that depth makes sense."),
        ("code", '''from eva_helpers.dataset import ShardDataset
from eva_helpers.plots import show_samples, spread_indices
ds = ShardDataset(out_dir)
show_samples([ds[i] for i in spread_indices(len(ds), 6, SEED)]);'''),
        ("md", "## Where the shards went\nCopy this folder (or add it to `data_manifest.json`) to use it in notebooks 02-05."),
        ("code", '''print(out_dir)
for s in manifest["shards"][:10]:
    print(f'{s["file"]}  {s["samples"]:6d} samples  {s["bytes"] / 1e6:7.2f} MB  sha256 {s["sha256"][:12]}…')
if len(manifest["shards"]) > 10:
    print(f'… {len(manifest["shards"]) - 10} more shards')'''),
    ],
)

DATA_CELL = '''from eva_helpers.locate import resolve_dataset
data_dir = resolve_dataset(DATASET, paths)  # a folder, a dataset built by notebook 01, or a name in data_manifest.json
print(data_dir)'''

notebook(
    "02_explore_dataset", "02 · Explore the dataset",
    "Fetch (verified, cached on local disk), stats, sample grids, histograms, augmentation and the held-out splits. "
    + SMOKE_NOTE,
    '''#@title Parameters
SMOKE = False  #@param {type:"boolean"}
DATASET = "sample"  #@param {type:"string"}
SPLIT_BY = "bg"  #@param ["bg", "fg", "bg+fg"]
STATS_SAMPLES = 20000  #@param {type:"integer"}
SEED = 0  #@param {type:"integer"}
SIZE = 224  #@param {type:"integer"}''',
    [
        ("code", '''if SMOKE:
    DATASET, SIZE = DATASET + "-smoke", 48'''),
        ("code", DATA_CELL),
        ("md", "## Stats\nPer-channel mean/std (used to normalise inputs, once), foreground fraction and depth histogram."),
        ("code", '''from eva_helpers.stats import compute_stats
from eva_helpers.plots import plot_stats
stats = compute_stats(data_dir, limit=STATS_SAMPLES or None)  # evenly spaced samples; 0 = all (400k: ~10 min)
for k in ("bg", "fg_bg"):
    print(f"{k:6s} mean {[round(v, 4) for v in stats[k]['mean']]}  std {[round(v, 4) for v in stats[k]['std']]}")
print("foreground fraction (mean):", round(stats["mask_fraction"]["mean"], 4))
plot_stats(stats);'''),
        ("md", "## Samples and augmentation\nThe same sample, augmented several times: mask and depth must move with the image."),
        ("code", '''from eva_helpers.dataset import ShardDataset
from eva_helpers.augment import build_transforms
from eva_helpers.plots import show_samples, spread_indices
raw = ShardDataset(data_dir)
show_samples([raw[i] for i in spread_indices(len(raw), 4, SEED)])
aug = ShardDataset(data_dir, transform=build_transforms("train", SIZE))
show_samples([dict(aug[(0, s)], meta={"index": 0, "bg_id": f"seed {s}"}) for s in range(4)]);'''),
        ("md", "## Splits by background\nNo background is in two splits, so test numbers measure generalisation to new scenes."),
        ("code", '''from eva_helpers.dataset import make_splits
splits = make_splits(data_dir, by=SPLIT_BY, seed=SEED)
for k in ("train", "val", "test"):
    print(f"{k:5s} {len(splits[k]):6d} samples")
print(splits["info"])'''),
        ("code", '''from eva_helpers.widgets import sample_browser
sample_browser(raw, splits)'''),
    ],
)

TRAIN_PARAMS = '''#@title Parameters
SMOKE = False  #@param {type:"boolean"}
DATASET = "sample"  #@param {type:"string"}
MODEL = "unet_medium"  #@param ["unet_small", "unet_medium", "unet_large", "resnet18_unet", "resnet34_unet"]
EPOCHS = 10  #@param {type:"integer"}
BATCH_SIZE = 32  #@param {type:"integer"}
SIZE = 224  #@param {type:"integer"}
LR = 1e-3  #@param {type:"number"}
SEED = 0  #@param {type:"integer"}
RUN_NAME = ""  #@param {type:"string"}'''

SMOKE_TRAIN = '''from eva_helpers.config import TrainConfig
MAX_STEPS = None
if SMOKE:
    DATASET, MODEL, EPOCHS, BATCH_SIZE, SIZE, MAX_STEPS = DATASET + "-smoke", "unet_small", 1, 16, 32, 6'''


def train_cells(task: str) -> list[tuple[str, str]]:
    return [
        ("code", SMOKE_TRAIN),
        ("code", DATA_CELL),
        ("code", f'''run_dir = paths.runs / (RUN_NAME or f"{task}-{{MODEL}}-{{SIZE}}px")
cfg = TrainConfig(task="{task}", data=str(data_dir), run_dir=str(run_dir), model=MODEL, epochs=EPOCHS,
                  batch_size=BATCH_SIZE, size=SIZE, lr=LR, seed=SEED, max_steps=MAX_STEPS, live_plot=True,
                  workers=0 if SMOKE else None)
cfg'''),
        ("md", "## The model"),
        ("code", '''from eva_helpers.models import build_model, summary
summary(build_model(cfg.model, tasks=cfg.tasks), cfg.size)'''),
        ("md", "## Train\nCheckpoints land in the run folder every few minutes and at each epoch end. After a disconnect, "
               "run all cells again: training resumes mid-epoch from the last checkpoint and ends exactly where an "
               "uninterrupted run would."),
        ("code", '''from eva_helpers.train import fit
summary_ = fit(cfg)
summary_'''),
        ("md", "## Evaluate on held-out backgrounds, beside the no-learning baseline"),
        ("code", '''from eva_helpers.evaluate import evaluate_run
metrics = evaluate_run(run_dir, data_dir)
{k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}'''),
        ("code", '''from IPython.display import Image, display
display(Image(filename=str(run_dir / "eval_best_worst.png")))
print("checkpoints:", sorted(p.name for p in (run_dir / "checkpoints").iterdir()))
print("run folder:", run_dir)'''),
    ]


notebook("03_train_mask", "03 · Train the mask model",
         "Mask-only training with checkpoints that survive disconnects, evaluated against the bg-difference baseline "
         "(thresholded |fg_bg - bg|: a model must beat it). " + SMOKE_NOTE, TRAIN_PARAMS, train_cells("mask"))
notebook("04_train_depth", "04 · Train the depth model",
         "Depth-only training (L1 + SSIM + gradient loss) against the teacher's labels; RMSE, AbsRel, δ<1.25 and SSIM, "
         "plus scale-and-shift aligned variants. " + SMOKE_NOTE, TRAIN_PARAMS, train_cells("depth"))

JOINT_PARAMS = TRAIN_PARAMS.replace('RUN_NAME = ""  #@param {type:"string"}',
                                    'LOSS_WEIGHTING = "uncertainty"  #@param ["fixed", "uncertainty"]\n'
                                    'RUN_NAME = ""  #@param {type:"string"}')
joint_cells = train_cells("joint")
joint_cells[2] = ("code", joint_cells[2][1].replace("workers=0 if SMOKE else None)",
                                                   "workers=0 if SMOKE else None, loss_weighting=LOSS_WEIGHTING)"))
joint_cells += [
    ("md", "## Joint against single-task models and the baseline\nRuns of notebooks 03 and 04 with the same dataset and "
           "size are picked up from the runs folder; missing ones are trained here with the same settings."),
    ("code", '''import json
from dataclasses import replace
from eva_helpers.demo import results_table
from IPython.display import Markdown
results = {}
for task in ("mask", "depth"):
    other = paths.runs / f"{task}-{MODEL}-{SIZE}px"
    if (other / "metrics.json").is_file():  # evaluated by notebook 03/04
        m = json.loads((other / "metrics.json").read_text())
    else:  # train it here with this notebook's settings (resumes if interrupted)
        fit(replace(cfg, task=task, run_dir=str(other), loss_weighting="fixed", live_plot=False))
        m = evaluate_run(other, data_dir)
    results[f"{task}-only {MODEL}"] = m
results[f"joint {MODEL}"] = metrics
Markdown(results_table(results))'''),
    ("md", "## Browse predictions"),
    ("code", '''from eva_helpers.train import load_run
from eva_helpers.dataset import ShardDataset
from eva_helpers.augment import build_transforms
from eva_helpers.evaluate import split_positions, load_run_stats
from eva_helpers.widgets import prediction_browser
model, run_cfg, _ = load_run(run_dir)
splits = split_positions(run_cfg, data_dir)
tf = build_transforms("test", run_cfg.size)
prediction_browser(model, {s: ShardDataset(data_dir, indices=splits[s], transform=tf) for s in ("test", "val")},
                   load_run_stats(run_dir, data_dir))'''),
    ("md", "## Your own photos\nUpload a background photo and the same photo with an object in it (same size). "
           "Outside Colab (or in SMOKE) a sample pair is used."),
    ("code", '''import numpy as np
from eva_helpers.predict import load_photo, predict_pair
from eva_helpers.evaluate import load_run_stats
from eva_helpers.plots import side_by_side
try:
    from google.colab import files
    up = files.upload() if not SMOKE else {}
except ImportError:
    up = {}
if len(up) >= 2:
    (n1, b1), (n2, b2) = list(up.items())[:2]
    open(n1, "wb").write(b1); open(n2, "wb").write(b2)
    bg, fg_bg = load_photo(n1), load_photo(n2)
else:
    s = ShardDataset(data_dir)[0]
    bg, fg_bg = s["bg"], s["fg_bg"]
pred = predict_pair(model, bg, fg_bg, run_cfg.size, load_run_stats(run_dir, data_dir))
side_by_side(bg, fg_bg, pred.get("mask"), pred.get("depth"));'''),
]
notebook("05_train_joint", "05 · Train mask and depth together",
         "One shared encoder, a decoder per task, fixed or learned (uncertainty) loss weights; compared honestly with "
         "the mask-only and depth-only models and with the no-learning baseline on held-out backgrounds. " + SMOKE_NOTE,
         JOINT_PARAMS, joint_cells)
print("wrote", sorted(p.name for p in OUT.glob("*.ipynb")))
