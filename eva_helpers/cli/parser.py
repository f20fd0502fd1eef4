"""The `eva` command line: every command's flags, with their defaults and choices taken from the code they set.

A flag that sets a `TrainConfig` field shows that field's default and allowed values (training/config.py); the build's
and the demo's flags show `build_dataset`'s and `run_demo`'s. So `eva --help`, the notebooks' parameters and the Python
API cannot drift apart. (`eva predict --batch-size` keeps its own default: reading predict_folders' would import torch
for every command.)
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
from typing import Any, Callable

from eva_helpers.cli import commands
from eva_helpers.compositing import params
from eva_helpers.compositing.build import BUILD_DEFAULTS, MODES
from eva_helpers.compositing.teachers import TEACHERS
from eva_helpers.demo import run_demo
from eva_helpers.errors import EvaError, UsageError
from eva_helpers.training import config
from eva_helpers.training.config import CHECKPOINT_CHOICES, SCHEDULES, SECOND_SHOTS, TASK_HEADS, WEIGHTINGS, TrainConfig

TRAIN = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
DEMO = {name: p.default for name, p in inspect.signature(run_demo).parameters.items()
        if p.default is not inspect.Parameter.empty}
# `eva predict --batch-size`: pairs queued ahead of the 2 worker threads; past 1024 the queue only grows
PREDICT_BATCH = (1, 1024)
# `eva predict --video`'s frame counts: a frame index or step past a billion is no clip's (a day at 10000 frames/s)
VIDEO_FRAMES = (0, 10**9)


def _pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LO,HI (two numbers, e.g. 0.3,0.7)") from None
    return lo, hi


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line (UsageError), not a usage block and SystemExit."""

    def error(self, message: str):
        raise UsageError(f"{message} (see: {self.prog} --help)")


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None


def _bounded(problem: Callable[[str, Any], str | None], name: str) -> Callable[[str], int]:
    """An int flag checked against its bounds table (training/config.py BOUNDS, compositing/params.py BUILD_BOUNDS):
    out of range is one line naming the flag (argparse adds it), the value and the range, before anything runs."""

    def parse(text: str) -> int:
        value = _whole(text)
        why = problem(name, value)
        if why:
            raise argparse.ArgumentTypeError(why)
        return value

    return parse


def _train(name: str) -> Callable[[str], int]:
    return _bounded(config.bound_problem, name)


def _build(name: str) -> Callable[[str], int]:
    return _bounded(params.bound_problem, name)


def _predict_batch(text: str) -> int:
    value, (lo, hi) = _whole(text), PREDICT_BATCH
    if not lo <= value <= hi:
        raise argparse.ArgumentTypeError(f"{value} is not valid: give {lo} to {hi} pairs queued ahead of the worker "
                                         "threads")
    return value


def _frames(lo: int) -> Callable[[str], int]:
    """A frame count or index of --video, from `lo` to VIDEO_FRAMES' top."""

    def parse(text: str) -> int:
        value, hi = _whole(text), VIDEO_FRAMES[1]
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is not valid: give a whole number from {lo} to {hi} (frames)")
        return value

    return parse


def _stage(text: str) -> list[int]:
    """"32:5" -> [32, 5] for --size-stages (config.parse_stages)."""
    try:
        stages = config.parse_stages(text, "--size-stages")
    except EvaError as e:
        raise argparse.ArgumentTypeError(str(e))
    if len(stages) != 1:  # "32:5,48:2" in one word: give each stage its own word
        raise argparse.ArgumentTypeError(f"{text!r}: give one SIZE:EPOCHS per stage, separated by spaces, e.g. 32:5 48:2")
    return stages[0]


