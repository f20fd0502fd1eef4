"""ResumableSampler: order from (seed, epoch), resume skips without decoding, ranks partition an epoch."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from eva_helpers.data.sampler import ResumableSampler, epoch_order_array, sample_seed

sys.path.insert(0, str(Path(__file__).parent))
from _tiny import TinyDataset  # noqa: E402


def _indices(s):
    return [i for i, _ in s]


def test_order_is_a_function_of_seed_and_epoch():
    a, b = ResumableSampler(50, seed=3), ResumableSampler(50, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    assert sorted(_indices(a)) == list(range(50))  # a permutation
    b.set_epoch(3)
    assert _indices(a) != _indices(b)
    c = ResumableSampler(50, seed=4)
    c.set_epoch(2)
    assert _indices(a) != _indices(c)
    torch.manual_seed(0)
    before = _indices(a)
    torch.rand(100)  # the global RNG has no say
    assert _indices(a) == before
    assert _indices(ResumableSampler(5, seed=3, shuffle=False)) == [0, 1, 2, 3, 4]


def test_sample_seed_is_pure_and_varies():
    s = ResumableSampler(20, seed=11)
    s.set_epoch(1)
    pairs = list(s)
    assert all(seed == sample_seed(11, 1, i) for i, seed in pairs)
    assert len({seed for _, seed in pairs}) == 20
    assert sample_seed(11, 1, 5) != sample_seed(11, 2, 5) != sample_seed(12, 1, 5)
    assert all(0 <= seed < 2**32 for _, seed in pairs)


def test_set_start_skips_without_touching_the_dataset():
    ds = TinyDataset(n=12, size=8)
    s = ResumableSampler(len(ds), seed=1)
    s.set_epoch(4)
    full = list(s)
    s.set_start(5)
    assert len(s) == 7 and list(s) == full[5:]
    loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=s, num_workers=0,
                                         collate_fn=lambda items: items)
    got = [it["meta"]["index"] for batch in loader for it in batch]
    assert got == [i for i, _ in full[5:]]
    assert ds.calls == got  # the five consumed samples were never decoded
    s.set_epoch(5)
    assert s.start == 0  # a new epoch starts at its beginning


def test_ranks_partition_the_epoch():
    n, w = 23, 3
    shards = []
    for r in range(w):
        s = ResumableSampler(n, seed=9, rank=r, world_size=w)
        s.set_epoch(1)
        shards.append(_indices(s))
    assert all(len(x) == 8 for x in shards)  # padded to 24 like DistributedSampler
    flat = [i for x in shards for i in x]
    assert set(flat) == set(range(n)) and len(flat) - len(set(flat)) == 1  # one wrap-around duplicate
    dropped = [ResumableSampler(n, seed=9, rank=r, world_size=w, drop_last=True) for r in range(w)]
    for s in dropped:
        s.set_epoch(1)
    flat = [i for s in dropped for i in _indices(s)]
    assert len(flat) == len(set(flat)) == 21


def test_global_position_converts_between_world_sizes():
    n = 40
    order = epoch_order_array(n, seed=2, epoch=0).tolist()
    ranks = [ResumableSampler(n, seed=2, rank=r, world_size=2) for r in range(2)]
    consumed = {i for s in ranks for i in _indices(s)[:6]}  # 6 per rank under DDP
    state = ranks[0].state_dict()
    assert state["global_consumed"] == 0
    ranks[0].set_start(6)
    single = ResumableSampler(n, seed=2)
    single.load_state_dict(ranks[0].state_dict())
    assert single.start == 12 and set(order[:12]) == consumed
    assert set(_indices(single)) == set(range(n)) - consumed  # the rest of the epoch, exactly once


def _old_rank_order(n, seed, epoch, shuffle, rank, world, drop_last):
    """The list-based order of the pre-columnar sampler (da5ac18), kept as the oracle for resumed runs."""
    order = epoch_order_array(n, seed, epoch, shuffle).tolist()
    total = (n // world if drop_last else -(-n // world)) * world
    if drop_last:
        order = order[:total]
    else:
        pad = total - len(order)
        while pad > 0:
            order += order[:pad]
            pad = total - len(order)
    return order[rank:total:world]


@pytest.mark.parametrize("n,world,drop_last", [(10, 1, False), (10, 3, False), (10, 3, True), (2, 5, False)])
def test_array_order_equals_the_list_order_of_existing_runs(n, world, drop_last):
    for rank in range(world):
        s = ResumableSampler(n, seed=4, rank=rank, world_size=world, drop_last=drop_last)
        s.set_epoch(2)
        want = _old_rank_order(n, 4, 2, True, rank, world, drop_last)
        got = [i for i, _ in s]
        assert s.rank_order() == want and got == want and got and all(type(i) is int for i in got)
        s.set_start(1)
        assert [i for i, _ in s] == want[1:]
