"""DataLoader factory, seeded workers and `prepare_batch` (uint8 -> normalised float on the device, once).

What makes it fast on Colab's 2 vCPUs: workers collate whole batches (the default batch sampler runs in the worker),
images cross the worker boundary as uint8 tensors (with `compact=True` transforms also mask uint8 / depth float16),
each worker is single-threaded (torch and cv2 threads only contend with the other worker), and workers persist
across epochs (no re-fork, zip handles and decoded backgrounds stay warm).
"""
from __future__ import annotations

import functools
import os
import random
import signal
import sys
from typing import Any, Iterator, Sequence

import numpy as np

from eva_helpers.data.augment import resize_background
from eva_helpers.data.stats import load_stats  # noqa: F401  (re-exported: callers import it from here or from stats)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EpochAdvancingSampler:
    """The trainer's `ResumableSampler` for plain loops: each pass over the loader is the next epoch.

    Yields (position, sample_seed) keys, so the same seed gives the same samples and augmentations whatever
    num_workers is; `fit` uses `ResumableSampler` itself (it sets epochs and mid-epoch starts explicitly).
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True):
        from eva_helpers.data.sampler import ResumableSampler

        self.inner = ResumableSampler(n, seed=seed, shuffle=shuffle)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        keys = list(self.inner)
        self.inner.set_epoch(self.inner.epoch + 1)
        return iter(keys)


def _die_with_parent(parent_pid: int | None) -> None:
    """Make a worker exit with its main process (Linux): a SIGKILLed main (Colab disconnect, OOM) otherwise leaves
    orphans behind, because torch's watchdog misses a parent that died while the worker was still starting."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if parent_pid is not None and os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def worker_init_fn(worker_id: int, parent_pid: int | None = None) -> None:
    """Die with the main process; seed numpy/random from torch's per-worker seed; one thread per worker."""
    import torch

    _die_with_parent(parent_pid)
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors (or numpy arrays) per key; keep `meta` as a list of plain dicts.

    default_collate stacks straight into shared memory inside a worker, so the batch crosses to the main
    process without another copy (a plain torch.stack would be copied again when pickled).
    """
    from torch.utils.data import default_collate

    out: dict[str, Any] = {"meta": [it.get("meta", {}) for it in items]}
    for k in items[0]:
        if k != "meta":
            out[k] = default_collate([it[k] for it in items])
    return out


def make_loader(dataset, batch_size: int, *, sampler=None, shuffle: bool = False, num_workers: int | None = None,
                seed: int = 0, drop_last: bool = False, prefetch_factor: int | None = None):
    """A DataLoader that collates in the workers and gives every sample a recorded augmentation seed.

    With no `sampler`, an `EpochAdvancingSampler(len(dataset), seed, shuffle)` yields (position, sample_seed) keys.
    """
    import torch
    from torch.utils.data import DataLoader

    if num_workers is None:
        num_workers = min(2, os.cpu_count() or 1)
    if sampler is None:
        sampler = EpochAdvancingSampler(len(dataset), seed=seed, shuffle=shuffle)
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    kw: dict[str, Any] = {}
    if num_workers > 0:
        kw.update(persistent_workers=True, worker_init_fn=functools.partial(worker_init_fn, parent_pid=os.getpid()),
                  prefetch_factor=prefetch_factor or 2)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=collate,
                      drop_last=drop_last, pin_memory=torch.cuda.is_available(), generator=gen, **kw)


class BackgroundBank:
    """The dataset's prepared backgrounds as (3, size, size) uint8 tensors on the device, each decoded once.

    Thousands of training samples share a background (100 backgrounds for 400k composites): the training loader's
    workers ship each sample's bg_id instead of its background (150 KB at 224 px, a third of a sample's bytes through
    shared memory), and `prepare_batch` gathers the backgrounds here."""

    def __init__(self, dataset: Any, size: int):
        self.dataset, self.size, self._rows, self._device = dataset, int(size), {}, None

    def __call__(self, metas: Sequence[dict], device) -> Any:
        """(B, 3, size, size) uint8 on `device` for the batch's meta dicts."""
        import torch

        device, rows = torch.device(device), []
        if device != self._device:  # compare the device asked for, not tensor.device ("cuda" vs "cuda:0")
            self._rows, self._device = {}, device
        for m in metas:
            key = str(m["bg_id"])
            t = self._rows.get(key)
            if t is None:
                img = resize_background(self.dataset.background(key), self.size)
                img = np.array(img)  # a copy: the dataset's cache is read-only
                t = self._rows[key] = torch.from_numpy(img).permute(2, 0, 1).to(device)
            rows.append(t)
        return torch.stack(rows)