class _PerturbAction(argparse.Action):
    """`--perturb NAME`: a name from perturb.PERTURBATIONS; `--perturb list` prints them with what each does and exits
    at once (like --help, before the required flags are asked for); any other name is a one-line usage error."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        from eva_helpers.evaluation.perturb import PERTURBATIONS, describe, names_line

        if value == "list":
            print(describe())
            parser.exit(0)
        if value not in PERTURBATIONS:
            parser.error(f"argument {option_string}: unknown perturbation {value!r}; choose from {names_line()} "
                         "(or 'list')")
        setattr(namespace, self.dest, value)


def _perturb_names() -> str:
    from eva_helpers.evaluation.perturb import names_line

    return names_line()


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every optional flag's help ends with its default (required ones have none to show)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.required else super()._get_help_string(action)


class _HelpNames(_Help):
    """Never wraps a line inside a hyphenated name (`wb-strong`, `exposure-10`): the perturbation names stay whole."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        import textwrap

        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width, break_on_hyphens=False)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="eva", description="eva-maskdepth: masks and depth from (bg, fg_bg) pairs.")
    sub = p.add_subparsers(dest="command", required=True)
    fmt = {"formatter_class": _Help}

    b = sub.add_parser("build", help="composite bg/ + fg/ into verified zip shards with depth labels", **fmt)
    b.add_argument("--bg", required=True, help="folder of background photos")
    b.add_argument("--fg", required=True, help="folder of cut-outs with an alpha channel")
    b.add_argument("--out", required=True, help="dataset folder to create (or resume)")
    b.add_argument("--size", type=_build("size"), default=BUILD_DEFAULTS["size"], help="side of the square composites in pixels")
    b.add_argument("--positions", type=_build("positions"), default=BUILD_DEFAULTS["positions"], help="random placements per (bg, fg, flip)")
    b.add_argument("--seed", type=_build("seed"), default=BUILD_DEFAULTS["seed"], help="every random choice of sample i derives from (seed, i)")
    b.add_argument("--teacher", default=BUILD_DEFAULTS["teacher"], help=" | ".join(TEACHERS))
    b.add_argument("--teacher-model-dir", default=None, help="load the Depth Anything teacher from a local folder")
    b.add_argument("--mode", default=BUILD_DEFAULTS["mode"], choices=MODES,
                   help="depth labels: teacher once per background with the object as a layer; hybrid (background "
                        "from the clean photo, object from the composite, aligned outside the mask); or every composite "
                        "(aligned to the background's map)")
    b.add_argument("--teacher-input-size", type=_build("teacher_input_size"), default=None,
                   help="side the deep teacher runs at (default: its own, 518 for Depth Anything V2, 256 for MiDaS)")
    b.add_argument("--scale-range", type=_pair, default=BUILD_DEFAULTS["scale_range"], help="object height as a fraction of the bg: LO,HI")
    b.add_argument("--no-flips", action="store_true", help="do not add mirrored cut-outs")
    b.add_argument("--shard-size", type=_build("shard_size"), default=BUILD_DEFAULTS["shard_size"], help="samples per zip shard")
    b.add_argument("--jpeg-quality", type=_build("jpeg_quality"), default=BUILD_DEFAULTS["jpeg_quality"], help="JPEG quality of fg_bg (4:4:4 chroma)")
    b.add_argument("--workers", type=_build("workers"), default=None, help="build processes (None: one per CPU)")
    b.add_argument("--on-bad", choices=["error", "skip"], default=BUILD_DEFAULTS["on_bad"], help="unreadable inputs: stop, or skip and report")
    b.add_argument("--limit", type=_build("limit"), default=None, help="build only the first N samples")
    b.set_defaults(func=commands.cmd_build)

    f = sub.add_parser("fetch", help="download/copy a dataset listed in data_manifest.json into the local cache, verified",
                       **fmt)
    f.add_argument("name", help="dataset name in data_manifest.json")
    f.add_argument("--manifest", default=None, help="data_manifest.json to read (default: the repository's)")
    f.add_argument("--cache", default=None, help="local cache folder (default: /content/eva_cache on Colab)")
    f.set_defaults(func=commands.cmd_fetch)

    s = sub.add_parser("stats", help="per-channel mean/std, foreground fraction, depth histogram -> stats.json", **fmt)
    s.add_argument("--data", required=True, help="dataset folder (holding manifest.json)")
    s.add_argument("--limit", type=int, default=None, help="only the first N samples (a 400k build takes minutes)")
    s.set_defaults(func=commands.cmd_stats)

    t = sub.add_parser("train", help="train (resumes from <run-dir>/checkpoints when present; works under torchrun)",
                       **fmt)
    t.add_argument("--task", choices=list(TASK_HEADS), required=True, help="what the model predicts")
    t.add_argument("--data", required=True, help="dataset folder (holding manifest.json)")
    t.add_argument("--run-dir", required=True, help="run folder: config, history, checkpoints, metrics (resumed if present)")
    t.add_argument("--model", default=TRAIN["model"], help="registry name, e.g. unet_small, resnet18_unet")
    t.add_argument("--stem", choices=["concat", "two"], default=None,
                   help="UNet input: one stem over cat(bg, fg_bg) (default) or a stem per image (--inputs concat only)")
    t.add_argument("--inputs", choices=["concat", "diff", "tolerant", "siamese"], default=None,
                   help="what the model sees: bg+fg_bg, plus |fg_bg - bg| (diff), plus a difference that tolerates 2 px "
                        "of shake (tolerant), or a shared two-stream encoder (None: the default)")
    t.add_argument("--mask-head", choices=["plain", "residual"], default=None,
                   help="plain head (None: the default, plain) or residual: the thresholded |fg_bg - bg| as a learned "
                        "prior the network corrects")
    t.add_argument("--second-shot", choices=SECOND_SHOTS, default=TRAIN["second_shot"],
                   help="train on pairs that look like two real photos: bg perturbed in tone, blur, noise and JPEG "
                        "(tone), plus hand shake and cast shadows (full); off: exact composites")
    t.add_argument("--init-from", metavar="RUN_DIR", default=None,
                   help="start from another run's weights (not its optimizer or schedule): a run of the same model "
                        "and inputs, at any size or on any dataset; a joint run may start from a mask-only or "
                        "depth-only one (the other head starts fresh)")
    t.add_argument("--force-takeover", action="store_true",
                   help="take the run folder over from another machine's lease at once, instead of watching its "
                        "heartbeat for 3 minutes (only when you know that machine is gone)")
    t.add_argument("--allow-cpu", action="store_true",
                   help="go on with a run a GPU trained on this machine's CPU (refused otherwise with --device auto: "
                        "a machine that came up without its GPU would train on at CPU speed)")
    t.add_argument("--init-which", choices=CHECKPOINT_CHOICES, default=TRAIN["init_which"],
                   help="which checkpoint of --init-from to start from")
    t.add_argument("--size-stages", nargs="+", type=_stage, default=None, metavar="SIZE:EPOCHS",
                   help="progressive resizing: train these stages first, e.g. 32:5 (5 epochs at 32 px), then the "
                        "remaining epochs at --size (validation and evaluation are always at --size)")
    t.add_argument("--epochs", type=_train("epochs"), default=TRAIN["epochs"],
                   help="epochs in all; more than a finished run had extends it (the schedule is re-timed)")
    t.add_argument("--batch-size", type=_train("batch_size"), default=TRAIN["batch_size"], help="samples per optimizer step (per process under torchrun)")
    t.add_argument("--size", type=_train("size"), default=TRAIN["size"], help="training resolution in pixels")
    t.add_argument("--seed", type=_train("seed"), default=TRAIN["seed"], help="seed of the model init, sample order and augmentation")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (None: the model family's recipe, 1e-2 for UNets, 1e-3 for ResNets)")
    t.add_argument("--schedule", choices=SCHEDULES, default=TRAIN["schedule"],
                   help="learning-rate schedule: OneCycle per batch, halve on a validation plateau, or constant")
    t.add_argument("--loss-weighting", choices=WEIGHTINGS, default=TRAIN["loss_weighting"],
                   help="joint task: fixed loss weights or learned uncertainty weighting")
    t.add_argument("--checkpoint-interval", type=float, default=TRAIN["checkpoint_interval_s"], help="seconds between mid-epoch checkpoints")
    t.add_argument("--max-steps", type=_train("max_steps"), default=None, help="stop after this many optimizer steps (smoke runs)")
    t.add_argument("--workers", type=_train("workers"), default=None, help="DataLoader workers (None: the loader's default)")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms: a resumed CPU run ends bit-identical to an uninterrupted one")
    t.add_argument("--pretrained", action="store_true", help="ImageNet weights for ResNet encoders (needs internet)")
    t.add_argument("--tensorboard", action="store_true", help="log to TensorBoard in the local cache")
    t.add_argument("--device", default=TRAIN["device"], help="auto | cpu | cuda | cuda:N")
    t.set_defaults(func=commands.cmd_train)

    e = sub.add_parser("eval", help="metrics.json (+ baseline) and a best/worst figure for a run folder",
                       formatter_class=_HelpNames)
    e.add_argument("--run-dir", required=True, help="a trained run folder")
    e.add_argument("--data", required=True, help="dataset folder the run was trained on (its held-out split is "
                   "scored); another dataset is scored whole as unseen data, with the run's own thresholds, into "
                   "metrics-data-<folder name>-<identity>.json (refused if it shares a background with the run's "
                   "training split)")
    e.add_argument("--split", default="test", choices=["train", "val", "test"], help="held-out split to score")
    e.add_argument("--which", default="best", choices=CHECKPOINT_CHOICES, help="checkpoint to score")
    e.add_argument("--perturb", default=None, metavar="NAME", action=_PerturbAction,
                   help="score the split as a real second shot would give it (fg_bg changed, thresholds still chosen "
                        "on clean validation) -> metrics-NAME.json; 'list' shows what each does. NAME: "
                        + _perturb_names())
    e.add_argument("--align", action="store_true",
                   help="register bg to fg_bg (and match its tone and JPEG compression) before the model and the "
                        "baseline see each pair, as predict does -> metrics-<NAME or clean>-aligned.json")
    e.add_argument("--photo-size", default=None, metavar="LARGER_DATASET",
                   help="score the split where users meet the model: the run's dataset built larger (the same "
                        "sources and settings, only --size changed), predicted as eva predict does (mask outline "
                        "from the photo), beside the baseline at that size -> metrics-photo-<SIZE>px.json")
    e.set_defaults(func=commands.cmd_eval)

    pr = sub.add_parser("predict", help="apply a trained run to your own (bg, fg_bg) photos, any size: one pair, "
                                        "two folders of pairs, or every frame of a fixed camera's clip", **fmt)
    pr.add_argument("--run-dir", required=True, help="a trained run folder")
    pr.add_argument("--bg", default=None, help="the background photo, without the object (or a folder of them; "
                                               "with --video: optional, else a plate estimated from the clip)")
    pr.add_argument("--fg-bg", default=None, help="the same photo with the object, same size (or a folder: "
                                                  "kitchen.png here pairs with kitchen.jpg in --bg)")
    pr.add_argument("--video", default=None, metavar="CLIP",
                    help="a fixed camera's clip (.mp4 .mov .avi .mkv) instead of --fg-bg: every frame predicted "
                         "against --bg or a background plate estimated from the clip -> masks.mkv (lossless), "
                         "depth.mkv, frames.csv, bg_plate.png, footage.json")
    pr.add_argument("--every", type=_frames(1), default=1, help="--video: every Nth frame")
    pr.add_argument("--start", type=_frames(0), default=0, help="--video: first frame index")
    pr.add_argument("--end", type=_frames(1), default=None, help="--video: stop before this frame index")
    pr.add_argument("--plate-window", type=_frames(1), default=None, metavar="FRAMES",
                    help="--video: a plate that follows changing light (a running median over this many frames)")
    pr.add_argument("--frames-png", action="store_true", help="--video: also frames/<index>_mask.png and _depth.png")
    pr.add_argument("--out", required=True, help="folder for mask.png, depth.png, alignment.json and prediction.png "
                                                 "(folders: <name>_mask.png, <name>_depth.png and alignment.csv)")
    pr.add_argument("--which", default="best", choices=CHECKPOINT_CHOICES, help="checkpoint to use")
    pr.add_argument("--no-align", action="store_true",
                    help="use bg as it is; otherwise bg is registered to fg_bg, its tone matched and, when fg_bg "
                         "was saved as a much coarser JPEG, saved again like it: each only when confident")
    pr.add_argument("--no-refine", action="store_true",
                    help="the model's mask resized to the photo; otherwise, on a photo larger than the model, the "
                         "mask's outline is decided by the photo's own pixels (sharp edges at full resolution)")
    pr.add_argument("--pair-by", default="name", metavar="name|order|PAIRS.csv",
                    help="folders: pair photos by file name, by order (a phone shoot: the first bg with the first "
                         "fg_bg, names sorted with numbers by value; equal counts needed) or by a CSV file of "
                         "bg,fg_bg[,name] lines (one bg may serve several fg_bg)")
    pr.add_argument("--batch-size", type=_predict_batch, default=16,
                    help="folders: pairs queued ahead for the 2 worker threads (the model still takes one pair at a "
                         "time, so each result equals the single-pair command's)")
    pr.set_defaults(func=commands.cmd_predict)

    d = sub.add_parser("demo", help="offline end-to-end run on the embedded sample -> report folder (resumes)", **fmt)
    d.add_argument("--out", default=DEMO["out"], help="folder for data, runs and the report")
    d.add_argument("--minutes", type=float, default=DEMO["minutes"],
                   help="rough time for the three trainings on 2 CPU cores; scales their epochs (the default: as planned)")
    d.add_argument("--seed", type=_train("seed"), default=DEMO["seed"], help="seed of the build and the trainings")
    d.set_defaults(func=commands.cmd_demo)
    return p
