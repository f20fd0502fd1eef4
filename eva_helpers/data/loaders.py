"""DataLoader factory, seeded workers, and a batch onto the device (`batch_to_device`).

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

from eva_helpers.data.resize import resize_background
from eva_helpers.data.stats import load_stats  # noqa: F401  (re-exported: callers import it from here or from stats)


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
    shared memory), and `batch_to_device` gathers the backgrounds here."""

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


def batch_to_device(batch: dict[str, Any], device, backgrounds: BackgroundBank | None = None) -> tuple[Any, Any, dict]:
    """A loader's batch on `device`: (bg, fg_bg) (B, 3, H, W) float32 on 0..255 (whole numbers, so the differences
    `models.inputs.model_input` takes are exact) and the targets {"mask", "depth"} (B, 1, H, W) float32, never
    normalised. A batch without "bg" takes its backgrounds from `backgrounds` by the samples' bg_id."""
    import torch

    nb = torch.device(device).type == "cuda"
    if "bg" in batch:
        bg = batch["bg"].to(device, non_blocking=nb)  # (B, 3, H, W) uint8: 4x less to move than float
    elif backgrounds is not None:
        bg = backgrounds(batch["meta"], device)
    else:
        raise ValueError("this batch carries no bg: pass the dataset's BackgroundBank as `backgrounds`")
    fg = batch["fg_bg"].to(device, non_blocking=nb)
    targets = {k: batch[k].to(device, non_blocking=nb).float() for k in ("mask", "depth") if k in batch}
    return bg.float(), fg.float(), targets


def seeded_loader(dataset: Any, batch_size: int, *, sampler: Any, workers: int | None, seed: int):
    """`make_loader` in `sampler`'s order that never draws from the global RNG (training's resume stays exact)."""
    import torch

    loader = make_loader(dataset, batch_size, sampler=sampler, shuffle=False, num_workers=workers, seed=seed)
    if loader.generator is None:  # iter(loader) would otherwise draw its worker base seed from torch's global RNG
        loader.generator = torch.Generator().manual_seed(seed)
    return loader
