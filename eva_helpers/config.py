"""`TrainConfig`: every training setting in one typed dataclass (notebooks override fields, the CLI builds it from flags).

`asdict(cfg)` is written to `config.json` in the run folder and into every checkpoint; `from_dict` refuses unknown
keys so a typo in a notebook cell or an old config file is reported instead of silently ignored.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from .errors import EvaError

TASKS = {"mask": ("mask",), "depth": ("depth",), "joint": ("mask", "depth")}
SCHEDULES = ("onecycle", "plateau", "none")
WEIGHTINGS = ("fixed", "uncertainty")

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
    lr: float = 1e-3
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
    split_by: str = "bg"
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    independent_jitter: bool = False
    max_steps: int | None = None  # stop after this many optimizer steps in total (smoke runs); a checkpoint is saved
    deterministic: bool = False  # torch.use_deterministic_algorithms(True): bit-identical resume on CPU
    tensorboard: bool = False
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" ...
    pretrained: bool = False
    live_plot: bool = False  # notebooks set True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise EvaError(f"task={self.task!r} is not one of {sorted(TASKS)}")
        if self.schedule not in SCHEDULES:
            raise EvaError(f"schedule={self.schedule!r} is not one of {list(SCHEDULES)}")
        if self.loss_weighting not in WEIGHTINGS:
            raise EvaError(f"loss_weighting={self.loss_weighting!r} is not one of {list(WEIGHTINGS)}")
        if self.epochs < 1 or self.batch_size < 1 or self.size < 1:
            raise EvaError(f"epochs, batch_size and size must be >= 1 (got {self.epochs}, {self.batch_size}, {self.size})")
        if self.max_steps is not None and self.max_steps < 1:
            raise EvaError(f"max_steps must be >= 1 or None (got {self.max_steps})")
        if not 0 <= self.val_fraction < 1 or not 0 <= self.test_fraction < 1 or self.val_fraction + self.test_fraction >= 1:
            raise EvaError(f"val_fraction + test_fraction must be in [0, 1) (got {self.val_fraction}, {self.test_fraction})")

    @property
    def tasks(self) -> tuple[str, ...]:
        """The model outputs this run trains: ("mask",), ("depth",) or ("mask", "depth")."""
        return TASKS[self.task]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "config") -> "TrainConfig":
        """Build from a plain dict (config.json, a checkpoint); unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise EvaError(f"{source}: unknown TrainConfig field(s) {unknown}; valid fields: {sorted(known)}")
        return cls(**d)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def result_changing_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Names of fields whose values differ between two config dicts and that would change the trained weights."""
    keys = (set(old) | set(new)) - RESUMABLE_FIELDS
    return sorted(k for k in keys if old.get(k) != new.get(k))