def _stats_tensors(stats: dict | None, device, dtype):
    """(mean, std) of shape (1, 6, 1, 1) on 0-1 scale for cat(bg, fg_bg)."""
    import torch

    if stats is None:
        m, s = list(IMAGENET_MEAN) * 2, list(IMAGENET_STD) * 2
    else:
        m = list(stats["bg"]["mean"]) + list(stats["fg_bg"]["mean"])
        s = list(stats["bg"]["std"]) + list(stats["fg_bg"]["std"])
    mean = torch.tensor(m, device=device, dtype=dtype).view(1, 6, 1, 1)
    std = torch.tensor(s, device=device, dtype=dtype).view(1, 6, 1, 1)
    return mean, std


def prepare_batch(batch: dict[str, Any], device, stats: dict | None = None, channels_last: bool = False,
                  augment: Any = None, gen: Any = None, backgrounds: BackgroundBank | None = None
                  ) -> tuple[Any, dict[str, Any]]:
    """Batch from the loader -> (x (B, 10, H, W) float32, {"mask", "depth"} (B, 1, H, W) float32).

    x = cat(bg, fg_bg, |fg_bg - bg|, shift-tolerant difference) (models/inputs.py): the images normalised here and
    only here, with the dataset's stats (ImageNet's
    when stats is None), and their per-channel absolute difference computed from the raw uint8 pixels *before*
    normalisation (exact: no stats can blur it), in ImageNet std units (models/inputs.py). Each model reads the slice
    its input representation needs. Targets are never normalised: mask stays {0, 1}, depth stays [0, 1].
    `augment` (a `batch_augment.BatchAugment`, training only) transforms the images and targets first, drawing from
    `gen`; its images stay whole numbers on 0..255, so the difference stays exact. A batch without "bg" takes its
    backgrounds from `backgrounds` by the samples' bg_id.
    """
    import torch

    from eva_helpers.models.inputs import DIFF_SCALE, X_CHANNELS, shift_tolerant_difference

    nb = torch.device(device).type == "cuda"
    if "bg" in batch:
        bg = batch["bg"].to(device, non_blocking=nb)  # (B, 3, H, W) uint8: 4x less to move than float
    elif backgrounds is not None:
        bg = backgrounds(batch["meta"], device)
    else:
        raise ValueError("this batch carries no bg: pass the dataset's BackgroundBank as `backgrounds`")
    fg = batch["fg_bg"].to(device, non_blocking=nb)
    targets = {}
    for k in ("mask", "depth"):
        if k in batch:
            targets[k] = batch[k].to(device, non_blocking=nb).float()  # (B, 1, H, W) float32
    bg, fg = bg.float(), fg.float()  # (B, 3, H, W) on 0..255: whole numbers, so every sum below is exact
    if augment is not None:
        bg, fg, targets = augment(bg, fg, targets, gen)
    b, _, h, w = bg.shape
    # filled in the default layout and converted once: per-channel slices of a channels_last tensor are strided, and
    # writing them was 4x slower on the CPU than this whole step
    x = torch.empty((b, X_CHANNELS, h, w), dtype=torch.float32, device=bg.device)
    x[:, :3], x[:, 3:6] = bg, fg
    torch.sub(fg, bg, out=x[:, 6:9])
    x[:, 6:9].abs_().mul_(DIFF_SCALE / 255.0)  # (B, 3, H, W) |fg_bg - bg| in [0, 1], then in ImageNet std units
    x[:, 9:10] = shift_tolerant_difference(fg, bg).mul_(DIFF_SCALE / (3 * 255.0))  # (B, 1, H, W), same units
    mean, std = _stats_tensors(stats, x.device, x.dtype)
    x[:, :6].mul_(1.0 / (255.0 * std)).sub_(mean / std)  # (x / 255 - mean) / std, in place
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, targets
