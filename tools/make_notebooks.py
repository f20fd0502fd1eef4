"""Writes notebooks/01..05 from the cell sources below (run after editing; notebooks are committed without outputs).

Usage: python tools/make_notebooks.py [--out DIR]   (default: notebooks/; tests/test_notebooks_generated.py writes
them to a temporary folder and compares them with the committed ones)

The notebooks are thin: every step is one call into eva_helpers (session, notebook, notebook_train, runs). The install
cell embeds eva_helpers/colab/install.py verbatim (it must run before the package exists); the parameters' defaults
come from TrainConfig, so a changed default reaches the notebooks by running this script.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nbformat as nbf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eva_helpers.training.config import RECIPE_LR, TrainConfig  # noqa: E402
from eva_helpers.training.progress import TB_EVERY  # noqa: E402
from eva_helpers.compositing.cost import BUILD_RATE  # noqa: E402
from eva_helpers.colab.notebook import DEFAULT_DATASET  # noqa: E402
from eva_helpers.compositing.build import BUILD_DEFAULTS as B, MODES  # noqa: E402
from eva_helpers.compositing.teachers import TEACHERS  # noqa: E402

REPO = "eva-maskdepth/eva-maskdepth"
REF = "main"  # the default branch: it always exists (tests/test_colab_journey.py checks REF with git rev-parse)
OUT = ROOT / "notebooks"
INSTALL_SCRIPT = (ROOT / "eva_helpers" / "colab" / "install.py").read_text()
assert "'''" not in INSTALL_SCRIPT, "colab_install.py is embedded in r'''...''': it must not contain '''"
D = TrainConfig()


def badge(name: str) -> str:
    url = f"https://colab.research.google.com/github/{REPO}/blob/main/notebooks/{name}.ipynb"
    return f'<a href="{url}" target="_parent"><img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>'


INSTALL = f'''#@title Install eva_helpers (never touches Colab's torch, torchvision or numpy)
REPO_URL = "https://github.com/{REPO}"  #@param {{type:"string"}}
REF = "{REF}"  #@param {{type:"string"}}
DRIVE_COPY = "/content/drive/MyDrive/eva-maskdepth/install"  #@param {{type:"string"}}
# REF: a branch, tag or commit of REPO_URL ("main" = the code as the repository stands now; put a commit here to
# install the same code after every reconnect). The banner below prints the version and commit installed, and each
# run folder records it in code.json. Private repository: add a token in Colab's Secrets (key icon) as GITHUB_TOKEN,
# never in this cell. If pip cannot reach REPO_URL, the newest wheel, zip or repository folder in DRIVE_COPY is
# installed instead (it says when that is not REF); failing both, two ways forward are printed. If pip changed a
# package this session had already imported, the cell stops: restart the session and run all again.
import importlib.util
if importlib.util.find_spec("eva_helpers") is None:
    EVA_INSTALL = r\'\'\'{INSTALL_SCRIPT}\'\'\'
    exec(compile(EVA_INSTALL, "colab_install.py", "exec"), ns := {{"__name__": "colab_install"}})
    if not ns["ensure_installed"](REPO_URL, REF, DRIVE_COPY, mount=True, optional=ns["OPTIONAL"]):
        raise SystemExit("eva_helpers is not installed: follow one of the two ways printed above")'''

START_MD = ("## Environment and folders\nPrints the GPU, RAM, disk and library versions (check the GPU after a reconnect), "
            "then mounts Google Drive: datasets and runs live in `MyDrive/eva-maskdepth`, fast copies in the local cache.")
START = '''from eva_helpers.colab.session import start, finish
paths = start()'''
FINISH_MD = ("## Save and flush\nDrive uploads late: this forces every file written above (checkpoints, metrics, stats) "
             "onto Drive and unmounts it. Run it before closing the tab. After it, a cell that would write to Drive "
             "stops and says so (it would write to the runtime's local disk instead): run the environment cell "
             "(`paths = start()`) again to keep working.")
FINISH = "finish(paths);"
SMOKE_NOTE = "`SMOKE = True` runs everything on the embedded sample at tiny sizes in about a minute on a CPU."


NOTEBOOKS: dict[str, nbf.NotebookNode] = {}  # name -> notebook, filled below; write_notebooks() writes them


def notebook(name: str, title: str, intro: str, params: str, cells: list[tuple[str, str]]) -> None:
    nb = nbf.v4.new_notebook()
    nb.metadata.update({"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                        "language_info": {"name": "python"}, "accelerator": "GPU", "colab": {"provenance": []}})
    c = [nbf.v4.new_markdown_cell(f"{badge(name)}\n\n# {title}\n\n{intro}")]
    p = nbf.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    inst = nbf.v4.new_code_cell(INSTALL)
    inst.metadata["cellView"] = "form"  # Colab shows the three fields, not the embedded script
    c += [p, inst, nbf.v4.new_markdown_cell(START_MD), nbf.v4.new_code_cell(START)]
    for kind, src in cells + [("md", FINISH_MD), ("code", FINISH)]:
        c.append(nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src))
    nb.cells = c
    for i, cell in enumerate(nb.cells):  # stable ids so regenerating gives the same file
        cell["id"] = f"{name[:2]}-{i:02d}"
    NOTEBOOKS[name] = nb


DATASET_PARAM = (f'DATASET = "{DEFAULT_DATASET}"  #@param {{type:"string"}}\n'
                 '# DATASET: the folder notebook 01 builds (in MyDrive/eva-maskdepth/data), a folder path, or a name in '
                 'data_manifest.json ("sample" = the shipped 64 px sample)')
minutes_400k = 400_000 / BUILD_RATE / 60

notebook(
    "01_build_dataset", "01 · Build the dataset",
    "From a folder of background photos and a folder of transparent cut-outs to verified zip shards with masks and "
    "depth labels. Leave `BG_DIR`/`FG_DIR` empty to use the embedded sample (12 real photos, 16 real cut-outs). "
    "Notebooks 02-05 read the dataset this notebook writes (`DATASET`). The build is resumable: after a disconnect, "
    "run all cells again and finished shards are kept. " + SMOKE_NOTE,
    f'''#@title Parameters
SMOKE = False  #@param {{type:"boolean"}}
BG_DIR = ""  #@param {{type:"string"}}
FG_DIR = ""  #@param {{type:"string"}}
{DATASET_PARAM}
SIZE = {B["size"]}  #@param {{type:"integer"}}
POSITIONS = {B["positions"]}  #@param {{type:"integer"}}
SEED = {B["seed"]}  #@param {{type:"integer"}}
TEACHER = "auto"  #@param {json.dumps(["auto", *TEACHERS])}
# TEACHER: "auto" = Depth Anything V2 Small on a GPU runtime (a CPU runtime stops and says so); "geometric" = synthetic
# labels (a ground-plane guess, not a measurement), only when chosen here on purpose
MODE = "{B["mode"]}"  #@param {json.dumps(list(MODES))}
# MODE: "layered" = the teacher once per background, the object as a layer on it; "hybrid" = background from the clean
# photo, object from the teacher on the composite; "per-composite" = the teacher on every composite
SCALE_MIN = {B["scale_range"][0]}  #@param {{type:"number"}}
SCALE_MAX = {B["scale_range"][1]}  #@param {{type:"number"}}
FLIPS = {B["flips"]}  #@param {{type:"boolean"}}
SHARD_SIZE = {B["shard_size"]}  #@param {{type:"integer"}}''',
    [
        ("md", "## What will be built\n`SMOKE` shrinks everything (and labels with the geometric teacher). "
               "`TEACHER = \"auto\"` keeps the teacher a started build recorded (a reconnect does not switch it), else "
               "picks Depth Anything V2 Small, a pretrained depth model, on a GPU runtime. On a CPU runtime it stops with "
               "one line: switch the runtime to GPU, or set `TEACHER = \"geometric\"` on purpose. The geometric teacher's "
               "labels are **synthetic**: a ground-plane guess from each photo's layout with the object as a layer on "
               "it, not a measurement or a model's estimate of the scene; a model trained on them learns that guess."),
        ("code", '''from eva_helpers.colab import notebook as nb
plan = nb.build_plan(paths, SMOKE, bg_dir=BG_DIR, fg_dir=FG_DIR, dataset=DATASET, size=SIZE, positions=POSITIONS,
                     seed=SEED, teacher=TEACHER, mode=MODE, scale_range=(SCALE_MIN, SCALE_MAX), flips=FLIPS,
                     shard_size=SHARD_SIZE)'''),
        ("md", f"## Build\nThe cell above already printed what this build costs: composites, shards, the GB it writes "
               "to Drive (measured on a small probe build of your photos at `SIZE`: an estimate) and the time; it "
               "stops before building when the destination has less free space than that (400k composites at 224 px "
               "are about 20-25 GB, more than the free 15 GB of Drive).\n\n**Time**: compositing runs at about {BUILD_RATE:,} composites/s on Colab's 2 vCPUs, so 100 bg "
               f"x 100 fg x 2 flips x 20 positions (400k) takes about {minutes_400k:.0f} minutes, plus the upload of "
               "the shards to Drive. `layered` runs the teacher once per background; `per-composite` runs it on every "
               "composite (hours for 400k, GPU only). The embedded sample at the defaults takes well under a minute. "
               "Interrupted? Run all again: verified shards are kept."),
        ("code", "manifest = nb.build(plan)"),
        ("md", "## Look at the samples\nEach row: the background, the composite, the mask (exactly the pasted alpha) and the "
               "depth label (near = bright). The line above the grid names the teacher that made the depth labels, as "
               "the dataset's manifest records it, and says when they are synthetic. Check that objects sit fully "
               "inside the frame and that depth makes sense."),
        ("code", "nb.show_samples_of(plan.out_dir, 6, SEED);"),
        ("md", "## Where the shards went\nNotebooks 02-05 find this dataset by its `DATASET` name. To fetch it elsewhere, "
               "add it to `data_manifest.json` (README: Your own data)."),
        ("code", "nb.shard_report(manifest, plan.out_dir);"),
    ],
)

DATA_MD = ("## The dataset\nNeeds notebook 01's dataset (`DATASET`), or runs on the shipped sample with `SMOKE`. A dataset "
           "on Drive is copied to the local disk once (verified; the size and an estimate of the time are printed "
           "first), because reading zips through Drive is slow. The copy keeps the name `DATASET`, and so do run "
           "folders: `<task>-<model>-<size>px-<DATASET>`.")
DATA_CELL = '''from eva_helpers.colab import notebook as nb
data_dir = nb.dataset_for(DATASET, paths, SMOKE)'''

notebook(
    "02_explore_dataset", "02 · Explore the dataset",
    "Fetch (verified, cached on local disk), stats, sample grids, histograms, augmentation and the held-out splits. "
    "Runs after notebook 01 (or alone with `SMOKE`). " + SMOKE_NOTE,
    f'''#@title Parameters
SMOKE = False  #@param {{type:"boolean"}}
{DATASET_PARAM}
SPLIT_BY = "bg"  #@param ["bg", "fg", "bg+fg"]
STATS_SAMPLES = 20000  #@param {{type:"integer"}}
SEED = 0  #@param {{type:"integer"}}
SIZE = {D.size}  #@param {{type:"integer"}}''',
    [
        ("md", DATA_MD),
        ("code", DATA_CELL),
        ("md", "## Stats\nPer-channel mean/std (used to normalise inputs, once), foreground fraction and depth histogram. "
               "`stats.json` is written beside the dataset on Drive, where notebooks 03-05 read it. **Time**: 20,000 "
               "evenly spaced samples take a minute or two; `STATS_SAMPLES = 0` reads all (400k: about 10 minutes)."),
        ("code", "stats = nb.explore_stats(data_dir, STATS_SAMPLES)"),
        ("md", "## Samples and augmentation\nFour samples (the line above them names the teacher that made the depth "
               "labels, from the dataset's manifest; geometric labels are synthetic, a ground-plane guess, not a "
               "measurement), then one sample as training sees it, four draws: mask and depth "
               "must move with fg_bg, and bg looks like another photo of the scene (exposure, white balance, a pixel of "
               "shake, noise, JPEG; a soft shadow beside the object), so the model learns that such changes are not "
               "the object."),
        ("code", "nb.show_augmentation(data_dir, SIZE, SEED);"),
        ("md", "## Splits by background\nNo background is in two splits, so test numbers measure generalisation to new scenes."),
        ("code", "splits = nb.show_splits(data_dir, SPLIT_BY, SEED)"),
        ("code", "nb.sample_browser_for(data_dir, splits)"),
    ],
)

TRAIN_PARAMS = f'''#@title Parameters
SMOKE = False  #@param {{type:"boolean"}}
{DATASET_PARAM}
MODEL = ""  #@param ["", "unet_small", "unet_medium", "unet_large", "resnet18_unet", "resnet34_unet"] {{allow-input: true}}
# MODEL: empty = TrainConfig's default ({D.model})
SHOW_SUMMARY = False  #@param {{type:"boolean"}}
# SHOW_SUMMARY: the model's layer table (torchsummary) under "The model"; off = one line (parameters, outputs, size)
EPOCHS = {D.epochs}  #@param {{type:"integer"}}
BATCH_SIZE = {D.batch_size}  #@param {{type:"integer"}}
SIZE = {D.size}  #@param {{type:"integer"}}
LR = 0.0  #@param {{type:"number"}}
# LR: 0 = the model family's recipe ({RECIPE_LR['unet']:g} for UNets, {RECIPE_LR['resnet']:g} for pretrained ResNets)
SEED = {D.seed}  #@param {{type:"integer"}}
INIT_FROM = ""  #@param {{type:"string"}}
# INIT_FROM: a run (its name in the runs folder, or a folder) whose weights this run starts from where they fit: the
# same model at another SIZE or on another DATASET, or notebook 03's mask run for a joint run; empty = from scratch
SIZE_STAGES = ""  #@param {{type:"string"}}
# SIZE_STAGES: smaller images first, e.g. "32:5" = 5 epochs at 32 px, then the rest at SIZE; empty = all at SIZE
RUN_NAME = ""  #@param {{type:"string"}}
# RUN_NAME: empty = <task>-<model>-<size>px-<DATASET> in MyDrive/eva-maskdepth/runs
FORCE_TAKEOVER = False  #@param {{type:"boolean"}}
# FORCE_TAKEOVER: after a disconnect the train cell watches the old runtime's lease for 3 minutes before taking its
# run over; True takes over at once (only when you know the old runtime is gone: two runtimes must not train one run)
ALLOW_CPU = False  #@param {{type:"boolean"}}
# ALLOW_CPU: a run a GPU trained stops on a CPU runtime (Colab hands one out when the GPU quota is used up); True trains
# it on with the CPU, many times slower'''


def train_cells(task: str, extra: str = "") -> list[tuple[str, str]]:
    return [
        ("md", DATA_MD),
        ("code", DATA_CELL),
        ("md", "## Settings\nThe parameters over `TrainConfig`'s defaults (the table lists what differs from them; "
               "`config.json` in the run folder holds every setting). The run folder holds config, history, "
               "checkpoints and metrics. Raise `EPOCHS` and run all again to **train a run longer**: it continues from "
               "its last checkpoint and the learning-rate schedule is stretched to the new end."),
        ("code", f'''from eva_helpers.colab import notebook_train as nt
from eva_helpers.colab.runs import notebook_config
cfg = notebook_config("{task}", data_dir, paths, SMOKE, model=MODEL, epochs=EPOCHS, batch_size=BATCH_SIZE, size=SIZE,
                      lr=LR, seed=SEED, run_name=RUN_NAME, init_from=INIT_FROM, size_stages=SIZE_STAGES{extra})
nt.config_table(cfg)'''),
        ("md", "## The model"),
        ("code", "nt.show_model(cfg, SHOW_SUMMARY)"),
        ("md", "## TensorBoard\nLoss curves from the run's local logs (Colab): the training loss every "
               f"{TB_EVERY} steps, each epoch's losses and metrics. A new runtime starts without those logs: the "
               "finished epochs are written back from the run's `history.jsonl` on Drive, so the curves are whole."),
        ("code", "nt.tensorboard(cfg);"),
        ("md", "## Train\nCheckpoints land in the run folder every few minutes and at each epoch end. After a disconnect, "
               "run all cells again: training resumes mid-epoch from the last checkpoint with the same sample order, "
               "random states and schedule (on a GPU not bit-identical to an uninterrupted run). **Time**: an "
               "estimate is printed first (two steps of the model timed on this runtime), then one status line (run, epoch, step, loss, samples/s, the time left for the epoch and the run, GPU memory) is updated in place; the notices above it stay, and the loss plot below it is redrawn at each epoch end. A finished run is not "
               "trained again (raise `EPOCHS` to extend it). If `DATASET` was rebuilt since this run started, the cell "
               "stops and says what changed: restore the dataset, or set `RUN_NAME` to start a new run on purpose. "
               "`code.json` in the run folder records the eva_helpers version and commit of each session that trained "
               "it, `sessions.json` its GPU and precision; a run a GPU trained stops on a CPU runtime unless "
               "`ALLOW_CPU`."),
        ("code", "summary = nt.train(cfg, force_takeover=FORCE_TAKEOVER, allow_cpu=ALLOW_CPU)"),
        ("md", "## Evaluate on held-out backgrounds, beside the no-learning baseline\nWrites `metrics.json` and a "
               "best/worst figure into the run folder (an estimate of the time first, then a progress bar counts the "
               "test images)."),
        ("code", "metrics = nt.evaluate(cfg)"),
    ]


notebook("03_train_mask", "03 · Train the mask model",
         "Mask-only training with checkpoints that survive disconnects, evaluated against the bg-difference baseline "
         "(thresholded |fg_bg - bg|: a model must beat it). Needs notebook 01's dataset (or `SMOKE`). " + SMOKE_NOTE,
         TRAIN_PARAMS, train_cells("mask"))
notebook("04_train_depth", "04 · Train the depth model",
         "Depth-only training (L1 + SSIM + gradient loss) against the teacher's labels; RMSE and SSIM on the labels, "
         "AbsRel and δ<1.25 after a per-image scale-and-shift fit in disparity (the MiDaS protocol), beside the "
         "mean-depth baseline. Needs notebook 01's dataset (or `SMOKE`). " + SMOKE_NOTE,
         TRAIN_PARAMS, train_cells("depth"))

JOINT_PARAMS = TRAIN_PARAMS.replace('RUN_NAME = ""  #@param {type:"string"}',
                                    'LOSS_WEIGHTING = "uncertainty"  #@param ["fixed", "uncertainty"]\n'
                                    'TRAIN_MISSING = False  #@param {type:"boolean"}\n'
                                    '# TRAIN_MISSING: train the mask-only and depth-only runs for the comparison here '
                                    'when notebooks 03/04 have not (triples the time)\n'
                                    'UPLOAD_PHOTOS = False  #@param {type:"boolean"}\n'
                                    '# UPLOAD_PHOTOS: the last cells ask for your own two photos (they wait for the '
                                    'files, so leave it off for Run all)\n'
                                    'BG_PHOTO = ""  #@param {type:"string"}\n'
                                    'FG_BG_PHOTO = ""  #@param {type:"string"}\n'
                                    '# BG_PHOTO, FG_BG_PHOTO: your two photos as paths instead of uploads (on Drive: '
                                    '/content/drive/MyDrive/...; JPEG, PNG, WebP or HEIC)\n'
                                    'VIDEO = ""  #@param {type:"string"}\n'
                                    '# VIDEO: a fixed camera\'s clip (.mp4 .mov .avi .mkv; a path, e.g. on Drive); empty = '
                                    'a clip made from a held-out background of the sample\n'
                                    'RUN_NAME = ""  #@param {type:"string"}')
joint_cells = train_cells("joint", ", loss_weighting=LOSS_WEIGHTING") + [
    ("md", "## Joint against single-task models and the baseline\nThe mask-only and depth-only runs of notebooks 03 "
           "and 04 are found in the runs folder by their settings, whatever their `RUN_NAME`, and used only when "
           "they match this run: the same dataset content and every setting that changes results (`MODEL`, `SIZE`, "
           "`EPOCHS`, `BATCH_SIZE`, `LR`, `SEED`, split, second shot, ...); otherwise the line above the table says "
           "what differs. Where each run's weights started (`INIT_FROM`), its `SIZE_STAGES` and its loss weighting "
           "may differ: the table's `trained` column shows them, with each row's run folder. A missing one is trained "
           "here only with `TRAIN_MISSING = True`, from scratch at `SIZE` (**time**: about as long as the joint "
           "training, each); otherwise the table shows what exists and says what is missing. The table is saved as "
           "`comparison.md` in the joint run folder."),
    ("code", "nt.comparison(cfg, metrics, TRAIN_MISSING)"),
    ("md", "## Browse predictions\nTest and validation samples: targets against predictions."),
    ("code", "nt.browse_predictions(cfg)"),
    ("md", "## Your own photos\nTwo photos of one scene: the background alone, then the same framing with the "
           "object in it. Give their paths as `BG_PHOTO` and `FG_BG_PHOTO` (photos on Drive: right-click > Copy path), "
           "or set `UPLOAD_PHOTOS = True` (off by default so that Run all never waits for a file) and upload them: "
           "**step 1** the background, **step 2** the photo with the object (same size). Each step takes exactly one "
           "photo and says what is wrong otherwise. JPEG, PNG, WebP and HEIC (iPhone) photos are read. With neither, "
           "outside Colab or with `SMOKE`, a sample pair of the dataset is used.\n\nA second shot by hand moves a "
           "little and changes exposure: the background is registered to the second photo and its tone matched first, "
           "only when that clearly fits, and the line above the figure says what was applied. The mask, the depth map "
           "and the figure are zipped in `predictions/own_photos.zip` and, for your own photos in Colab, downloaded. "
           "A whole shoot: put the backgrounds in one folder and the photos with objects in another, then "
           "`eva predict --run-dir RUN --bg BG_DIR --fg-bg FG_DIR --out OUT` (pairs by name; `--pair-by order` for a "
           "phone's IMG_0101 = bg, IMG_0102 = fg_bg, or `--pair-by pairs.csv`)."),
    ("code", 'bg = nt.upload_photo("step 1: the background, without the object", data_dir, SMOKE, upload=UPLOAD_PHOTOS,\n'
             '                      path=BG_PHOTO)'),
    ("code", 'fg_bg = nt.upload_photo("step 2: the same photo with the object", data_dir, SMOKE, like=bg,\n'
             '                         upload=UPLOAD_PHOTOS, path=FG_BG_PHOTO)'),
    ("code", "nt.predict_photos(cfg, bg, fg_bg, out=nt.RESULTS, download=UPLOAD_PHOTOS or bool(BG_PHOTO));"),
    ("md", "## Footage from a fixed camera\nA camera that does not move (a doorbell, a webcam, a tripod timelapse) "
           "films one scene with things passing in front: every frame is predicted against a background plate "
           "estimated from the clip itself (a per-pixel median of frames sampled across it), aligned as photos are. "
           "Give your clip's path as `VIDEO`; empty, a clip is made from a held-out background of the sample. The "
           "masks go to a lossless video (`masks.mkv`), with `depth.mkv`, `frames.csv` (one row per frame) and "
           "`bg_plate.png` in `predictions/footage/predicted`; the strip shows frames spread over the clip with their "
           "masks. From the command line: `eva predict --run-dir RUN --video clip.mp4 --out OUT`."),
    ("code", "nt.predict_footage(cfg, VIDEO, smoke=SMOKE);"),
]
notebook("05_train_joint", "05 · Train mask and depth together",
         "One shared encoder (unet_small: also one shared decoder) with a head per task, fixed or learned (uncertainty) loss weights; compared honestly with "
         "the mask-only and depth-only models and with the no-learning baseline on held-out backgrounds. Needs "
         "notebook 01's dataset (or `SMOKE`); notebooks 03 and 04 provide the comparison runs. " + SMOKE_NOTE,
         JOINT_PARAMS, joint_cells)


def write_notebooks(out_dir: Path = OUT) -> list[Path]:
    """Write every notebook as `<out_dir>/<name>.ipynb`; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, nb in NOTEBOOKS.items():
        nbf.write(nb, out_dir / f"{name}.ipynb")
        written.append(out_dir / f"{name}.ipynb")
    return written


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Write notebooks/01..05 from the cell sources in this file.")
    ap.add_argument("--out", type=Path, default=OUT, help="folder to write the .ipynb files to (default: notebooks/)")
    print("wrote", sorted(p.name for p in write_notebooks(ap.parse_args().out)))
