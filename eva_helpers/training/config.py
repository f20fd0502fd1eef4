"""`TrainConfig`: every training setting in one typed dataclass (notebooks override fields, the CLI builds it from flags).

`to_dict()` is written to `config.json` in the run folder and into every checkpoint, with the dataset's path made
absolute (a relative one would only resolve from the folder the run was started in; run_folder.resolve_data reads older
relative ones); `from_dict` refuses unknown keys so a typo in a notebook cell or an old config file is reported instead
of silently ignored.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, fields
from typing import Any

from eva_helpers.errors import EvaError
from eva_helpers.paths import same_path

TASK_HEADS = {"mask": ("mask",), "depth": ("depth",), "joint": ("mask", "depth")}
SCHEDULES = ("onecycle", "plateau", "none")
WEIGHTINGS = ("fixed", "uncertainty")
SPLIT_BY = ("bg", "fg", "bg+fg")
CHECKPOINT_CHOICES = ("best", "last")  # which checkpoint of a run is loaded (run_folder.load_run)
SECOND_SHOTS = ("off", "tone", "full")  # second_shot.PRESETS: how much a training pair looks like two real photos
# What a config written before a field existed trained with: an old run folder resumes (and is described) as it was.
LEGACY_VALUES: dict[str, Any] = {"second_shot": "off", "second_shot_opts": {}, "init_from": None, "init_which": "best",
                                 "size_stages": None}
DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

# Every count and size a user types, (lowest, highest, why the highest): TrainConfig checks its fields against this
# table and the CLI's flags use it too (cli/parser.py), so a value no model or machine can use is refused in one line
# before a run folder is created. A size must also be a multiple of the model's divisor (fit._preflight).
BOUNDS: dict[str, tuple[int, int, str]] = {
    "size": (8, 2048, "at 2048 px one unet_small sample's activations take about 6 GB; predict's refiner, not a "
                      "larger model, answers at a photo's full size"),
    "epochs": (1, 10_000, "history, schedule and checkpoints count epochs; 10000 is far past convergence"),
    "batch_size": (1, 4096, "samples per optimizer step; the learning-rate recipe, tuned at 32, does not carry over to "
                            "100x that"),
    "seed": (0, 2**32 - 1, "numpy's and the DataLoader workers' seeds are 32-bit; torch.manual_seed fails past 64 bits"),
    "split_seed": (0, 2**32 - 1, "a 32-bit seed, like seed"),
    "keep_last": (1, 100, "each checkpoint holds the model and its optimizer; 100 of them fill a disk"),
    "workers": (0, 64, "DataLoader processes; more only compete for the same cores, each with its own reader"),
    "max_steps": (1, 10**9, "a stop after 10^9 optimizer steps never comes"),
}
NONE_MEANS = {"split_seed": "seed", "workers": "the loader's default", "max_steps": "no limit"}  # fields None may take
# unet_small keeps about 350 floats per pixel for the backward pass: 2^27 pixels in one step are about 190 GB in fp32
# (95 GB in bf16), more than any one GPU holds
MAX_BATCH_PIXELS = 2**27


def bound_problem(name: str, value: Any, label: str | None = None) -> str | None:
    """Why `value` is out of BOUNDS[name] (one line naming `label`, default `name`, the value and the range); None when
    it is within, or None for a field that may be None."""
    lo, hi, why = BOUNDS[name]
    if value is None and name in NONE_MEANS:
        return None
    if _int(value) and lo <= value <= hi:
        return None
    none = f", or None ({NONE_MEANS[name]})" if name in NONE_MEANS else ""
    reason = f" ({why})" if _int(value) and value > hi else ""
    return f"{label or name}={value!r} is not valid: give a whole number from {lo} to {hi}{none}{reason}"


def parse_stages(text: str, source: str = "SIZE_STAGES") -> list[list[int]]:
    """ "32:5 48:2" (or "32:5,48:2") -> [[32, 5], [48, 2]]: size_stages as a person writes them, each size and epoch
    count within BOUNDS; anything else is one line naming `source` (the flag or the notebook parameter)."""
    out = []
    for part in text.replace(",", " ").split():
        size, sep, epochs = part.partition(":")
        if not (sep and size.isdigit() and epochs.isdigit()):
            raise EvaError(f"{source} {text!r}: write SIZE:EPOCHS stages separated by spaces, e.g. \"32:5\"")
        why = (bound_problem("size", int(size), "size_stages size")
               or bound_problem("epochs", int(epochs), "size_stages epochs"))
        if why:
            raise EvaError(f"{source} {part!r}: {why}")
        out.append([int(size), int(epochs)])
    return out


# Peak learning rate (OneCycle, AdamW, batch 32) per model family. UNets train from scratch with BatchNorm: 1e-2 won
# the sweep in bench/quality.py (bench/RESULTS.md). ResNet encoders start from ImageNet weights that a 1e-2 step would
# scramble: 1e-3, the torchvision fine-tuning default, not yet measured here (needs a GPU at 224 px).
RECIPE_LR = {"unet": 1e-2, "resnet": 1e-3}


def recipe_lr(model: str) -> float:
    """The peak learning rate new runs of `model` get when TrainConfig.lr is not given."""
    return RECIPE_LR["resnet" if model.startswith("resnet") else "unet"]


# Fields that may differ when a run folder is resumed: where things live, how often we save, how we show progress,
# and when to stop early. Every other field changes the numbers, so a resume with a different value is refused.
RESUMABLE_FIELDS = frozenset({
    "data", "run_dir", "workers", "checkpoint_interval_s", "keep_last", "tensorboard", "live_plot", "progress",
    "device", "max_steps", "compile",
})


@dataclass
class TrainConfig:
    """Settings of one training run; defaults are the Colab GPU defaults."""

    task: str = "mask"  # "mask" | "depth" | "joint"
    data: str | None = None  # dataset folder (manifest.json + shards/)
    run_dir: str | None = None  # run folder (on Drive in Colab): config.json, history.jsonl, checkpoints/
    model: str = "unet_small"
    model_kwargs: dict = dataclasses.field(default_factory=dict)  # registry options, e.g. {"stem": "two"}
    epochs: int = 10
    batch_size: int = 32
    size: int = 224
    lr: float | None = None  # peak learning rate; None = the model family's recipe (RECIPE_LR)
    weight_decay: float = 1e-4
    schedule: str = "onecycle"  # "onecycle" (per batch) | "plateau" (per epoch on val loss) | "none"
    seed: int = 0
    workers: int | None = None  # DataLoader workers; None = make_loader's default
    amp: bool = True  # CUDA only: bf16 where supported, else fp16 + GradScaler
    channels_last: bool = True
    compile: bool = False
    grad_clip: float | None = 1.0
    checkpoint_interval_s: float = 300.0
    keep_last: int = 3
    loss_weighting: str = "fixed"  # "fixed" | "uncertainty" (joint task: learned weights)
    # overrides of losses.DEFAULT_WEIGHTS; depth x2 keeps depth RMSE low when training on second shots
    # (bench/RESULTS.md, 3 seeds each)
    loss_weights: dict = dataclasses.field(default_factory=lambda: {"depth": 2.0})
    split_by: str = "bg"
    split_seed: int | None = None  # seed of the held-out split; None = `seed` (bench/quality.py varies seed, not split)
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    independent_jitter: bool = False
    # training crops, area range [lo, hi] ([1, 1]: none, flips and colour only): the geometric teacher's horizon sits at
    # a fixed row that a crop moves, and resampled edges differ from the test images' (bench/quality.py: 0.6 vs 1)
    crop_scale: list = dataclasses.field(default_factory=lambda: [1.0, 1.0])
    # the bg of each training pair perturbed as another shot of the scene would be (second_shot.py): "off" | "tone"
    # (exposure, gamma, white balance, blur, noise, JPEG) | "full" (+ hand shake and cast shadows); options override
    # the preset's SecondShot fields, e.g. {"shift": 2.0}
    second_shot: str = "full"
    second_shot_opts: dict = dataclasses.field(default_factory=dict)
    # start from another run's weights (warm_start.py): its folder, and which checkpoint ("best" | "last"); only the
    # tensors that fit load (a joint run from a mask-only one: the depth head starts fresh)
    init_from: str | None = None
    init_which: str = "best"
    # progressive resizing: [[size, epochs], ...] trained first, in order; the remaining epochs train at `size` (which
    # validation and evaluation always use), e.g. [[32, 5]] with size 64 and 15 epochs: 5 at 32 px, then 10 at 64 px
    size_stages: list | None = None
    max_steps: int | None = None  # stop after this many optimizer steps in total (smoke runs); a checkpoint is saved
    deterministic: bool = False  # torch.use_deterministic_algorithms(True): bit-identical resume on CPU
    tensorboard: bool = False
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" ...
    pretrained: bool = False
    live_plot: bool = False  # notebooks set True
    progress: bool = True

    def __post_init__(self) -> None:
        """Every value range-checked here, before `fit` creates or claims a run folder."""
        if self.lr is None:
            self.lr = recipe_lr(self.model)
        if not (_number(self.lr) and 0 < self.lr < 1):
            raise EvaError(f"lr={self.lr!r} is not valid: give a peak learning rate in (0, 1), e.g. 1e-3")
        for name in BOUNDS:
            problem = bound_problem(name, getattr(self, name))
            if problem:
                raise EvaError(problem)
        if not (_number(self.checkpoint_interval_s) and self.checkpoint_interval_s >= 0):
            raise EvaError(f"checkpoint_interval_s={self.checkpoint_interval_s!r} is not valid: give seconds >= 0, "
                           "e.g. 300 (0: after every step)")
        if not (_number(self.weight_decay) and 0 <= self.weight_decay < 1):
            raise EvaError(f"weight_decay={self.weight_decay!r} is not valid: give a number in [0, 1), e.g. 1e-4")
        if self.grad_clip is not None and not (_number(self.grad_clip) and self.grad_clip > 0):
            raise EvaError(f"grad_clip={self.grad_clip!r} is not valid: give a norm > 0, or None for no clipping")
        if not (isinstance(self.device, str) and DEVICE_RE.fullmatch(self.device)):
            raise EvaError(f"device={self.device!r} is not valid: give auto, cpu, mps, cuda or cuda:N")
        if self.split_by not in SPLIT_BY:
            raise EvaError(f"split_by={self.split_by!r} is not one of {list(SPLIT_BY)}")
        self.crop_scale = [float(v) for v in self.crop_scale]  # a list, as config.json gives it back
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise EvaError(f"crop_scale={self.crop_scale} is not valid: give [lo, hi] with 0 < lo <= hi <= 1")
        if self.second_shot not in SECOND_SHOTS:
            raise EvaError(f"second_shot={self.second_shot!r} is not one of {list(SECOND_SHOTS)}")
        if not isinstance(self.second_shot_opts, dict):
            raise EvaError(f"second_shot_opts={self.second_shot_opts!r} is not valid: give a dict, e.g. {{'shift': 2.0}}")
        if self.init_from is not None and not (isinstance(self.init_from, str) and self.init_from.strip()):
            raise EvaError(f"init_from={self.init_from!r} is not valid: give a trained run folder, or None")
        if self.init_which not in CHECKPOINT_CHOICES:
            raise EvaError(f"init_which={self.init_which!r} is not one of {list(CHECKPOINT_CHOICES)}")
        if self.size_stages is not None:
            ok = isinstance(self.size_stages, (list, tuple)) and all(
                isinstance(st, (list, tuple)) and len(st) == 2 and _int(st[0]) and st[0] >= 8 and _int(st[1])
                and st[1] >= 1 for st in self.size_stages)
            for size, _ in self.size_stages if ok else ():
                problem = bound_problem("size", size, "size_stages size")
                if problem:
                    raise EvaError(problem)
            if not ok or sum(int(st[1]) for st in self.size_stages) >= self.epochs:
                raise EvaError(f"size_stages={self.size_stages!r} is not valid: give [[size, epochs], ...] (sizes >= 8, "
                               f"epochs >= 1) with fewer epochs in all than epochs={self.epochs} (the rest train at "
                               f"size={self.size}), or None")
            self.size_stages = [[int(a), int(b)] for a, b in self.size_stages]  # lists, as config.json gives back
        largest = max([self.size] + [st[0] for st in self.size_stages or []])
        if self.batch_size * largest**2 > MAX_BATCH_PIXELS:
            raise EvaError(f"batch_size={self.batch_size} at size={largest} is {self.batch_size * largest**2:,} pixels "
                           f"per step, more than {MAX_BATCH_PIXELS:,} (the activations would not fit any GPU): lower "
                           "batch_size or size")
        if self.task not in TASK_HEADS:
            raise EvaError(f"task={self.task!r} is not one of {sorted(TASK_HEADS)}")
        if self.schedule not in SCHEDULES:
            raise EvaError(f"schedule={self.schedule!r} is not one of {list(SCHEDULES)}")
        if self.loss_weighting not in WEIGHTINGS:
            raise EvaError(f"loss_weighting={self.loss_weighting!r} is not one of {list(WEIGHTINGS)}")
        if not (_number(self.val_fraction) and _number(self.test_fraction) and 0 <= self.val_fraction < 1
                and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise EvaError(f"val_fraction + test_fraction must be in [0, 1) (got {self.val_fraction}, {self.test_fraction})")

    def stage_at(self, epoch: int) -> tuple[int, int]:
        """(stage number, training size) of a 0-based epoch: the size_stages in order, then `size`."""
        end = 0
        for i, (size, epochs) in enumerate(self.size_stages or []):
            end += epochs
            if epoch < end:
                return i, size
        return len(self.size_stages or []), self.size

    @property
    def effective_split_seed(self) -> int:
        """The seed that picks the held-out backgrounds."""
        return self.seed if self.split_seed is None else int(self.split_seed)

    def splits(self, data: Any = None) -> dict:
        """The run's train/val/test split of `data` (default: its own dataset), by split_by, the fractions and the
        split seed: the one definition training, evaluation and the notebooks use."""
        from eva_helpers.data.dataset import make_splits

        fractions = (1.0 - self.val_fraction - self.test_fraction, self.val_fraction, self.test_fraction)
        return make_splits(str(data or self.data), by=self.split_by, fractions=fractions, seed=self.effective_split_seed)

    @property
    def tasks(self) -> tuple[str, ...]:
        """The model outputs this run trains: ("mask",), ("depth",) or ("mask", "depth")."""
        return TASK_HEADS[self.task]

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain values, `data` absolute: what config.json and checkpoints record."""
        d = dataclasses.asdict(self)
        if isinstance(d.get("data"), str) and d["data"]:
            d["data"] = os.path.abspath(os.path.expanduser(d["data"]))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "config") -> "TrainConfig":
        """Build from a plain dict (config.json, a checkpoint); unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise EvaError(f"{source}: unknown TrainConfig field(s) {unknown}; valid fields: {sorted(known)}")
        return cls(**{**{k: v for k, v in LEGACY_VALUES.items() if k not in d}, **d})


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def result_changing_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Names of fields whose values differ between two config dicts and that would change the trained weights.

    More `epochs` than before is not one of them: that extends the run (`fit` re-times the schedule and
    records the extension); fewer epochs is (a run cannot be shortened).
    """
    keys = (set(old) | set(new)) - RESUMABLE_FIELDS
    old = {**LEGACY_VALUES, **old}  # a config from before a field existed trained with its legacy value
    return sorted(k for k in keys
                  if not _same(k, old.get(k), new.get(k)) and not (k == "epochs" and is_extension(old, new)))


def _same(key: str, a: Any, b: Any) -> bool:
    """Equal values; `init_from` compared as the folder it names (`src`, `./src` and its absolute path are one run)."""
    if key == "init_from" and isinstance(a, str) and isinstance(b, str):
        return same_path(a, b)
    return a == b


def is_extension(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """True when `new` trains the same run for more epochs than `old`."""
    try:
        return int(new["epochs"]) > int(old["epochs"])
    except (KeyError, TypeError, ValueError):
        return False
