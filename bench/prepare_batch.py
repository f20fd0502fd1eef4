"""The training loop's batch preparation alone on the CPU: a loader's batch -> the model's (B, 10, H, W) input, with and without the training
augmentation (second shot included), channels_last as training asks. Best of --repeats calls, in ms per batch.

    python bench/prepare_batch.py                              # this checkout's code (as installed)
    PYTHONPATH=/path/to/other/checkout python bench/prepare_batch.py   # another version of the package, to compare

The script does not put its own checkout on sys.path, so PYTHONPATH selects the code; run both in one sitting,
alternating, on a quiet machine. Random images: the work does not depend on the content.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import eva_helpers
from eva_helpers.training.batch_augment import BatchAugment
from eva_helpers.training.config import TrainConfig


def training_input(batch, augment, gen):
    """The loop's batch preparation: onto the device, augmented, the model's input (channels_last, no stats)."""
    try:
        from eva_helpers.data.loaders import batch_to_device
        from eva_helpers.models.inputs import model_input
    except ImportError:  # a version before the trainer: one function did all three
        from eva_helpers.data.loaders import prepare_batch
        return prepare_batch(batch, "cpu", None, True, augment, gen)[0]
    bg, fg_bg, targets = batch_to_device(batch, "cpu")
    if augment is not None:
        bg, fg_bg, targets = augment(bg, fg_bg, targets, gen)
    return model_input(bg, fg_bg, None, channels_last=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    augment = BatchAugment.from_config(TrainConfig(task="joint", size=64))  # the default recipe's augmentation
    rows = []
    for size, batch in ((64, 32), (224, 64)):
        gen = torch.Generator().manual_seed(0)
        b = {"bg": torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen),
             "fg_bg": torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen),
             "mask": (torch.rand(batch, 1, size, size, generator=gen) > 0.7).to(torch.uint8),
             "depth": torch.rand(batch, 1, size, size, generator=gen)}
        for aug in (None, augment):
            best = float("inf")
            for _ in range(args.repeats):
                g = torch.Generator().manual_seed(1)
                t0 = time.perf_counter()
                training_input(b, aug, g)
                best = min(best, time.perf_counter() - t0)
            rows.append({"size": size, "batch": batch, "augment": aug is not None, "ms": round(best * 1000, 1)})
    print(json.dumps({"package": eva_helpers.__file__, "threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()
