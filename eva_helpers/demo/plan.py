"""What `eva demo` will do and about how long each part takes on this machine: the schedule's runs, the plan printed
at the start (a training step timed on the spot, as the notebooks' estimates are) and a line per part as it runs."""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from eva_helpers.compositing.cost import BUILD_RATE, count_composites
from eva_helpers.estimate import duration_text
from eva_helpers.paths import sample_assets
from eva_helpers.training.cost import time_steps

PHOTO_SCALE = 4  # the report's photos larger than the model: 4x (256 px for the 64 px models)
FOOTAGE_FRAMES = 60  # the report's clip: a few seconds of a fixed camera at 320x240


@dataclass(frozen=True)
class DemoRun:
    """One of the demo's trainings: its task, epochs, the progressive-resizing stages trained first ((size, epochs),
    then the demo's size) and the task of the earlier demo run whose best.pt it starts from."""

    task: str
    epochs: int
    size_stages: tuple = ()
    start_from: str | None = None
    model: str = "unet_small"

    @property
    def name(self) -> str:
        return f"{self.task}-{self.model}"

    def scaled(self, factor: float) -> "DemoRun":
        """The same schedule with every epoch count times `factor` (at least 1 each, stages shorter than the run)."""
        stages = tuple((size, max(1, round(n * factor))) for size, n in self.size_stages)
        epochs = max(1, round(self.epochs * factor), sum(n for _, n in stages) + 1 if stages else 1)
        return dataclasses.replace(self, epochs=epochs, size_stages=stages)


# The joint model first, at 32 px then 64 (progressive resizing: 24 epochs in about the time of 15 at 64 px), then the
# mask and depth models fine-tuned from its best.pt (bench/RESULTS.md, "The demo", issue 32): the same three models as
# three trainings from scratch, in about half the time.
DEMO_RUNS = (DemoRun("joint", 24, ((32, 12),)), DemoRun("mask", 3, start_from="joint"),
             DemoRun("depth", 3, start_from="joint"))


def describe(run: DemoRun, size: int) -> str:
    """`mask model: 8 epochs at 32 px, then 7 at 64 px, from scratch` and the like."""
    parts = [f"{n} epoch{'s' * (n != 1)} at {px} px" for px, n in run.size_stages]
    rest = run.epochs - sum(n for _, n in run.size_stages)
    parts.append(f"{'then ' if parts else ''}{rest}{'' if parts else ' epoch' + 's' * (rest != 1)} at {size} px")
    start = f"from the {run.start_from} model's best.pt" if run.start_from else "from scratch"
    return f"{run.task} model: {', '.join(parts)}, {start}"


# from what the demo took on 2 CPU cores (bench/RESULTS.md): a real training step (loading, augmentation, AdamW, each
# epoch's loader start) against the probe's plain step; the photo-size part (its 4x build included) per pair
STEP_OVERHEAD = 1.4
PHOTO_S_PER_PAIR = 0.065
FOOTAGE_S = 5.0


def plan(cfg: Any, probe: Any, finished: Callable[[DemoRun], bool]) -> list[tuple[str, float | None]]:
    """(what, seconds) per part of the demo (cfg: demo.DemoConfig), seconds from a step of `probe` (a TrainConfig)
    timed now at each of the schedule's sizes (training/cost.time_steps); None: a run `finished` before (reused)."""
    assets = sample_assets()
    n = count_composites(assets / "bg", assets / "fg", cfg.positions, True)[0]
    n_val, n_test = n * cfg.val_fraction, n * cfg.test_fraction
    steps, val_batches = math.ceil((n - n_val - n_test) / cfg.batch_size), math.ceil(n_val / cfg.batch_size)
    sizes = {cfg.size, *(px for r in cfg.runs for px, _ in r.size_stages)}
    cost = {px: time_steps(dataclasses.replace(probe, size=px), cfg.batch_size) for px in sorted(sizes)}
    fwd = cost[cfg.size][1]
    parts: list[tuple[str, float | None]] = [(f"build the sample ({n:,} composites at {cfg.size} px) and its stats",
                                              2 * n / BUILD_RATE)]  # the build, then a pass for the stats
    for run in cfg.runs:
        epochs = [*(st for st in run.size_stages), (cfg.size, run.epochs - sum(e for _, e in run.size_stages))]
        train = sum(e * steps * cost[px][0] for px, e in epochs) * STEP_OVERHEAD + run.epochs * val_batches * fwd
        score = (n_val + n_test) / cfg.batch_size * fwd * 2  # calibration on val, then test with the baselines
        parts.append((describe(run, cfg.size) + "; then scored on the held-out backgrounds",
                      None if finished(run) else train + score))
    parts.append((f"score on photos {PHOTO_SCALE}x the model's size beside the baseline, and on a clip of "
                  f"{FOOTAGE_FRAMES} frames; write the report", n_test * PHOTO_S_PER_PAIR + FOOTAGE_S))
    return parts


def print_plan(parts: list[tuple[str, float | None]]) -> None:
    total = sum(s or 0.0 for _, s in parts)
    print(f"eva demo: {len(parts)} parts, about {duration_text(total)} on this machine (a model step timed just now; "
          "rough estimates)", flush=True)
    for i, (what, secs) in enumerate(parts, 1):
        print(f"  {i}. {what}: {'finished before, reused' if secs is None else 'about ' + duration_text(secs)}", flush=True)


class Progress:
    """`[i/n] what` at the start of each part and `[i/n] done in X (estimated Y)` at its end."""

    def __init__(self, parts: list[tuple[str, float | None]]):
        self.parts, self.i, self.t0, self.start = parts, 0, 0.0, time.perf_counter()

    def __enter__(self) -> "Progress":
        self.i += 1
        self.t0 = time.perf_counter()
        print(f"[{self.i}/{len(self.parts)}] {self.parts[self.i - 1][0]}", flush=True)
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            took, est = time.perf_counter() - self.t0, self.parts[self.i - 1][1]
            print(f"[{self.i}/{len(self.parts)}] done in {took:.0f} s"
                  + (f" (estimated {duration_text(est)})" if est is not None else ""), flush=True)
