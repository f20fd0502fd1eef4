"""The range of every count and size a build takes, in one table: `eva build`'s flags (cli/parser.py), notebook 01's
parameters (colab/notebook.py) and `build_dataset` check against it before anything is read, written or estimated.

build.check_build_options holds the choices (mode, teacher, on_bad) and the scale range.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from eva_helpers.errors import EvaError

# name: (lowest, highest, why the highest)
BUILD_BOUNDS: dict[str, tuple[int, int, str]] = {
    "size": (8, 4096, "the composites' side; models train at up to 2048 px, eval --photo-size scores larger builds"),
    "positions": (1, 10_000, "placements per (bg, fg, flip); 400k composites from the shipped sample take 1042"),
    "seed": (0, 2**32 - 1, "a 32-bit seed, the range training's seed takes, so one seed can drive both"),
    "shard_size": (1, 10_000, "each worker builds a shard whole in memory: 10000 composites at 224 px are about 0.6 GB"),
    "jpeg_quality": (1, 100, "JPEG's quality scale"),
    "workers": (1, 64, "build processes; more only compete for the same cores, each holding a shard in memory"),
    "limit": (1, 10**9, "2500x the 400k-sample target build"),
    "teacher_input_size": (8, 4096, "Depth Anything V2 is made for 518 px, MiDaS small for 256"),
}
NONE_MEANS = {"workers": "one per CPU", "limit": "all samples", "teacher_input_size": "the teacher's own"}


def _int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def bound_problem(name: str, value: Any) -> str | None:
    """Why `value` is out of BUILD_BOUNDS[name], in one line naming it, the value and the range; None when within."""
    lo, hi, why = BUILD_BOUNDS[name]
    if (value is None and name in NONE_MEANS) or (_int(value) and lo <= value <= hi):
        return None
    none = f", or none ({NONE_MEANS[name]})" if name in NONE_MEANS else ""
    reason = f" ({why})" if _int(value) and value > hi else ""
    return f"{name}={value!r}: give a whole number from {lo} to {hi}{none}{reason}"


def check_build_bounds(**values: Any) -> None:
    """Each keyword (a BUILD_BOUNDS name) within its range, else EvaError in one line: before a build or its estimate
    reads, allocates or writes anything."""
    for name, value in values.items():
        problem = bound_problem(name, value)
        if problem:
            raise EvaError(f"build option {problem}")
