"""A resumable, DDP-aware sampler: the epoch's order is a pure function of (seed, epoch), so a resumed run replays it.

`DistributedSampler` restarts an epoch from its first sample, and `RandomSampler` draws its order from the global RNG,
so neither can continue an interrupted epoch. Here the order is recomputed from `(seed, epoch)`, `set_start(k)` skips the
first k entries of this rank's share *without touching the dataset* (nothing consumed is decoded again), and every
entry carries a per-sample seed so the dataset's augmentation of a sample does not depend on which worker decodes it
or on what ran before it.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One round of splitmix64: a cheap, well-mixed hash of a 64-bit integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of one sample's augmentation in one epoch: a pure function of (seed, epoch, index), in [0, 2**32)."""
    return _splitmix64(_splitmix64(_splitmix64(seed & _MASK64) ^ epoch) ^ index) & 0xFFFFFFFF


def epoch_order_array(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The global order of one epoch (before sharding) as an (n,) int64 array: 8 bytes a sample, not a list of ints."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch) & 0x7FFFFFFFFFFFFFFF)
    return torch.randperm(n, generator=g).numpy()


class ResumableSampler(Sampler):
    """Yields `(index, sample_seed)`; shards like `DistributedSampler` (rank r takes positions r, r + W, ...).

    Because ranks interleave over one global order, "the first k of every rank's share" is exactly "the first k * W of
    the global order": a position stored as *global samples consumed* therefore converts between world sizes.
    """

    def __init__(self, n: int, *, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False) -> None:
        if n < 1:
            raise ValueError(f"ResumableSampler needs at least one sample (n={n})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.n, self.seed, self.shuffle = n, int(seed), shuffle
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0
        self.start = 0
        if drop_last:
            self.num_samples = n // world_size  # per rank
        else:
            self.num_samples = math.ceil(n / world_size)
        self.total_size = self.num_samples * world_size

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (its order) and rewind to its start."""
        self.epoch = int(epoch)
        self.start = 0

    def set_start(self, k: int) -> None:
        """Skip the first k entries of this rank's order of the current epoch (consumed before an interruption)."""
        self.start = max(0, min(int(k), self.num_samples))

    def set_start_global(self, consumed: int) -> None:
        """Skip `consumed` samples of the global order, however many ranks consumed them."""
        self.set_start(consumed // self.world_size)

    def rank_order_array(self) -> np.ndarray:
        """This rank's full share of the current epoch (padded by wrapping around, like DistributedSampler)."""
        order = epoch_order_array(self.n, self.seed, self.epoch, self.shuffle)
        if self.drop_last:
            order = order[: self.total_size]
        elif self.total_size > len(order):  # n < world_size needs more than one wrap
            order = np.resize(order, self.total_size)  # repeats the order cyclically
        return order[self.rank: self.total_size: self.world_size]

    def rank_order(self) -> list[int]:
        return self.rank_order_array().tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.rank_order_array()[self.start:]
        for c in range(0, len(order), 4096):  # Python ints made a chunk at a time, never the whole epoch
            for i in order[c:c + 4096].tolist():
                yield i, sample_seed(self.seed, self.epoch, i)

    def __len__(self) -> int:
        return self.num_samples - self.start

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n, "seed": self.seed, "shuffle": self.shuffle, "epoch": self.epoch, "start": self.start,
                "rank": self.rank, "world_size": self.world_size, "drop_last": self.drop_last,
                "global_consumed": self.start * self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore epoch and position; a state from another world size converts through `global_consumed`."""
        if state["n"] != self.n or state["seed"] != self.seed or state["shuffle"] != self.shuffle:
            raise ValueError("sampler state is for a different dataset size, seed or shuffle setting")
        self.epoch = int(state["epoch"])
        self.set_start_global(int(state["global_consumed"]))
